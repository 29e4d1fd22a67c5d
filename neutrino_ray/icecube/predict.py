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

import json
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
from ray.data import ActorPoolStrategy

from neutrino_ray import runtime, storage
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


def linefit_events(events: pa.Table, geometry: np.ndarray, variant: str, cap: int) -> pa.Table:
    """A LineFit variant on events with pulse list columns → event_id, azimuth, zenith, ok, n_pulses."""
    offsets, sensor, t, charge, aux = flat_pulses(events)
    az, zen, ok = lf.fit(variant, offsets, geometry, t, charge, aux, cap, sensor=sensor)
    return pa.table({"event_id": events.column("event_id"), "azimuth": az, "zenith": zen, "ok": ok,
                     "n_pulses": np.diff(offsets)})


def linefit_block(batch: pa.Table, geometry: np.ndarray, variant: str, cap: int, parts: str | None = None) -> pa.Table:
    """Ray Data UDF: read tasks → their events' LineFit directions (or, with ``parts``, written there as a
    part, and only the part's summary returned)."""
    out = pa.concat_tables(linefit_events(icdata.read_task_events(task, len(geometry)), geometry, variant, cap)
                           for task, _ in pipeline.iter_tasks(batch))
    return out if parts is None else write_part(out, parts)


PART_SUMMARY = pa.schema([("part", pa.string()), ("rows", pa.int64()), ("min_event_id", pa.int64()),
                          ("max_event_id", pa.int64()), ("ok", pa.int64())])


def write_part(result: pa.Table, parts: str) -> pa.Table:
    """Write one task's scores, sorted by event_id, as a Parquet part under ``parts`` (named by its first
    event id and row count, so a retried task rewrites the same part); return its one-row summary."""
    t = result.sort_by("event_id")
    ids = t.column("event_id").to_numpy()
    name = f"part-{int(ids[0]):020d}-{len(t):09d}.parquet"
    storage.write_bytes(storage.join(parts, name), storage.parquet_bytes(t))
    ok = int(np.count_nonzero(t.column("ok").to_numpy(zero_copy_only=False)))
    return pa.table([[name], [len(t)], [int(ids[0])], [int(ids[-1])], [ok]], schema=PART_SUMMARY)


