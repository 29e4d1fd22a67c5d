"""``icecube predict``: score a split and publish ``submission.csv`` (and ``predictions.parquet``) atomically.

:func:`prepare` settles everything before any scoring (models and ensembles checked, the split planned into
slices, the geometry read, LineFit's empirical uncertainty fitted); the scoring itself, LineFit fused into
the read or trained models on an actor pool, is :mod:`~neutrino_ray.icecube.scoring`. :func:`predict` has the
workers write each slice's scores as a sorted part and return only its summary (:mod:`neutrino_ray.parts`):
pulses and scores never come back to the driver, which checks from the summaries that every event of the
split's meta is scored exactly once, then streams the parts in event-id order into the published files, so
its memory does not grow with the number of events, and a killed run re-run with the same command reuses the
parts it finished. :func:`run_inference` collects the scores in the driver instead (held-out slices of
``icecube calibrate``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from neutrino_ray import progress, storage
from neutrino_ray.errors import InputError
from neutrino_ray.icecube import data as icdata
from neutrino_ray.icecube import pipeline, uncertainty
from neutrino_ray.icecube.options import FORMATS, ScoringOptions
from neutrino_ray.icecube.scoring import (
    CheckedModels,
    build_dataset,
    calibration_details,
    check_models,
    fit_linefit_uncertainty,
    resolve_ensemble,
)
from neutrino_ray.parts import PART_SUMMARY, Parts, check_parts, iter_parts

SUBMISSION = "submission.csv"
PREDICTIONS = "predictions.parquet"  # the same events with per-event uncertainties
PARTS_FORMAT = "neutrino-ray icecube parts v1"
PREDICTIONS_DIR = "predictions"  # --format parquet: predictions/part-NNNNN.parquet, in event-id order

log = logging.getLogger("neutrino_ray")


@dataclass
class PredictResult:
    submission: pa.Table
    predictions: pa.Table  # the same events with κ, containment radii, pulse counts and the model
    events: int
    degenerate: int
    seconds: float
    details: dict[str, Any]
    files: dict[str, bytes]  # further files published beside them (LineFit's fitted uncertainty)

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else float("nan")


@dataclass
class Prepared:
    """Everything settled before any scoring: models, plan, geometry, LineFit's fitted uncertainty."""

    data: str
    split: str
    scoring: ScoringOptions
    models: CheckedModels
    split_plan: pipeline.SplitPlan
    geometry: np.ndarray
    linefit_model: dict[str, Any] | None
    details: dict[str, Any]

    @property
    def model_name(self) -> str:
        members = self.scoring.members
        return members[0] if len(members) == 1 else self.scoring.ensemble_uri or "ensemble:" + ",".join(members)

    @property
    def files(self) -> dict[str, bytes]:
        """Files published beside the predictions (LineFit's fitted uncertainty)."""
        if self.linefit_model is None:
            return {}
        return {uncertainty.LINEFIT_UNCERTAINTY: json.dumps(self.linefit_model, indent=2).encode()}

    def with_batch(self, result: pa.Table) -> pa.Table:
        """Scores with each event's batch_id: a part carries its own; scores collected in one process get it
        from the batches' event-id ranges (null for an id in no batch's range, or in several: foreign data)."""
        if "batch_id" in result.column_names:
            return result
        batches = sorted(self.split_plan.summary.values(), key=lambda b: b.min_event_id)
        lo = np.array([b.min_event_id for b in batches], np.int64)
        hi = np.array([b.max_event_id for b in batches], np.int64)
        ids = result.column("event_id").to_numpy()
        k = np.clip(np.searchsorted(lo, ids, side="right") - 1, 0, max(len(lo) - 1, 0))
        inside = (ids >= lo[k]) & (ids <= hi[k]) if len(lo) else np.zeros(len(ids), bool)
        if len(lo) > 1 and np.any(lo[1:] <= hi[:-1]):  # overlapping ranges: not attributable by id
            inside[:] = False
        bid = np.array([b.batch_id for b in batches], np.int64)[k] if len(lo) else np.zeros(len(ids), np.int64)
        return result.append_column("batch_id", pa.array(bid, mask=~inside))

    def with_kappa(self, result: pa.Table) -> pa.Table:
        """Scores with LineFit's empirical κ added, where it was fitted."""
        if self.linefit_model is None:
            return result
        return result.append_column("kappa", pa.array(
            uncertainty.pulse_count_kappa(self.linefit_model, result.column("n_pulses").to_numpy())))


