"""Batch inference on Ray Data: read → featurise → reconstruct → one atomic ``submission.csv``.

Read tasks (see :mod:`neutrino_ray.icecube.data`) become one Ray Data block each. A LineFit variant
(:mod:`~neutrino_ray.icecube.linefit`) runs fused with the read in one task per block, on the raw
pulses. A trained model runs on an actor pool: each actor loads the model once from storage (on a GPU
with ``gpus_per_actor``), then reads, featurises (with the model's own pulse cap) and scores its read
tasks in batches of ``batch_size`` packed events.
Pulses never leave the worker that decoded them; only (event_id, azimuth, zenith) come back to the
driver, which checks that every event of the split's meta is present exactly once before publishing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import pyarrow as pa
import ray
from ray.data import ActorPoolStrategy

from neutrino_ray import runtime, storage
from neutrino_ray.errors import InputError
from neutrino_ray.icecube import data as icdata
from neutrino_ray.icecube import linefit as lf
from neutrino_ray.icecube import pipeline
from neutrino_ray.icecube.features import flat_pulses

log = logging.getLogger("neutrino_ray")

DEFAULT_EVENTS_PER_TASK = 20_000  # LineFit: big blocks, ~1 s of work each
GNN_EVENTS_PER_TASK = 2_000  # a trained model: smaller blocks spread evenly over the actors
DEFAULT_BATCH_SIZE = 256  # events per model forward pass
SUBMISSION = "submission.csv"


def linefit_events(events: pa.Table, geometry: np.ndarray, variant: str, cap: int) -> pa.Table:
    """A LineFit variant on events with pulse list columns → event_id, azimuth, zenith, ok."""
    offsets, sensor, t, charge, aux = flat_pulses(events)
    az, zen, ok = lf.fit(variant, offsets, geometry, t, charge, aux, cap, sensor=sensor)
    return pa.table({"event_id": events.column("event_id"), "azimuth": az, "zenith": zen, "ok": ok})


def linefit_block(batch: pa.Table, geometry: np.ndarray, variant: str, cap: int) -> pa.Table:
    """Ray Data UDF: read tasks → their events' LineFit directions."""
    return pa.concat_tables(linefit_events(icdata.read_task_events(task, len(geometry)), geometry, variant, cap)
                            for task, _ in pipeline.iter_tasks(batch))


class DirectionScorer:
    """Ray Data actor: loads a trained model once, then scores read tasks (read → featurise → model)."""

    def __init__(self, model_uri: str, geometry: np.ndarray, batch_size: int, threads: int, use_gpu: bool):
        import torch

        from neutrino_ray.icecube.train import load_task_and_model

        self.device = torch.device("cuda" if use_gpu else "cpu")
        if not use_gpu:
            torch.set_num_threads(threads)
        self.task, self.model, _ = load_task_and_model(model_uri)
        self.model.to(self.device)
        self.geometry, self.batch_size = geometry, batch_size

    def __call__(self, batch: pa.Table) -> pa.Table:
        from neutrino_ray.icecube.train import predict_directions

        events = pipeline.read_featurise(batch, self.geometry, self.task.max_pulses)
        az, zen, _ = predict_directions(self.task, self.model, events, self.batch_size, self.device)
        return pa.table({"event_id": events.column("event_id"), "azimuth": az, "zenith": zen,
                         "ok": np.ones(len(az), dtype=bool)})


@dataclass
class PredictResult:
    submission: pa.Table
    events: int
    degenerate: int
    seconds: float
    details: dict[str, Any]

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else float("nan")


@dataclass(frozen=True)
class Scoring:
    """How to score: LineFit, or a trained model on an actor pool."""

    model: str = "linefit"  # a LineFit variant (lf.VARIANTS) or the URI of a trained model (OUT/model)
    max_pulses: int | None = None  # LineFit's charge cap; a trained model uses its own pulse cap
    events_per_task: int | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    actors: int | None = None
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0

    @property
    def is_linefit(self) -> bool:
        return self.model in lf.VARIANTS


def check_model(scoring: Scoring) -> tuple[int, dict[str, Any]]:
    """The pulse cap to use and a description of the model; a bad model fails here, before any work."""
    from neutrino_ray.icecube.models import SIZES
    from neutrino_ray.icecube.train import load_task_and_model

    if scoring.is_linefit:
        return scoring.max_pulses or lf.KAGGLE_CHARGE_CAP, {"model": scoring.model}
    if scoring.model in SIZES:
        raise InputError(f"--model {scoring.model!r} is an architecture, not a trained model: train it with "
                         f"'neutrino-ray icecube train DATA --model {scoring.model} --out OUT', then pass "
                         f"--model OUT/model")
    task, _, config = load_task_and_model(scoring.model)
    if scoring.max_pulses is not None and scoring.max_pulses != task.max_pulses:
        raise InputError(f"{scoring.model}: model was trained with a pulse cap of {task.max_pulses}; "
                         f"--max-pulses {scoring.max_pulses} would feed it other inputs (leave it out)")
    return task.max_pulses, {"model": scoring.model, "architecture": config["model"],
                             "n_parameters": config["n_parameters"]}


