"""Scoring IceCube events: LineFit fused into the read, or trained models (one, or an ensemble) on an actor pool.

A LineFit variant (:mod:`~neutrino_ray.icecube.linefit`) runs fused with the read in one Ray Data task per
block of slices, on the raw pulses. A trained model runs on an actor pool (:class:`DirectionScorer`): each
actor loads the model once from storage (on a GPU with ``gpus_per_actor``), then reads, featurises (with
the model's inference pulse cap) and scores its slices in batches of ``batch_size`` packed events; with the
split pipeline, read + featurise run as CPU tasks ahead of the actors. An ensemble is several models in each
actor, each loaded once: the events are featurised once, with the members' common pulse cap, and the
members' unit directions averaged with weights (times κ when asked). Models, ensemble artefacts and
weights are checked (:func:`check_models`) before any work. With :class:`~neutrino_ray.parts.Parts`, each
slice's scores are written as a part where they are computed and only its summary returns.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import numpy as np
import pyarrow as pa
import ray

from neutrino_ray import runtime, storage
from neutrino_ray.errors import InputError
from neutrino_ray.icecube import data as icdata
from neutrino_ray.icecube import linefit as lf
from neutrino_ray.icecube import pipeline, uncertainty
from neutrino_ray.icecube.features import flat_pulses
from neutrino_ray.icecube.options import ScoringOptions
from neutrino_ray.parts import PART_SUMMARY, Parts, Unit


def part_unit(s: icdata.BatchSlice) -> Unit:
    """A slice's part: named by its batch, first meta row and row count (the same slice in every attempt)."""
    return Unit(f"part-{s.batch_id:06d}-{s.start + s.lo:010d}-{s.hi - s.lo:08d}.parquet", s.batch_id, s.hi - s.lo)


def with_batch_id(result: pa.Table, s: icdata.BatchSlice) -> pa.Table:
    """A slice's scores with its batch_id, as its part carries them."""
    return result.append_column("batch_id", pa.array(np.full(len(result), s.batch_id, np.int64)))


def linefit_events(events: pa.Table, geometry: np.ndarray, variant: str, cap: int) -> pa.Table:
    """A LineFit variant on events with pulse list columns → event_id, azimuth, zenith, ok, n_pulses."""
    offsets, sensor, t, charge, aux = flat_pulses(events)
    az, zen, ok = lf.fit(variant, offsets, geometry, t, charge, aux, cap, sensor=sensor)
    return pa.table({"event_id": events.column("event_id"), "azimuth": az, "zenith": zen, "ok": ok,
                     "n_pulses": np.diff(offsets)})


def linefit_block(rows: pa.Table, geometry: np.ndarray, variant: str, cap: int,
                  parts: Parts | None = None) -> pa.Table:
    """Ray Data UDF: slice rows → their events' LineFit directions (or, with ``parts``, each slice's written
    there as a part, or a finished part of an earlier attempt reused, and only the parts' summaries returned)."""
    slices = list(pipeline.iter_slices(rows))

    def score(i: int) -> pa.Table:
        return linefit_events(icdata.read_slice(slices[i], len(geometry)), geometry, variant, cap)

    if parts is None:
        return pa.concat_tables(score(i) for i in range(len(slices)))
    return parts.score([part_unit(s) for s in slices], lambda i: with_batch_id(score(i), slices[i]))


def featurise_block(rows: pa.Table, geometry: np.ndarray, max_pulses: int, parts: Parts | None = None,
                    seeds: bool = False) -> pa.Table:
    """The split pipeline's CPU stage (Ray Data tasks): each slice row with its featurised events packed in one
    Arrow IPC blob (``events``), ready for a model actor; or, where an earlier attempt finished the slice's part,
    that part's summary (``finished``, JSON) and no events: a finished part is recognised before any decoding."""
    out = []
    for i, s in enumerate(pipeline.iter_slices(rows)):
        found = parts.finished(part_unit(s)) if parts is not None else None
        if found is not None:
            blob, done = None, json.dumps(found.to_pylist()[0])
        else:
            events = pipeline.read_featurise(rows.slice(i, 1), geometry, max_pulses, seeds)
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, events.schema) as w:
                w.write_table(events)
            blob, done = sink.getvalue().to_pybytes(), None
        out.append(rows.slice(i, 1).append_column("events", pa.array([blob], pa.binary()))
                   .append_column("finished", pa.array([done], pa.string())))
    return pa.concat_tables(out)