class DirectionScorer:
    """Ray Data actor: loads each trained model of the ensemble once, then scores read tasks (read →
    featurise once, with the ensemble's common pulse cap → every member → the weighted mean direction)."""

    def __init__(self, model_uris: list[str], weights: list[float], kappa_weighted: bool, max_pulses: int,
                 geometry: np.ndarray, batch_size: int, threads: int, use_gpu: bool, calibrated: bool = True,
                 ensemble_calibration: dict[str, Any] | None = None, parts: str | None = None):
        import torch

        from neutrino_ray.icecube.train import load_calibration, load_task_and_model

        self.device = torch.device("cuda" if use_gpu else "cpu")
        if not use_gpu:
            torch.set_num_threads(threads)
        self.members = []
        for uri in model_uris:
            task, model, _ = load_task_and_model(uri)
            self.members.append((task, model.to(self.device), load_calibration(uri) if calibrated else None))
        self.weights, self.kappa_weighted, self.max_pulses = np.asarray(weights), kappa_weighted, max_pulses
        self.geometry, self.batch_size = geometry, batch_size
        self.ensemble_calibration, self.parts = ensemble_calibration, parts

    def __call__(self, batch: pa.Table) -> pa.Table:
        from neutrino_ray.icecube.train import predict_vectors

        events = pipeline.read_featurise(batch, self.geometry, self.max_pulses)
        outs = [predict_vectors(task, model, events, self.batch_size, self.device) for task, model, _ in self.members]
        kappas = [uncertainty.apply_kappa_calibration(cal, o[1]) for o, (*_, cal) in zip(outs, self.members)]
        mu, kappa = ensemble_directions(np.stack([o[0] for o in outs]), np.stack(kappas), self.weights,
                                        self.kappa_weighted)
        kappa = uncertainty.apply_kappa_calibration(self.ensemble_calibration, kappa)
        az, zen = lf.direction_to_angles(mu)
        out = pa.table({"event_id": events.column("event_id"), "azimuth": az, "zenith": zen,
                        "ok": np.ones(len(az), dtype=bool), "n_pulses": events.column("n_pulses"), "kappa": kappa})
        return out if self.parts is None else write_part(out, self.parts)


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
    ensemble_calibration: dict[str, Any] | None = None  # an ensemble artefact's κ calibration (of the combined κ)
    ensemble_uri: str | None = None  # the ensemble artefact these members came from

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
    from neutrino_ray.icecube.train import load_calibration

    if len(scoring.members) != 1 or scoring.is_linefit:
        return scoring
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
    from neutrino_ray.icecube.train import load_task_and_model

    members = scoring.members
    if not members:
        raise InputError("--model: no model given")
    if scoring.is_linefit:
        if scoring.weights is not None or scoring.kappa_weighted:
            raise InputError("--weights and --kappa-weighted are for ensembles of trained models, not LineFit")
        return Plan(scoring.max_pulses or lf.KAGGLE_CHARGE_CAP, (1.0,), {"model": members[0]})
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
    return Plan(caps.pop(), norm, details)


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
                  plan: Plan, parts: str | None = None) -> ray.data.Dataset:
    """The lazy Ray Data pipeline: LineFit fused into the read tasks, or an actor pool holding the model(s);
    with ``parts``, each task's scores are written there where they are computed (see :func:`write_part`)."""
    ds: ray.data.Dataset = ray.data.from_arrow(split_plan.tables())
    if scoring.is_linefit:
        return ds.map_batches(partial(linefit_block, geometry=geometry, variant=scoring.members[0],
                                      cap=plan.max_pulses, parts=parts),
                              batch_format="pyarrow", batch_size=1, zero_copy_batch=True)
    use_gpu = scoring.gpus_per_actor > 0
    actors = runtime.actor_pool_size(scoring.actors, scoring.cpus_per_actor, scoring.gpus_per_actor)
    return ds.map_batches(
        DirectionScorer, batch_format="pyarrow", batch_size=1, zero_copy_batch=True,
        fn_constructor_kwargs={"model_uris": list(scoring.members), "weights": list(plan.weights),
                               "kappa_weighted": scoring.kappa_weighted, "max_pulses": plan.max_pulses,
                               "geometry": geometry, "batch_size": scoring.batch_size,
                               "threads": max(1, int(scoring.cpus_per_actor)), "use_gpu": use_gpu,
                               "calibrated": scoring.calibrated,
                               "ensemble_calibration": scoring.ensemble_calibration, "parts": parts},
        compute=ActorPoolStrategy(size=actors), num_cpus=scoring.cpus_per_actor,
        num_gpus=scoring.gpus_per_actor if use_gpu else None)


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
        from neutrino_ray.icecube.train import load_calibration

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
    parts = [b for b in ds.iter_batches(batch_format="pyarrow", batch_size=None)]
    if not parts:
        raise icdata.DataError(f"{data}: split {split!r} produced no predictions")
    result = pa.concat_tables(parts).sort_by("event_id")
    check_complete(result, prep.split_plan.events, data, split)
    result = prep.with_kappa(result)
    degenerate = int(len(result) - np.count_nonzero(result.column("ok").to_numpy(zero_copy_only=False)))
    return PredictResult(result.select(["event_id", "azimuth", "zenith"]), predictions_table(result, prep.model_name),
                         len(result), degenerate, time.perf_counter() - start, prep.details, prep.files)


PREDICTION_SCHEMA = pa.schema([
    ("event_id", pa.int64()), ("azimuth", pa.float64()), ("zenith", pa.float64()), ("kappa", pa.float64()),
    ("sigma_50", pa.float64()), ("sigma_68", pa.float64()), ("sigma_90", pa.float64()),
    ("n_pulses", pa.int64()), ("model", pa.string()),
])


def predictions_table(result: pa.Table, model: str) -> pa.Table:
    """``predictions.parquet``: per event the direction, the vMF concentration κ and the angular radii (rad)
    containing 50, 68 and 90 % of it (null where there is no κ), the pulse count, the model."""
    n = len(result)
    cols: dict[str, Any] = {c: result.column(c) for c in ("event_id", "azimuth", "zenith")}
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