def build_dataset(tasks: list[icdata.ReadTask], geometry: np.ndarray, scoring: Scoring,
                  max_pulses: int) -> ray.data.Dataset:
    """The lazy Ray Data pipeline: LineFit fused into the read tasks, or an actor pool holding the model."""
    if scoring.is_linefit:
        ds: ray.data.Dataset = ray.data.from_arrow(pipeline.task_tables(tasks))
        return ds.map_batches(partial(linefit_block, geometry=geometry, variant=scoring.model, cap=max_pulses),
                              batch_format="pyarrow", batch_size=1, zero_copy_batch=True)
    use_gpu = scoring.gpus_per_actor > 0
    actors = runtime.actor_pool_size(scoring.actors, scoring.cpus_per_actor, scoring.gpus_per_actor)
    scored: ray.data.Dataset = ray.data.from_arrow(pipeline.task_tables(tasks))
    return scored.map_batches(
        DirectionScorer, batch_format="pyarrow", batch_size=1, zero_copy_batch=True,
        fn_constructor_kwargs={"model_uri": scoring.model, "geometry": geometry, "batch_size": scoring.batch_size,
                               "threads": max(1, int(scoring.cpus_per_actor)), "use_gpu": use_gpu},
        compute=ActorPoolStrategy(size=actors), num_cpus=scoring.cpus_per_actor,
        num_gpus=scoring.gpus_per_actor if use_gpu else None)


def run_inference(data: str, split: str, scoring: Scoring | None = None) -> PredictResult:
    """Score every event of the split; returns the sorted, checked submission table."""
    scoring = scoring or Scoring()
    start = time.perf_counter()
    max_pulses, details = check_model(scoring)  # bad models and inputs fail before Ray starts
    meta = icdata.load_meta(data, split)
    geometry = icdata.load_geometry(data)
    per_task = scoring.events_per_task or (DEFAULT_EVENTS_PER_TASK if scoring.is_linefit else GNN_EVENTS_PER_TASK)
    tasks = list(icdata.iter_split_tasks(data, split, per_task, meta=meta))
    if not tasks:
        raise icdata.DataError(f"{icdata.meta_uri(data, split)}: no events in split {split!r}")
    runtime.init_ray()
    ds = build_dataset(tasks, geometry, scoring, max_pulses)
    parts = [b for b in ds.iter_batches(batch_format="pyarrow", batch_size=None)]
    result = pa.concat_tables(parts) if parts else None
    if result is None:
        raise icdata.DataError(f"{data}: split {split!r} produced no predictions")
    result = result.sort_by("event_id")
    check_complete(result, meta, data, split)
    sub = result.select(["event_id", "azimuth", "zenith"])
    degenerate = int(len(result) - np.count_nonzero(result.column("ok").to_numpy(zero_copy_only=False)))
    details.update({"charge_cap" if scoring.is_linefit else "max_pulses": max_pulses, "events_per_task": per_task})
    if not scoring.is_linefit:
        details.update(batch_size=scoring.batch_size, cpus_per_actor=scoring.cpus_per_actor,
                       gpus_per_actor=scoring.gpus_per_actor)
    return PredictResult(sub, len(sub), degenerate, time.perf_counter() - start, details)


def check_complete(result: pa.Table, meta: pa.Table, data: str, split: str) -> None:
    """Every meta event exactly once, all values finite and in range; else nothing is published."""
    got = result.column("event_id").to_numpy()
    want = np.sort(meta.column("event_id").to_numpy())
    if len(got) != len(want) or not np.array_equal(got, want):
        dup = got[1:][got[1:] == got[:-1]]
        missing = np.setdiff1d(want, got)
        raise RuntimeError(f"{data} split {split!r}: predictions do not match the meta "
                           f"({len(got)} rows for {len(want)} events; {len(dup)} duplicated, "
                           f"{len(missing)} missing); nothing was published")
    az = result.column("azimuth").to_numpy()
    zen = result.column("zenith").to_numpy()
    bad = np.flatnonzero(~np.isfinite(az) | ~np.isfinite(zen) | (az < 0) | (az >= 2 * np.pi)
                         | (zen < 0) | (zen > np.pi))
    if len(bad):
        raise RuntimeError(f"event_id {int(got[bad[0]])}: prediction out of range "
                           f"(azimuth {az[bad[0]]}, zenith {zen[bad[0]]}); nothing was published")


def predict(data: str, split: str, out: str, scoring: Scoring | None = None,
            command: list[str] | None = None) -> dict[str, Any]:
    """Score a split and publish ``OUT/submission.csv`` plus ``_SUCCESS.json`` atomically."""
    started = time.time()
    res = run_inference(data, split, scoring)  # inputs fail before outputs are touched
    with storage.Output(out, command=command, inputs=[data], started=started) as output:
        output.write(SUBMISSION, storage.csv_bytes(res.submission))
        manifest = output.commit(
            kind="icecube-predict", split=split, **res.details,
            rows={SUBMISSION: res.events}, events=res.events, degenerate_events=res.degenerate,
            inference_seconds=round(res.seconds, 3), inference_events_per_second=round(res.events_per_second, 1),
        )
    log.info("predicted %d events in %.1f s (%.0f events/s); %d degenerate events got the default "
             "direction; wrote %s", res.events, res.seconds, res.events_per_second, res.degenerate,
             storage.join(out, SUBMISSION))
    return manifest
