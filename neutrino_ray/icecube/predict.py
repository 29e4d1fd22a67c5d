"""Batch inference on Ray Data: read → featurise → reconstruct → one atomic ``submission.csv``.

Read tasks (see :mod:`neutrino_ray.icecube.data`) become one Ray Data block each. A LineFit variant
(:mod:`~neutrino_ray.icecube.linefit`) runs fused with the read in one task per block, on the raw
pulses. A trained model runs on an actor pool: each actor loads the model once from storage (on a GPU
with ``gpus_per_actor``), then reads, featurises (with the model's inference pulse cap) and scores its
read tasks in batches of ``batch_size`` packed events. An ensemble is several models in each actor,
each loaded once: the events are featurised once, with the members' common pulse cap, and the
members' unit directions averaged with weights (times κ when asked).
Pulses never leave the worker that decoded them; only (event_id, azimuth, zenith) come back to the
driver, which checks that every event of the split's meta is present exactly once before publishing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from neutrino_ray import progress, runtime, storage
from neutrino_ray.errors import InputError
from neutrino_ray.icecube import data as icdata
from neutrino_ray.icecube import linefit as lf
from neutrino_ray.icecube import pipeline, uncertainty
from neutrino_ray.icecube.features import flat_pulses

log = logging.getLogger("neutrino_ray")

DEFAULT_EVENTS_PER_TASK = 20_000  # LineFit: big blocks, ~1 s of work each
GNN_EVENTS_PER_TASK = 2_000  # a trained model: smaller blocks spread evenly over the actors
DEFAULT_BATCH_SIZE = 256  # events per model forward pass
SUBMISSION = "submission.csv"
PREDICTIONS = "predictions.parquet"  # the same events with per-event uncertainties
PARTS = "parts"  # the workers' sorted parts, in a staging folder beside the output, removed after publishing
PARTS_FORMAT = "neutrino-ray icecube parts v1"
PREDICTIONS_DIR = "predictions"  # --format parquet: predictions/part-NNNNN.parquet, in event-id order
FORMATS = ("csv", "parquet")


def linefit_events(events: pa.Table, geometry: np.ndarray, variant: str, cap: int) -> pa.Table:
    """A LineFit variant on events with pulse list columns → event_id, azimuth, zenith, ok, n_pulses."""
    offsets, sensor, t, charge, aux = flat_pulses(events)
    az, zen, ok = lf.fit(variant, offsets, geometry, t, charge, aux, cap, sensor=sensor)
    return pa.table({"event_id": events.column("event_id"), "azimuth": az, "zenith": zen, "ok": ok,
                     "n_pulses": np.diff(offsets)})


def linefit_scores(batch: pa.Table, geometry: np.ndarray, variant: str, cap: int) -> pa.Table:
    """Read tasks → their events' LineFit directions."""
    return pa.concat_tables(linefit_events(icdata.read_task_events(task, len(geometry)), geometry, variant, cap)
                            for task, _ in pipeline.iter_tasks(batch))


def linefit_block(batch: pa.Table, geometry: np.ndarray, variant: str, cap: int,
                  parts: Parts | None = None) -> pa.Table:
    """Ray Data UDF: read tasks → their events' LineFit directions (or, with ``parts``, each task's written
    there as a part, or a finished part of an earlier attempt reused, and only the parts' summaries returned)."""
    score = partial(linefit_scores, geometry=geometry, variant=variant, cap=cap)
    return score(batch) if parts is None else parts.score(batch, score)


def featurise_block(batch: pa.Table, geometry: np.ndarray, max_pulses: int, parts: Parts | None = None,
                    seeds: bool = False) -> pa.Table:
    """The split pipeline's CPU stage (Ray Data tasks): each task row with its featurised events packed in one
    Arrow IPC blob (``events``), ready for a model actor; or, where an earlier attempt finished the task's part,
    that part's summary (``finished``, JSON) and no events: a finished part is recognised before any decoding."""
    out = []
    for i, row in enumerate(batch.to_pylist()):
        found = parts.finished(row) if parts is not None else None
        if found is not None:
            blob, done = None, json.dumps(found.to_pylist()[0])
        else:
            events = pipeline.read_featurise(batch.slice(i, 1), geometry, max_pulses, seeds)
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, events.schema) as w:
                w.write_table(events)
            blob, done = sink.getvalue().to_pybytes(), None
        out.append(batch.slice(i, 1).append_column("events", pa.array([blob], pa.binary()))
                   .append_column("finished", pa.array([done], pa.string())))
    return pa.concat_tables(out)