class DirectionScorer:
    """Ray Data actor: loads each trained model of the ensemble once, then scores slices (read →
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

    def __call__(self, rows: pa.Table) -> pa.Table:
        if self.featurised:  # the split pipeline: rows from featurise_block
            return self.score_featurised(rows)
        if self.parts is None:
            return self.scores(rows)
        slices = list(pipeline.iter_slices(rows))
        return self.parts.score([part_unit(s) for s in slices],
                                lambda i: with_batch_id(self.scores(rows.slice(i, 1)), slices[i]))

    def score_featurised(self, rows: pa.Table) -> pa.Table:
        """Rows of :func:`featurise_block` → each slice's scores (or, with parts, its part written, or the summary
        of the part an earlier attempt finished)."""
        out = []
        packed = rows.select(["events", "finished"]).to_pylist()
        for s, row in zip(pipeline.iter_slices(rows), packed, strict=True):
            if row["finished"] is not None:
                out.append(pa.Table.from_pylist([json.loads(row["finished"])], schema=PART_SUMMARY))
                continue
            result = self.score_events(pa.ipc.open_stream(row["events"]).read_all())
            out.append(result if self.parts is None else self.parts.write(with_batch_id(result, s), part_unit(s)))
        return pa.concat_tables(out)

    def scores(self, rows: pa.Table) -> pa.Table:
        """Slice rows → their events' ensemble directions and κ (the fused pipeline: read, featurise, score)."""
        return self.score_events(pipeline.read_featurise(rows, self.geometry, self.max_pulses, self.seeds))

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


@dataclass(frozen=True)
class CheckedModels:
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


def resolve_ensemble(scoring: ScoringOptions) -> ScoringOptions:
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


def check_models(scoring: ScoringOptions) -> CheckedModels:
    """The pulse cap, weights and a description of the model(s); bad models, mismatched ensemble members
    and bad weights fail here, before any work."""
    from neutrino_ray.icecube.architectures import ARCHITECTURES, is_transformer

    members = scoring.members
    if not members:
        raise InputError("--model: no model given")
    if scoring.is_linefit:
        if scoring.weights is not None or scoring.kappa_weighted:
            raise InputError("--weights and --kappa-weighted are for ensembles of trained models, not LineFit")
        return CheckedModels(scoring.max_pulses or lf.KAGGLE_CHARGE_CAP, (1.0,), {"model": members[0]})
    from neutrino_ray.icecube.artefact import load_task_and_model  # torch: trained models only

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
    return CheckedModels(caps.pop(), norm, details, any(t.seeded for _, t, _, _ in loaded))