def prepare(data: str, split: str, scoring: ScoringOptions | None = None, last_events: int | None = None) -> Prepared:
    """Check the models, plan the split (or its last ``last_events`` events in file order), read the
    geometry and fit LineFit's uncertainty: bad models and inputs fail here, before any scoring."""
    scoring = resolve_ensemble(scoring or ScoringOptions())
    models = check_models(scoring)
    details = dict(models.details)
    split_plan = pipeline.plan_split(data, split, scoring.slice_events, last_events)
    geometry = icdata.load_geometry(data)
    linefit_model = None
    details.update({"charge_cap" if scoring.is_linefit else "max_pulses": models.max_pulses,
                    "events_per_task": scoring.slice_events})
    if scoring.is_linefit:
        linefit_model, details["uncertainty"] = fit_linefit_uncertainty(data, scoring.members[0], models.max_pulses,
                                                                        geometry, scoring.uncertainty_events)
    else:
        details.update(calibration_details(scoring))
    return Prepared(data, split, scoring, models, split_plan, geometry, linefit_model, details)


def run_inference(data: str, split: str, scoring: ScoringOptions | None = None,
                  last_events: int | None = None) -> PredictResult:
    """Score every event of the split (or its last ``last_events`` in file order, as training's validation
    slice) and collect the sorted, checked submission and predictions tables in this process (for the
    held-out slices of calibration; ``predict`` writes parts instead)."""
    start = time.perf_counter()
    prep = prepare(data, split, scoring, last_events)
    ds = build_dataset(prep.split_plan, prep.geometry, prep.scoring, prep.models)
    parts = list(progress.track(ds.iter_batches(batch_format="pyarrow", batch_size=None), "score",
                                prep.split_plan.events, count=len))
    if not parts:
        raise icdata.DataError(f"{data}: split {split!r} produced no predictions")
    result = pa.concat_tables(parts).sort_by("event_id")
    check_complete(result, prep.split_plan.events, data, split)
    result = prep.with_batch(prep.with_kappa(result))
    degenerate = int(len(result) - np.count_nonzero(result.column("ok").to_numpy(zero_copy_only=False)))
    return PredictResult(result.select(["event_id", "azimuth", "zenith"]), predictions_table(result, prep.model_name),
                         len(result), degenerate, time.perf_counter() - start, prep.details, prep.files)


PREDICTION_SCHEMA = pa.schema([
    ("event_id", pa.int64()), ("batch_id", pa.int64()), ("azimuth", pa.float64()), ("zenith", pa.float64()),
    ("kappa", pa.float64()),
    ("sigma_50", pa.float64()), ("sigma_68", pa.float64()), ("sigma_90", pa.float64()),
    ("n_pulses", pa.int64()), ("model", pa.string()),
])


def predictions_table(result: pa.Table, model: str) -> pa.Table:
    """``predictions.parquet``: per event its batch, the direction, the vMF concentration κ and the angular radii
    (rad) containing 50, 68 and 90 % of it (null where there is no κ), the pulse count, the model. Sorted by
    event_id (hence by batch_id on Kaggle-layout data); one row group per slice."""
    n = len(result)
    cols: dict[str, Any] = {c: result.column(c) for c in ("event_id", "batch_id", "azimuth", "zenith")}
    if "kappa" in result.column_names:
        kappa = result.column("kappa").to_numpy().astype(np.float64)
        cols["kappa"] = kappa
        cols.update(uncertainty.sigmas(kappa))
    else:
        for c in ("kappa", "sigma_50", "sigma_68", "sigma_90"):
            cols[c] = pa.nulls(n, pa.float64())
    cols["n_pulses"] = result.column("n_pulses").cast(pa.int64())
    cols["model"] = pa.array([model] * n, pa.string()) if n else pa.array([], pa.string())
    return pa.table(cols).cast(PREDICTION_SCHEMA)


def check_complete(result: pa.Table, events: int, data: str, split: str) -> None:
    """Every planned meta event exactly once (the tasks partition the meta rows, so a count and no repeated id
    suffice), all values finite and in range; else nothing is published."""
    got = result.column("event_id").to_numpy()  # sorted
    dup = got[1:][got[1:] == got[:-1]]
    if len(got) != events or len(dup):
        raise RuntimeError(f"{data} split {split!r}: predictions do not match the meta "
                           f"({len(got)} rows for {events} events; {len(dup)} duplicated"
                           + (f", e.g. event_id {int(dup[0])}" if len(dup) else "") + "); nothing was published")
    check_ranges(result)