# How a trained model's read tasks reach it. "fused": each model actor reads, decodes and featurises its own
# tasks, then scores them (no extra copies: the faster on CPUs, measured in docs/icecube.md). "split": read +
# featurise run as Ray Data tasks on CPU workers and only packed, featurised batches reach the model actors
# (a GPU never waits on the CPU work). "auto": split when the actors hold GPUs, else fused.
PIPELINES = ("auto", "fused", "split")

PART_SUMMARY = pa.schema([("part", pa.string()), ("batch_id", pa.int64()), ("rows", pa.int64()),
                          ("min_event_id", pa.int64()), ("max_event_id", pa.int64()), ("ok", pa.int64()),
                          ("fingerprint", pa.string()), ("reused", pa.bool_())])
PART_META = b"neutrino_ray.part"  # a part's summary, in its Parquet footer


@dataclass(frozen=True)
class Parts:
    """Where the workers write each read task's scores (a staging folder beside the output, named by the
    fingerprint of the inputs, models and settings), so that a re-run of the same command finds the parts a
    killed attempt finished and scores only the rest."""

    uri: str
    fingerprint: str

    @staticmethod
    def name(row: dict[str, Any]) -> str:
        """A task's part: its batch, first meta row and row count (the same task in every attempt)."""
        return f"part-{int(row['batch_id']):06d}-{int(row['start']) + int(row['lo']):010d}-" \
               f"{int(row['hi']) - int(row['lo']):08d}.parquet"

    def score(self, batch: pa.Table, score: Any) -> pa.Table:
        """Each task row of ``batch``: its finished part's summary, or its scores (``score(one_row)``) written."""
        out = []
        for i, row in enumerate(batch.to_pylist()):
            found = self.finished(row)
            out.append(found if found is not None else self.write_task(score(batch.slice(i, 1)), row))
        return pa.concat_tables(out)

    def finished(self, row: dict[str, Any]) -> pa.Table | None:
        """The summary of the part an earlier attempt finished for this task row, or None (see :meth:`reuse`)."""
        return self.reuse(storage.join(self.uri, self.name(row)), int(row["hi"]) - int(row["lo"]))

    def write_task(self, result: pa.Table, row: dict[str, Any]) -> pa.Table:
        """A task row's scores written as its part; returns the part's summary."""
        return self.write(result, storage.join(self.uri, self.name(row)), int(row["batch_id"]))

    def reuse(self, uri: str, rows: int) -> pa.Table | None:
        """The summary of a part an earlier attempt finished (its footer names this fingerprint and the task's
        row count), or None: absent, unreadable or stale parts are scored again and overwritten."""
        if not storage.exists(uri):
            return None
        try:
            md = storage.read_parquet_metadata(uri)
            summary = json.loads((md.metadata or {}).get(PART_META, b"{}"))
        except (storage.StorageError, ValueError):
            return None
        if summary.get("fingerprint") != self.fingerprint or summary.get("rows") != rows or md.num_rows != rows:
            return None
        return pa.Table.from_pylist([{**summary, "reused": True}], schema=PART_SUMMARY)

    def write(self, result: pa.Table, uri: str, batch_id: int) -> pa.Table:
        """One task's scores, sorted by event_id, as a Parquet part carrying its summary; returns the summary."""
        t = result.sort_by("event_id")
        if "batch_id" not in t.column_names:
            t = t.append_column("batch_id", pa.array(np.full(len(t), batch_id, np.int64)))
        ids = t.column("event_id").to_numpy()
        summary = {"part": uri.rsplit("/", 1)[-1], "batch_id": batch_id, "rows": len(t),
                   "min_event_id": int(ids[0]) if len(ids) else -1, "max_event_id": int(ids[-1]) if len(ids) else -1,
                   "ok": int(np.count_nonzero(t.column("ok").to_numpy(zero_copy_only=False))),
                   "fingerprint": self.fingerprint}
        t = t.replace_schema_metadata({PART_META: json.dumps(summary).encode()})
        storage.write_bytes(uri, storage.parquet_bytes(t))
        return pa.Table.from_pylist([{**summary, "reused": False}], schema=PART_SUMMARY)