def check_parts(summary: pa.Table, events: int, data: str, split: str) -> tuple[list[str], bool]:
    """Exactly once, from the parts' summaries alone: no part twice, the planned number of events in all.
    Returns the parts ordered by first event id, and whether their id ranges are disjoint (then their
    concatenation in that order is sorted with no id twice; else ids must be checked after a sort)."""
    names = summary.column("part").to_pylist()
    rows = int(pc.sum(summary.column("rows")).as_py() or 0)
    if len(set(names)) != len(names) or rows != events:
        twice = sorted({n for n in names if names.count(n) > 1})
        raise RuntimeError(f"{data} split {split!r}: predictions do not match the meta ({rows} rows in "
                           f"{len(names)} parts for {events} events"
                           + (f"; part {twice[0]} written twice" if twice else "") + "); nothing was published")
    order = np.argsort(summary.column("min_event_id").to_numpy(), kind="stable")
    lo = summary.column("min_event_id").to_numpy()[order]
    hi = summary.column("max_event_id").to_numpy()[order]
    return [names[i] for i in order], bool(np.all(lo[1:] > hi[:-1]))


def assemble(output: storage.Output, parts: str, names: list[str], disjoint: bool, prep: Prepared) -> int:
    """Stream the sorted parts into ``submission.csv`` and ``predictions.parquet`` in the output's staging
    area, one part in memory at a time (all of them, sorted here, if their id ranges overlap); returns the
    number of degenerate events."""
    def tables() -> Iterator[pa.Table]:
        if disjoint:
            for name in names:
                yield storage.read_parquet(storage.join(parts, name))
        else:  # ids not ordered by batch (foreign data): one sort in memory
            log.warning("%s: event ids of different read tasks interleave; sorting all %d parts in memory",
                        prep.data, len(names))
            t = pa.concat_tables(storage.read_parquet(storage.join(parts, n)) for n in names).sort_by("event_id")
            check_complete(t, len(t), prep.data, prep.split)
            yield t

    degenerate = 0
    with storage.open_output(output.staged(SUBMISSION)) as csv_f, \
            storage.open_output(output.staged(PREDICTIONS)) as pq_f:
        writer = pq.ParquetWriter(pq_f, PREDICTION_SCHEMA)
        try:
            csv_f.write(storage.csv_header(pa.table({c: [] for c in ("event_id", "azimuth", "zenith")})))
            for t in tables():
                check_ranges(t)
                degenerate += len(t) - int(np.count_nonzero(t.column("ok").to_numpy(zero_copy_only=False)))
                storage.csv_rows(t.select(["event_id", "azimuth", "zenith"]), csv_f)
                writer.write_table(predictions_table(prep.with_kappa(t), prep.model_name))
        finally:
            writer.close()
    return degenerate


def predict(data: str, split: str, out: str, scoring: Scoring | None = None,
            command: list[str] | None = None) -> dict[str, Any]:
    """Score a split and publish ``OUT/submission.csv``, ``OUT/predictions.parquet`` and ``_SUCCESS.json``
    atomically. The workers write each read task's scores as a sorted Parquet part and return only its
    summary; the driver checks the parts exactly once and streams them, in id order, into the published
    files: its memory does not grow with the number of events."""
    started = time.time()
    start = time.perf_counter()
    prep = prepare(data, split, scoring)  # inputs fail before outputs are touched
    # The parts go to a staging folder of their own beside the output, so that the previous publication
    # stays whole while this run scores; a killed run's parts are removed by the next publication there.
    parts = storage.join(out, f"{storage.STAGING_PREFIX}{PARTS}-{uuid.uuid4().hex[:12]}")
    try:
        ds = build_dataset(prep.split_plan, prep.geometry, prep.scoring, prep.plan, parts)
        blocks = list(ds.iter_batches(batch_format="pyarrow", batch_size=None))
        summary = pa.concat_tables(blocks) if blocks else PART_SUMMARY.empty_table()
        names, disjoint = check_parts(summary, prep.split_plan.events, data, split)
        with storage.Output(out, command=command, inputs=[data], started=started) as output:
            degenerate = assemble(output, parts, names, disjoint, prep)
            for name, blob in prep.files.items():
                output.write(name, blob)
            events, seconds = prep.split_plan.events, time.perf_counter() - start
            manifest = output.commit(
                kind="icecube-predict", split=split, **prep.details,
                rows={SUBMISSION: events, PREDICTIONS: events}, events=events, degenerate_events=degenerate,
                parts=len(names), inference_seconds=round(seconds, 3),
                inference_events_per_second=round(events / seconds, 1) if seconds > 0 else None)
    finally:
        storage.remove(parts, recursive=True)
    log.info("predicted %d events in %.1f s (%.0f events/s); %d degenerate events got the default "
             "direction; wrote %s", events, seconds, events / seconds if seconds > 0 else float("nan"), degenerate,
             storage.join(out, SUBMISSION))
    return manifest