def check_ranges(result: pa.Table) -> None:
    """All directions finite and in range; else nothing is published."""
    got = result.column("event_id").to_numpy()
    az = result.column("azimuth").to_numpy()
    zen = result.column("zenith").to_numpy()
    bad = np.flatnonzero(~np.isfinite(az) | ~np.isfinite(zen) | (az < 0) | (az >= 2 * np.pi)
                         | (zen < 0) | (zen > np.pi))
    if len(bad):
        raise RuntimeError(f"event_id {int(got[bad[0]])}: prediction out of range "
                           f"(azimuth {az[bad[0]]}, zenith {zen[bad[0]]}); nothing was published")


def fingerprint(prep: Prepared) -> str:
    """What a part's scores depend on, hashed: the code version, the split's files (sizes and versions, from
    listings), its per-batch meta summary and task plan, the geometry, the models' files and every scoring
    setting. A part whose footer names another fingerprint is never reused."""
    s, data, split = prep.scoring, prep.data, prep.split
    doc = {
        "format": PARTS_FORMAT, "code": storage.code_version(), "data": data, "split": split,
        "files": [storage.versions(icdata.meta_uri(data, split)), storage.versions(storage.join(data, split))],
        "batches": [[b.batch_id, b.n_events, b.min_event_id, b.max_event_id] for b in prep.split_plan.summary.values()],
        "tasks": [[t.batch_id, t.start, t.lo, t.hi, t.rg_start, t.rg_stop] for t in prep.split_plan.slices],
        "geometry": hashlib.sha256(np.ascontiguousarray(prep.geometry).tobytes()).hexdigest(),
        "models": list(s.members), "weights": list(prep.models.weights), "max_pulses": prep.models.max_pulses,
        "kappa_weighted": s.kappa_weighted, "calibrated": s.calibrated, "batch_size": s.batch_size,
        "model_files": [] if s.is_linefit else [storage.versions(u) for u in s.members],
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def expected_rows(split_plan: pipeline.SplitPlan) -> dict[int, int]:
    """batch_id → the events its slices cover."""
    out: dict[int, int] = {}
    for t in split_plan.slices:
        out[t.batch_id] = out.get(t.batch_id, 0) + t.hi - t.lo
    return out


def assemble(output: storage.Output, parts: Parts, names: list[str], disjoint: bool, prep: Prepared,
             fmt: str = "csv") -> int:
    """Stream the sorted parts into the output's staging area, one part in memory at a time (all of them,
    sorted here, if their id ranges overlap): ``submission.csv`` and ``predictions.parquet`` (``fmt`` csv), or
    one ``predictions/part-NNNNN.parquet`` per part, in id order (``fmt`` parquet). Returns the number of
    degenerate events."""
    def tables() -> Iterator[pa.Table]:
        return iter_parts(parts, names, disjoint, prep.data,
                          lambda t: check_complete(t, len(t), prep.data, prep.split))

    def published(t: pa.Table) -> pa.Table:
        return predictions_table(prep.with_batch(prep.with_kappa(t)), prep.model_name)

    def degenerate(t: pa.Table) -> int:
        check_ranges(t)
        return len(t) - int(np.count_nonzero(t.column("ok").to_numpy(zero_copy_only=False)))

    n_bad = 0
    if fmt == "parquet":
        for k, t in enumerate(tables()):
            n_bad += degenerate(t)
            output.write(f"{PREDICTIONS_DIR}/part-{k:05d}.parquet",
                         storage.parquet_bytes(published(t)))
        return n_bad
    with storage.open_output(output.staged(SUBMISSION)) as csv_f, \
            storage.open_output(output.staged(PREDICTIONS)) as pq_f:
        writer = pq.ParquetWriter(pq_f, PREDICTION_SCHEMA)
        try:
            csv_f.write(storage.csv_header(pa.table({c: [] for c in ("event_id", "azimuth", "zenith")})))
            for t in tables():
                n_bad += degenerate(t)
                storage.csv_rows(t.select(["event_id", "azimuth", "zenith"]), csv_f)
                writer.write_table(published(t))
        finally:
            writer.close()
    return n_bad


def default_format(split: str) -> str:
    """The Kaggle CSV for the test split; Parquet parts for the (131,953,924-event) train split."""
    return "csv" if split == "test" else "parquet"


def predict(data: str, split: str, out: str, scoring: ScoringOptions | None = None,
            command: list[str] | None = None, fmt: str | None = None) -> dict[str, Any]:
    """Score a split and publish, atomically with ``_SUCCESS.json``, ``OUT/submission.csv`` and
    ``OUT/predictions.parquet`` (``fmt`` csv) or ``OUT/predictions/part-*.parquet`` (``fmt`` parquet; default
    :func:`default_format`). The workers write each slice's scores as a sorted Parquet part and return
    only its summary; the driver checks the parts exactly once and streams them, in id order, into the
    published files: its memory does not grow with the number of events. The parts live in a staging
    folder beside the output named by the run's fingerprint, so a killed run re-run with the same command
    reuses the parts it finished and scores only the rest; they are removed once published."""
    started = time.time()
    start = time.perf_counter()
    fmt = fmt or default_format(split)
    if fmt not in FORMATS:
        raise InputError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    prep = prepare(data, split, scoring)  # inputs fail before outputs are touched
    with storage.lease(out) as held:  # one writer per output from the first part written to the publication
        return _predict(prep, out, held, command, fmt, started, start)


def _predict(prep: Prepared, out: str, held: storage.Lease, command: list[str] | None, fmt: str, started: float,
             start: float) -> dict[str, Any]:
    """:func:`predict` once it holds the output's lease: score (resuming), assemble, publish."""
    split, data = prep.split, prep.data
    fp = fingerprint(prep)
    stages = {"prepare": time.perf_counter() - start}  # Ray start (fresh process), plan, models, κ fit, fingerprint
    # Parts of a killed run stay for its re-run, and go with the next publication there (Output removes
    # staging leftovers).
    parts = Parts.beside(out, fp)
    held.add_staging(parts.uri)  # kept for a resume if this run dies; a run that takes the lease inherits it
    ds = build_dataset(prep.split_plan, prep.geometry, prep.scoring, prep.models, parts)
    blocks = []
    with progress.Progress("predict", prep.split_plan.events, tick=True) as line:
        for block in ds.iter_batches(batch_format="pyarrow", batch_size=None):  # part summaries, as they finish
            assert isinstance(block, pa.Table)
            blocks.append(block)
            line.update(int(pc.sum(block.column("rows")).as_py() or 0))
    stages["score"] = time.perf_counter() - start - stages["prepare"]  # the Ray Data job: read, score, write parts
    summary = pa.concat_tables(blocks) if blocks else PART_SUMMARY.empty_table()
    names, disjoint = check_parts(summary, expected_rows(prep.split_plan), fp, f"{data} split {split!r}")
    reused = summary.filter(summary.column("reused"))
    n_reused = int(pc.sum(reused.column("rows")).as_py() or 0)
    if len(reused):
        log.info("resumed: %d of %d parts (%d events) reused from an earlier attempt", len(reused), len(names),
                 n_reused)
    with storage.Output(out, command=command, inputs=[data], started=started) as output:
        degenerate = assemble(output, parts, names, disjoint, prep, fmt)
        for name, blob in prep.files.items():
            output.write(name, blob)
        events, seconds = prep.split_plan.events, time.perf_counter() - start
        stages["assemble"] = seconds - stages["prepare"] - stages["score"]  # parts → the published files
        rows = ({SUBMISSION: events, PREDICTIONS: events} if fmt == "csv" else {PREDICTIONS_DIR: events})
        manifest = output.commit(
            kind="icecube-predict", split=split, format=fmt, **prep.details, rows=rows, events=events,
            degenerate_events=degenerate, parts=len(names), parts_reused=len(reused), events_reused=n_reused,
            fingerprint=fp, inference_seconds=round(seconds, 3),
            stage_seconds={k: round(v, 3) for k, v in stages.items()},
            inference_events_per_second=round(events / seconds, 1) if seconds > 0 else None)
    storage.remove(parts.uri, recursive=True)
    held.drop_staging(parts.uri)
    log.info("predicted %d events in %.1f s (%.0f events/s; prepare %.1f s, score %.1f s, assemble %.1f s); %d "
             "degenerate events got the default direction; wrote %s", events, seconds,
             events / seconds if seconds > 0 else float("nan"), stages["prepare"], stages["score"], stages["assemble"],
             degenerate, storage.join(out, SUBMISSION if fmt == "csv" else PREDICTIONS_DIR))
    return manifest