class DirectionScorer:
    """Ray Data actor: loads each trained model of the ensemble once, then scores read tasks (read →
    featurise once, with the ensemble's common pulse cap → every member → the weighted mean direction)."""

    def __init__(self, model_uris: list[str], weights: list[float], kappa_weighted: bool, max_pulses: int,
                 geometry: np.ndarray, batch_size: int, threads: int, use_gpu: bool, calibrated: bool = True,
                 ensemble_calibration: dict[str, Any] | None = None, parts: Parts | None = None,
                 featurised: bool = False):
        from neutrino_ray import inference  # torch: not for LineFit
        from neutrino_ray.icecube.artefact import load_calibration, load_task_and_model

        self.runtime = inference.Scorer(use_gpu, threads)  # device, threads, precision
        self.device = self.runtime.device
        self.members = []
        for uri in model_uris:
            task, model, _ = load_task_and_model(uri)
            self.members.append((task, model.to(self.device), load_calibration(uri) if calibrated else None))
        self.weights, self.kappa_weighted, self.max_pulses = np.asarray(weights), kappa_weighted, max_pulses
        self.geometry, self.batch_size = geometry, batch_size
        self.ensemble_calibration, self.parts, self.featurised = ensemble_calibration, parts, featurised
        self.seeds = any(task.seeded for task, _, _ in self.members)

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.featurised:  # the split pipeline: rows from featurise_block
            return self.score_featurised(batch)
        return self.scores(batch) if self.parts is None else self.parts.score(batch, self.scores)

    def score_featurised(self, batch: pa.Table) -> pa.Table:
        """Rows of :func:`featurise_block` → each task's scores (or, with parts, its part written, or the summary
        of the part an earlier attempt finished)."""
        out = []
        for row in batch.to_pylist():
            if row["finished"] is not None:
                out.append(pa.Table.from_pylist([json.loads(row["finished"])], schema=PART_SUMMARY))
                continue
            events = pa.ipc.open_stream(row["events"]).read_all()
            result = self.score_events(events)
            out.append(result if self.parts is None else self.parts.write_task(result, row))
        return pa.concat_tables(out)

    def scores(self, batch: pa.Table) -> pa.Table:
        """Read tasks → their events' ensemble directions and κ (the fused pipeline: read, featurise, score)."""
        return self.score_events(pipeline.read_featurise(batch, self.geometry, self.max_pulses, self.seeds))

    def score_events(self, events: pa.Table) -> pa.Table:
        """Featurised events → their ensemble directions and κ."""
        from neutrino_ray.icecube.artefact import predict_vectors

        outs = [predict_vectors(task, model, events, self.batch_size, self.device, self.runtime.precision)
                for task, model, _ in self.members]
        kappas = [uncertainty.apply_kappa_calibration(cal, o[1]) for o, (*_, cal) in zip(outs, self.members)]
        mu, kappa = ensemble_directions(np.stack([o[0] for o in outs]), np.stack(kappas), self.weights,
                                        self.kappa_weighted)
        kappa = uncertainty.apply_kappa_calibration(self.ensemble_calibration, kappa)
        az, zen = lf.direction_to_angles(mu)
        return pa.table({"event_id": events.column("event_id"), "azimuth": az, "zenith": zen,
                         "ok": np.ones(len(az), dtype=bool), "n_pulses": events.column("n_pulses"), "kappa": kappa})