def calibration_details(scoring: ScoringOptions) -> dict[str, Any]:
    """The manifest's description of trained models' scoring: actors, and how their κ is calibrated."""
    from neutrino_ray.icecube.artefact import load_calibration  # torch: not for LineFit

    details: dict[str, Any] = {"batch_size": scoring.batch_size, "cpus_per_actor": scoring.cpus_per_actor,
                               "gpus_per_actor": scoring.gpus_per_actor}
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
    return details


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
    run = uuid.uuid4().hex
    meta = icdata.batch_meta(run, data, "train", batch_id, truth=True)
    ids = meta.column("event_id").to_numpy()
    if not len(ids):
        return None, (f"none: train batch {batch_id} has no meta rows to fit LineFit's empirical uncertainty on; "
                      "kappa and sigma_* are null")
    batch = icdata.BatchSummary(batch_id, len(ids), int(ids.min()), int(ids.max()))
    slices = icdata.plan_batch(data, "train", run, batch, events, max(0, len(meta) - events), truth=True)
    fitted = pa.concat_tables(linefit_events(icdata.read_slice(s, len(geometry)), geometry, variant, cap)
                              for s in slices)
    meta = pa.concat_tables(icdata.slice_meta(s) for s in slices)
    icdata.forget_run(run)  # the driver keeps no batch meta once the fit is done
    err = errors_against_truth(meta, fitted)
    model = uncertainty.fit_pulse_count_kappa(fitted.column("n_pulses").to_numpy(), err)
    model["fitted_on"] = {"data": data, "split": "train", "batch_id": batch_id, "events": len(fitted),
                          "variant": variant, "charge_cap": cap}
    return model, (f"empirical: kappa is LineFit's vMF concentration for the event's pulse count, fitted on "
                   f"the last {len(fitted)} events of train batch {batch_id} ({uncertainty.LINEFIT_UNCERTAINTY}); "
                   "sigma_* are its exact containment radii")


def build_dataset(split_plan: pipeline.SplitPlan, geometry: np.ndarray, scoring: ScoringOptions,
                  models: CheckedModels, parts: Parts | None = None) -> ray.data.Dataset:
    """The lazy Ray Data pipeline: LineFit fused into the read, or an actor pool holding the model(s);
    with ``parts``, each slice's scores are written there where they are computed (see :class:`Parts`)."""
    if scoring.is_linefit:  # short tasks: guided blocks of slices (see SplitPlan.guided_blocks)
        ds: ray.data.Dataset = ray.data.from_arrow(split_plan.guided_blocks(runtime.cpu_count()))
        return ds.map_batches(partial(linefit_block, geometry=geometry, variant=scoring.members[0],
                                      cap=models.max_pulses, parts=parts),
                              batch_format="pyarrow", batch_size=1, zero_copy_batch=True)
    from neutrino_ray import inference  # torch: not for LineFit

    ds = ray.data.from_arrow(split_plan.tables())  # one slice per block: model tasks are long, balance matters
    use_gpu = scoring.gpus_per_actor > 0
    actors = runtime.actor_pool_size(scoring.actors, scoring.cpus_per_actor, scoring.gpus_per_actor,
                                     scoring.resource_wait_minutes)
    cpus_per_actor = scoring.cpus_per_actor
    if not use_gpu and scoring.actors is None and not scoring.split_pipeline:
        actors, cpus_per_actor = inference.cpu_pool_for_tasks(actors, cpus_per_actor, len(split_plan.slices))
    kwargs = {"model_uris": list(scoring.members), "weights": list(models.weights),
              "kappa_weighted": scoring.kappa_weighted, "max_pulses": models.max_pulses, "geometry": geometry,
              "batch_size": scoring.batch_size, "threads": max(1, int(cpus_per_actor)), "use_gpu": use_gpu,
              "calibrated": scoring.calibrated, "ensemble_calibration": scoring.ensemble_calibration, "parts": parts,
              "featurised": scoring.split_pipeline}
    if scoring.split_pipeline:
        # Read + featurise as their own CPU stage, so a model actor (a GPU) never waits on Parquet decoding:
        # as many concurrent tasks as the CPUs the actors leave (or as asked), one slice row each. CPU actors
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
        ds = ds.map_batches(partial(featurise_block, geometry=geometry, max_pulses=models.max_pulses, parts=parts,
                                    seeds=models.seeds),
                            batch_format="pyarrow", batch_size=1, zero_copy_batch=True,
                            num_cpus=min(1.0, left), compute=ray.data.TaskPoolStrategy(size=tasks))
    return inference.actor_pool(ds, DirectionScorer, kwargs, actors, cpus_per_actor, scoring.gpus_per_actor)