def ensemble_directions(mu: np.ndarray, kappa: np.ndarray, weights: np.ndarray,
                        kappa_weighted: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The ensemble's unit directions (N, 3) and concentrations (N) from its members' unit directions
    ``mu`` (M, N, 3) and concentrations ``kappa`` (M, N), with weights summing to one.

    The direction is the normalised sum of w_m·μ_m, or of w_m·κ_m·μ_m when ``kappa_weighted`` (the
    members' vMF likelihoods multiplied: Π_m vMF(x; μ_m, κ_m)^w_m peaks along Σ_m w_m κ_m μ_m). Where the
    weighted sum vanishes (members pointing opposite ways), the most weighted member's direction is taken.
    The concentration is that of the weighted product, |Σ_m w_m κ_m μ_m|: members that agree sharpen it,
    members that disagree blur it."""
    w = np.broadcast_to(np.asarray(weights, np.float64)[:, None], kappa.shape)
    ens_kappa = np.linalg.norm((w[:, :, None] * kappa[:, :, None] * mu).sum(axis=0), axis=1)
    if kappa_weighted:
        w = w * kappa
    s = (w[:, :, None] * mu).sum(axis=0)
    norm = np.linalg.norm(s, axis=1)
    out = s / np.where(norm > 0, norm, 1.0)[:, None]
    flat = norm <= 1e-12 * np.maximum(w.sum(axis=0), 1e-300)
    if flat.any():
        best = np.argmax(w[:, flat], axis=0)
        out[flat] = mu[best, np.flatnonzero(flat)]
    return out, ens_kappa


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


@dataclass(frozen=True)
class Scoring:
    """How to score: LineFit, or a trained model or an ensemble of them on an actor pool."""

    # A LineFit variant (lf.VARIANTS), the URI of a trained model (OUT/model), or several URIs (an ensemble).
    model: str | tuple[str, ...] = "linefit"
    max_pulses: int | None = None  # LineFit's charge cap; a trained model's inference cap (transformers only)
    events_per_task: int | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    actors: int | None = None
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    weights: tuple[float, ...] | None = None  # ensemble weights, one per model (default: equal)
    kappa_weighted: bool = False  # ensemble: weight each member's direction by its κ as well
    calibrated: bool = True  # apply each model's κ calibration (calibration.json), where it has one
    uncertainty_events: int = 20_000  # LineFit: train events its empirical κ per pulse count is fitted on
    resource_wait_minutes: float = 15.0  # GPU actors: how long to wait for the autoscaler (runtime.wait_for_gpus)
    pipeline: str = "auto"  # trained models: "split" (CPU featurise tasks → model actors), "fused", "auto" (PIPELINES)
    featurise_tasks: int | None = None  # split pipeline: concurrent featurise tasks (None: the CPUs actors leave)
    ensemble_calibration: dict[str, Any] | None = None  # an ensemble artefact's κ calibration (of the combined κ)
    ensemble_uri: str | None = None  # the ensemble artefact these members came from

    @property
    def split_pipeline(self) -> bool:
        """Whether read + featurise run as their own CPU stage ahead of the model actors (see PIPELINES)."""
        return self.pipeline == "split" or (self.pipeline == "auto" and self.gpus_per_actor > 0)

    @property
    def members(self) -> tuple[str, ...]:
        return (self.model,) if isinstance(self.model, str) else tuple(self.model)

    @property
    def is_linefit(self) -> bool:
        return len(self.members) == 1 and self.members[0] in lf.VARIANTS


@dataclass(frozen=True)
class Plan:
    """What :func:`check_models` settled: the pulse cap and, for trained models, the normalised weights."""

    max_pulses: int
    weights: tuple[float, ...]
    details: dict[str, Any]
    seeds: bool = False  # featurise with the Kaggle LineFit seeds (a member is a seeded model)


ENSEMBLE = "ensemble.json"  # an ensemble artefact: its members, weights and κ rule ('icecube calibrate --out')
ENSEMBLE_FORMAT = "neutrino-ray icecube ensemble v1"


def ensemble_spec(members: tuple[str, ...], weights: tuple[float, ...], kappa_weighted: bool,
                  max_pulses: int | None) -> dict[str, Any]:
    """``ensemble.json``: what an ensemble artefact scores with."""
    return {"format": ENSEMBLE_FORMAT, "members": list(members), "weights": list(weights),
            "kappa_weighted": kappa_weighted, "max_pulses": max_pulses}


def resolve_ensemble(scoring: Scoring) -> Scoring:
    """A ``--model`` that is an ensemble artefact (a folder with ``ensemble.json``) → its members, weights,
    κ rule and pulse cap, and its calibration of the combined κ; any other scoring unchanged."""
    if len(scoring.members) != 1 or scoring.is_linefit:
        return scoring
    from neutrino_ray.icecube.artefact import load_calibration  # torch: not for LineFit

    uri = scoring.members[0]
    spec_uri = storage.join(uri, ENSEMBLE)
    spec = storage.read_format_json(spec_uri, ENSEMBLE_FORMAT, "an ensemble file")
    if spec is None:
        return scoring
    if scoring.weights is not None or scoring.kappa_weighted:
        raise InputError(f"--model {uri} is an ensemble artefact: its weights and κ rule are fixed in {spec_uri}; "
                         "drop --weights / --kappa-weighted")
    if scoring.max_pulses is not None and scoring.max_pulses != spec.get("max_pulses"):
        raise InputError(f"--model {uri} is an ensemble calibrated with --max-pulses {spec.get('max_pulses')}; "
                         f"scoring it with {scoring.max_pulses} would void its calibration")
    return replace(scoring, model=tuple(spec["members"]), weights=tuple(spec["weights"]),
                   kappa_weighted=bool(spec["kappa_weighted"]), max_pulses=spec.get("max_pulses"),
                   ensemble_calibration=load_calibration(uri) if scoring.calibrated else None, ensemble_uri=uri)


def check_models(scoring: Scoring) -> Plan:
    """The pulse cap, weights and a description of the model(s); bad models, mismatched ensemble members
    and bad weights fail here, before any work."""
    from neutrino_ray.icecube.architectures import ARCHITECTURES, is_transformer

    members = scoring.members
    if not members:
        raise InputError("--model: no model given")
    if scoring.is_linefit:
        if scoring.weights is not None or scoring.kappa_weighted:
            raise InputError("--weights and --kappa-weighted are for ensembles of trained models, not LineFit")
        return Plan(scoring.max_pulses or lf.KAGGLE_CHARGE_CAP, (1.0,), {"model": members[0]})
    from neutrino_ray.icecube.artefact import load_task_and_model  # torch: only for trained models (~2 s to import)

    for uri in members:
        if uri in lf.VARIANTS:
            raise InputError(f"--model {uri}: LineFit cannot be a member of an ensemble of trained models")
        if uri in ARCHITECTURES:
            raise InputError(f"--model {uri!r} is an architecture, not a trained model: train it with "
                             f"'neutrino-ray icecube train DATA --model {uri} --out OUT', then pass "
                             f"--model OUT/model")
    if len(set(members)) != len(members):
        raise InputError(f"--model: the same model is given twice ({', '.join(members)}); use --weights instead")
    weights = scoring.weights if scoring.weights is not None else (1.0,) * len(members)
    if len(weights) != len(members):
        raise InputError(f"--weights: {len(weights)} weights for {len(members)} models")
    if not all(np.isfinite(w) and w > 0 for w in weights):
        raise InputError(f"--weights {' '.join(map(str, weights))}: every weight must be finite and > 0")
    loaded = []
    for uri in members:
        task, _, config = load_task_and_model(uri)  # refuses a feature set other than this build's
        if scoring.max_pulses is not None and scoring.max_pulses != task.max_pulses \
                and not is_transformer(config["model"]):
            raise InputError(f"{uri}: a {config['model']} model was trained with a pulse cap of {task.max_pulses} "
                             f"and scores with it; --max-pulses {scoring.max_pulses} would feed it other inputs "
                             "(leave it out; only transformers take another cap at inference)")
        loaded.append((uri, task, config, scoring.max_pulses or task.predict_max_pulses))
    features = {json.dumps(c.get("features"), sort_keys=True) for _, _, c, _ in loaded}
    caps = {cap for *_, cap in loaded}
    if len(features) > 1:
        raise InputError("ensemble members were trained on different feature definitions: "
                         + "; ".join(f"{u}: {c.get('features')}" for u, _, c, _ in loaded))
    if len(caps) > 1:
        raise InputError("ensemble members would score with different pulse caps ("
                         + ", ".join(f"{u}: {cap}" for u, _, _, cap in loaded)
                         + "); they share one featurisation: pass --max-pulses N with the DynEdge members' "
                           "training cap (transformers take any cap)")
    total = float(sum(weights))
    norm = tuple(float(w) / total for w in weights)
    described = [{"model": u, "architecture": c["model"], "n_parameters": c["n_parameters"],
                  "train_max_pulses": t.max_pulses, "weight": w} for (u, t, c, _), w in zip(loaded, norm)]
    if len(members) == 1:
        details = {k: v for k, v in described[0].items() if k != "weight"}
    else:
        details = {"model": "ensemble", "members": described, "kappa_weighted": scoring.kappa_weighted}
    return Plan(caps.pop(), norm, details, any(t.seeded for _, t, _, _ in loaded))


def fit_linefit_uncertainty(data: str, variant: str, cap: int, geometry: np.ndarray,
                            events: int) -> tuple[dict[str, Any] | None, str]:
    """LineFit's empirical uncertainty (κ per pulse count, :func:`uncertainty.fit_pulse_count_kappa`),
    fitted in the driver on the last ``events`` events of the train split's last batch file and their
    true directions; (None, the reason) where it cannot be."""
    from neutrino_ray.icecube.metrics import errors_against_truth

    if events <= 0:
        return None, "none: --uncertainty-events 0; kappa and sigma_* are null"
    batches = icdata.list_batches(data, "train")
    if not batches or not storage.exists(icdata.meta_uri(data, "train")):
        return None, (f"none: {data} has no train split (train_meta.parquet and train/batch_*.parquet) to fit "
                      "LineFit's empirical uncertainty on; kappa and sigma_* are null")
    batch_id = max(batches)
    meta = icdata.load_batch_meta(data, "train", batch_id, with_truth=True)
    meta = meta.slice(max(0, len(meta) - events))
    fitted = pa.concat_tables(linefit_events(icdata.read_task_events(t, len(geometry)), geometry, variant, cap)
                              for t in icdata.plan_batch(batches[batch_id], batch_id, meta, len(meta)))
    err = errors_against_truth(meta, fitted)
    model = uncertainty.fit_pulse_count_kappa(fitted.column("n_pulses").to_numpy(), err)
    model["fitted_on"] = {"data": data, "split": "train", "batch_id": batch_id, "events": len(fitted),
                          "variant": variant, "charge_cap": cap}
    return model, (f"empirical: kappa is LineFit's vMF concentration for the event's pulse count, fitted on "
                   f"the last {len(fitted)} events of train batch {batch_id} ({uncertainty.LINEFIT_UNCERTAINTY}); "
                   "sigma_* are its exact containment radii")


def build_dataset(split_plan: pipeline.SplitPlan, geometry: np.ndarray, scoring: Scoring,
                  plan: Plan, parts: Parts | None = None) -> ray.data.Dataset:
    """The lazy Ray Data pipeline: LineFit fused into the read tasks, or an actor pool holding the model(s);
    with ``parts``, each task's scores are written there where they are computed (see :class:`Parts`)."""
    if scoring.is_linefit:  # short tasks: guided blocks of specs (see SplitPlan.guided_blocks)
        ds: ray.data.Dataset = ray.data.from_arrow(split_plan.guided_blocks(runtime.cpu_count()))
        return ds.map_batches(partial(linefit_block, geometry=geometry, variant=scoring.members[0],
                                      cap=plan.max_pulses, parts=parts),
                              batch_format="pyarrow", batch_size=1, zero_copy_batch=True)
    from neutrino_ray import inference  # torch: not for LineFit

    ds = ray.data.from_arrow(split_plan.tables())  # one spec per block: model tasks are long, balance matters
    use_gpu = scoring.gpus_per_actor > 0
    actors = runtime.actor_pool_size(scoring.actors, scoring.cpus_per_actor, scoring.gpus_per_actor,
                                     scoring.resource_wait_minutes)
    cpus_per_actor = scoring.cpus_per_actor
    if not use_gpu and scoring.actors is None and not scoring.split_pipeline:
        actors, cpus_per_actor = inference.cpu_pool_for_tasks(actors, cpus_per_actor, len(split_plan.specs))
    kwargs = {"model_uris": list(scoring.members), "weights": list(plan.weights),
              "kappa_weighted": scoring.kappa_weighted, "max_pulses": plan.max_pulses, "geometry": geometry,
              "batch_size": scoring.batch_size, "threads": max(1, int(cpus_per_actor)), "use_gpu": use_gpu,
              "calibrated": scoring.calibrated, "ensemble_calibration": scoring.ensemble_calibration, "parts": parts,
              "featurised": scoring.split_pipeline}
    if scoring.split_pipeline:
        # Read + featurise as their own CPU stage, so a model actor (a GPU) never waits on Parquet decoding:
        # as many concurrent tasks as the CPUs the actors leave (or as asked), one task row each. CPU actors
        # sized by default leave one CPU for them.
        total = runtime.cpu_count()
        if not use_gpu and scoring.actors is None:
            actors = max(1, int((total - 1) // scoring.cpus_per_actor))
            kwargs["threads"] = max(1, int(scoring.cpus_per_actor))
        left = total - actors * scoring.cpus_per_actor
        if left <= 0:
            raise InputError(f"--pipeline split: {actors} actors x {scoring.cpus_per_actor:g} CPUs take all {total} "
                             "CPUs of the cluster; leave some for the featurise tasks (fewer --actors)")
        tasks = scoring.featurise_tasks or max(1, int(left))
        ds = ds.map_batches(partial(featurise_block, geometry=geometry, max_pulses=plan.max_pulses, parts=parts,
                                    seeds=plan.seeds),
                            batch_format="pyarrow", batch_size=1, zero_copy_batch=True,
                            num_cpus=min(1.0, left), compute=ray.data.TaskPoolStrategy(size=tasks))
    return inference.actor_pool(ds, DirectionScorer, kwargs, actors, cpus_per_actor, scoring.gpus_per_actor)


@dataclass
class Prepared:
    """Everything settled before any scoring: models, plan, geometry, LineFit's fitted uncertainty."""

    data: str
    split: str
    scoring: Scoring
    plan: Plan
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


def prepare(data: str, split: str, scoring: Scoring | None = None, last_events: int | None = None) -> Prepared:
    """Check the models, plan the split (or its last ``last_events`` events in file order), read the
    geometry and fit LineFit's uncertainty: bad models and inputs fail here, before any scoring."""
    scoring = resolve_ensemble(scoring or Scoring())
    plan = check_models(scoring)
    details = dict(plan.details)
    per_task = scoring.events_per_task or (DEFAULT_EVENTS_PER_TASK if scoring.is_linefit else GNN_EVENTS_PER_TASK)
    split_plan = pipeline.plan_split(data, split, per_task, last_events)
    geometry = icdata.load_geometry(data)
    linefit_model, linefit_reason = (fit_linefit_uncertainty(data, scoring.members[0], plan.max_pulses, geometry,
                                                             scoring.uncertainty_events)
                                     if scoring.is_linefit else (None, ""))
    details.update({"charge_cap" if scoring.is_linefit else "max_pulses": plan.max_pulses, "events_per_task": per_task})
    if scoring.is_linefit:
        details["uncertainty"] = linefit_reason
    else:
        from neutrino_ray.icecube.artefact import load_calibration

        details.update(batch_size=scoring.batch_size, cpus_per_actor=scoring.cpus_per_actor,
                       gpus_per_actor=scoring.gpus_per_actor)
        calibrated = [scoring.calibrated and load_calibration(u) is not None for u in scoring.members]
        how = ("recalibrated on held-out events ('icecube calibrate')" if all(calibrated)
               else "not recalibrated" if not any(calibrated) else "recalibrated for some members only")
        if scoring.ensemble_uri is not None:
            details["ensemble_artefact"] = scoring.ensemble_uri
            how += (", and the ensemble's combined kappa recalibrated as a whole" if scoring.ensemble_calibration
                    else ", the ensemble's combined kappa not recalibrated")
            details["ensemble_kappa_calibrated"] = scoring.ensemble_calibration is not None
        details["uncertainty"] = f"vMF: sigma_* are the exact containment radii of the predicted kappa, {how}"
        details["kappa_calibrated"] = calibrated if len(calibrated) > 1 else calibrated[0]
    return Prepared(data, split, scoring, plan, split_plan, geometry, linefit_model, details)


def run_inference(data: str, split: str, scoring: Scoring | None = None,
                  last_events: int | None = None) -> PredictResult:
    """Score every event of the split (or its last ``last_events`` in file order, as training's validation
    slice) and collect the sorted, checked submission and predictions tables in this process (for the
    held-out slices of calibration; ``predict`` writes parts instead)."""
    start = time.perf_counter()
    prep = prepare(data, split, scoring, last_events)
    ds = build_dataset(prep.split_plan, prep.geometry, prep.scoring, prep.plan)
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
    event_id (hence by batch_id on Kaggle-layout data); one row group per read task."""
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
        "tasks": [[t.batch_id, t.start, t.lo, t.hi, t.rg_start, t.rg_stop] for t in prep.split_plan.specs],
        "geometry": hashlib.sha256(np.ascontiguousarray(prep.geometry).tobytes()).hexdigest(),
        "models": list(s.members), "weights": list(prep.plan.weights), "max_pulses": prep.plan.max_pulses,
        "kappa_weighted": s.kappa_weighted, "calibrated": s.calibrated, "batch_size": s.batch_size,
        "model_files": [] if s.is_linefit else [storage.versions(u) for u in s.members],
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def expected_rows(split_plan: pipeline.SplitPlan) -> dict[int, int]:
    """batch_id → the events its tasks cover."""
    out: dict[int, int] = {}
    for t in split_plan.specs:
        out[t.batch_id] = out.get(t.batch_id, 0) + t.hi - t.lo
    return out


def check_parts(summary: pa.Table, expected: dict[int, int], fp: str, data: str,
                split: str) -> tuple[list[str], bool]:
    """Exactly once, from the parts' summaries alone: every part of this fingerprint, none twice, and per
    batch the events its meta rows planned. Returns the parts ordered by first event id, and whether their
    id ranges are disjoint (then their concatenation in that order is sorted with no id twice; else ids
    must be checked after a sort)."""
    where = f"{data} split {split!r}"
    names = summary.column("part").to_pylist()
    stale = [n for n, f in zip(names, summary.column("fingerprint").to_pylist()) if f != fp]
    if stale:
        raise RuntimeError(f"{where}: part {stale[0]} was scored from other inputs, models or settings (fingerprint "
                           f"differs from this run's {fp[:12]}); nothing was published")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise RuntimeError(f"{where}: part {twice[0]} written twice; nothing was published")
    got: dict[int, int] = {}
    for b, n in zip(summary.column("batch_id").to_pylist(), summary.column("rows").to_pylist()):
        got[b] = got.get(b, 0) + n
    for b in sorted(set(expected) | set(got)):
        if got.get(b, 0) != expected.get(b, 0):
            why = "a part is missing" if got.get(b, 0) < expected.get(b, 0) else "more than planned"
            raise RuntimeError(f"{where}: batch {b} has {got.get(b, 0)} events in its parts for {expected.get(b, 0)} "
                               f"in the meta ({why}); nothing was published")
    order = np.argsort(summary.column("min_event_id").to_numpy(), kind="stable")
    lo = summary.column("min_event_id").to_numpy()[order]
    hi = summary.column("max_event_id").to_numpy()[order]
    return [names[i] for i in order], bool(np.all(lo[1:] > hi[:-1]))


def _read_part(uri: str, fp: str) -> pa.Table:
    """A part, checked once more against this run's fingerprint as it is read for publication."""
    t = storage.read_parquet(uri)
    summary = json.loads((t.schema.metadata or {}).get(PART_META, b"{}"))
    if summary.get("fingerprint") != fp or summary.get("rows") != len(t):
        raise RuntimeError(f"{uri}: part changed since it was checked (fingerprint or row count); "
                           "nothing was published")
    return t


def assemble(output: storage.Output, parts: Parts, names: list[str], disjoint: bool, prep: Prepared,
             fmt: str = "csv") -> int:
    """Stream the sorted parts into the output's staging area, one part in memory at a time (all of them,
    sorted here, if their id ranges overlap): ``submission.csv`` and ``predictions.parquet`` (``fmt`` csv), or
    one ``predictions/part-NNNNN.parquet`` per part, in id order (``fmt`` parquet). Returns the number of
    degenerate events."""
    def tables() -> Iterator[pa.Table]:
        if disjoint:
            for name in names:
                yield _read_part(storage.join(parts.uri, name), parts.fingerprint)
        else:  # ids not ordered by batch (foreign data): one sort in memory
            log.warning("%s: event ids of different read tasks interleave; sorting all %d parts in memory",
                        prep.data, len(names))
            t = pa.concat_tables(_read_part(storage.join(parts.uri, n), parts.fingerprint)
                                 for n in names).sort_by("event_id")
            check_complete(t, len(t), prep.data, prep.split)
            yield t

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


def predict(data: str, split: str, out: str, scoring: Scoring | None = None,
            command: list[str] | None = None, fmt: str | None = None) -> dict[str, Any]:
    """Score a split and publish, atomically with ``_SUCCESS.json``, ``OUT/submission.csv`` and
    ``OUT/predictions.parquet`` (``fmt`` csv) or ``OUT/predictions/part-*.parquet`` (``fmt`` parquet; default
    :func:`default_format`). The workers write each read task's scores as a sorted Parquet part and return
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
    # Beside the output, so the previous publication stays whole while this run scores; parts of a killed
    # run stay for its re-run, and go with the next publication there (Output removes staging leftovers).
    parts = Parts(storage.join(out, f"{storage.STAGING_PREFIX}{PARTS}-{fp[:16]}"), fp)
    held.add_staging(parts.uri)  # kept for a resume if this run dies; a run that takes the lease inherits it
    ds = build_dataset(prep.split_plan, prep.geometry, prep.scoring, prep.plan, parts)
    blocks = []
    with progress.Progress("predict", prep.split_plan.events, tick=True) as line:
        for block in ds.iter_batches(batch_format="pyarrow", batch_size=None):  # part summaries, as they finish
            assert isinstance(block, pa.Table)
            blocks.append(block)
            line.update(int(pc.sum(block.column("rows")).as_py() or 0))
    stages["score"] = time.perf_counter() - start - stages["prepare"]  # the Ray Data job: read, score, write parts
    summary = pa.concat_tables(blocks) if blocks else PART_SUMMARY.empty_table()
    names, disjoint = check_parts(summary, expected_rows(prep.split_plan), fp, data, split)
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
