"""Batch scoring of NOvA pixel maps with a trained model: HDF5 slices → actor pool → one atomic Parquet file.

Each actor loads the model once (on a GPU with ``gpus_per_actor``), then reads its slices itself
(so pixels never cross the object store) and scores them in mini-batches. The driver gathers the
per-event rows, checks every planned event is present exactly once and publishes
``OUT/predictions.parquet``: the keys (``file``, ``index``, run, subrun, cycle, evt, subevt), the
event's visible energy, and the scores: ``prob_<class>`` and ``predicted`` (class index) for
classification tasks, ``predicted`` (GeV or y) for regressions. The task's name is stored in the
Parquet schema metadata so ``nova evaluate`` knows what it is reading.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import ray
import torch
from torch import nn

from neutrino_ray import devices, inference, progress, runtime, storage
from neutrino_ray.nova import data
from neutrino_ray.nova.artefact import load_task_and_model
from neutrino_ray.nova.simulate import GEV_PER_COUNT
from neutrino_ray.nova.train import NovaTask

log = logging.getLogger("neutrino_ray")

PREDICTIONS = "predictions.parquet"
KEY_FIELDS = ("run", "subrun", "cycle", "evt", "subevt")
TASK_METADATA = b"neutrino_ray.task"
DEFAULT_BATCH_SIZE = 256
DEFAULT_EVENTS_PER_TASK = 1_000


def score_events(task: NovaTask, model: nn.Module, events: pa.Table, batch_size: int,
                 device: torch.device, precision: str = "fp32") -> pa.Table:
    """Event rows (with pixel maps) → keys, visible energy and the task's scores."""
    maps = data.images(events)
    n = len(maps)
    out = inference.batched(model, n, batch_size, lambda lo, hi: task.forward(model, devices.to_device(
        torch.from_numpy(np.array(maps[lo:hi])), device)), device, precision)
    values = task.values(out).double().numpy() if out is not None else \
        np.zeros((0, task.n_out) if task.classes else 0)
    cols: dict[str, Any] = {"file": events.column("file"), "index": events.column("index")}
    cols.update({k: events.column(k) for k in KEY_FIELDS})
    cols["visible_energy"] = maps.reshape(n, -1).sum(axis=1, dtype=np.int64) * GEV_PER_COUNT
    if task.classes:
        for i, c in enumerate(task.classes):
            cols[f"prob_{c}"] = values[:, i].astype(np.float32)
        cols["predicted"] = values.argmax(axis=1).astype(np.int64) if n else np.zeros(0, np.int64)
    else:
        cols["predicted"] = values.astype(np.float64)
    return pa.table(cols)


class NovaScorer(inference.Scorer):
    """Ray Data actor: loads a trained model once, then reads and scores slices."""

    def __init__(self, model_uri: str, batch_size: int, threads: int, use_gpu: bool, precision: str = "auto"):
        super().__init__(use_gpu, threads, precision)
        self.task, self.model, _ = load_task_and_model(model_uri)
        self.model.to(self.device)
        self.batch_size = batch_size

    def __call__(self, batch: pa.Table) -> pa.Table:
        events = pa.concat_tables([data.read_slice(s) for s in data.slices_from_table(batch)])
        return score_events(self.task, self.model, events, self.batch_size, self.device, self.precision)


@dataclass(frozen=True)
class Scoring:
    """Which model, and how to spread the scoring over actors."""

    model: str
    events_per_task: int = DEFAULT_EVENTS_PER_TASK
    batch_size: int = DEFAULT_BATCH_SIZE
    actors: int | None = None
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    resource_wait_minutes: float = 15.0  # GPU actors: how long to wait for the autoscaler (runtime.wait_for_gpus)


def run_inference(data_uri: str, scoring: Scoring, skip_bad: bool = False) -> tuple[pa.Table, dict[str, Any]]:
    """Score every event under DATA; returns (predictions in file order, details for the manifest)."""
    start = time.perf_counter()
    task, _, config = load_task_and_model(scoring.model)  # a bad model fails before any work
    scan = data.scan(data_uri, skip_bad=skip_bad)
    slices = data.plan_slices(scan.files, None, scoring.events_per_task)
    runtime.init_ray()
    use_gpu = scoring.gpus_per_actor > 0
    actors = runtime.actor_pool_size(scoring.actors, scoring.cpus_per_actor, scoring.gpus_per_actor,
                                     scoring.resource_wait_minutes)
    ds: ray.data.Dataset = ray.data.from_arrow(data.slice_tables(slices))
    ds = inference.actor_pool(ds, NovaScorer, {"model_uri": scoring.model, "batch_size": scoring.batch_size,
                                               "threads": max(1, int(scoring.cpus_per_actor)), "use_gpu": use_gpu},
                              actors, scoring.cpus_per_actor, scoring.gpus_per_actor)
    parts = list(progress.track(ds.iter_batches(batch_format="pyarrow", batch_size=None), "predict nova",
                                scan.n_events, count=len))
    result = pa.concat_tables(parts)
    file_no = data.file_numbers(result.column("file"), scan)
    result = result.take(np.lexsort((result.column("index").to_numpy(), file_no)))
    check_complete(result, scan, data_uri)
    seconds = time.perf_counter() - start
    details = {"task": task.name, "model": scoring.model, "architecture": config["model"],
               "n_parameters": config["n_parameters"], "actors": actors, "batch_size": scoring.batch_size,
               "events_per_task": scoring.events_per_task, "cpus_per_actor": scoring.cpus_per_actor,
               "gpus_per_actor": scoring.gpus_per_actor, "input_files": len(scan.files),
               "skipped_files": [u for u, _ in scan.skipped], "inference_seconds": round(seconds, 3),
               "inference_events_per_second": round(len(result) / seconds, 1)}
    return result.replace_schema_metadata({TASK_METADATA: task.name.encode()}), details


def check_complete(result: pa.Table, scan: data.Scan, data_uri: str) -> None:
    """Every event of every file exactly once, scores finite; else nothing is published."""
    want = [(m.name, m.n_events) for m in scan.files]
    names = result.column("file").to_numpy(zero_copy_only=False)
    index = result.column("index").to_numpy()
    ok = len(result) == scan.n_events
    if ok:
        expected_index = np.concatenate([np.arange(n) for _, n in want])
        expected_names = np.repeat([name for name, _ in want], [n for _, n in want])
        ok = bool(np.array_equal(index, expected_index) and np.array_equal(names, expected_names))
    if not ok:
        raise RuntimeError(f"{data_uri}: predictions do not cover the input exactly once ({len(result)} rows for "
                           f"{scan.n_events} events); nothing was published")
    score_cols = [c for c in result.column_names if c.startswith("prob_") or c == "predicted"]
    for c in score_cols:
        v = result.column(c).to_numpy()
        bad = np.flatnonzero(~np.isfinite(v))
        if len(bad):
            i = int(bad[0])
            raise RuntimeError(f"{names[i]} event row {index[i]}: non-finite {c}; nothing was published")


def predict(data_uri: str, out: str, scoring: Scoring, skip_bad: bool = False,
            command: list[str] | None = None) -> dict[str, Any]:
    """Score DATA and publish ``OUT/predictions.parquet`` and ``_SUCCESS.json`` atomically."""
    started = time.time()
    result, details = run_inference(data_uri, scoring, skip_bad)
    with storage.Output(out, command=command, inputs=[data_uri, scoring.model], started=started) as output:
        output.write(PREDICTIONS, storage.parquet_bytes(result))
        manifest = output.commit(kind="nova-predict", **details, rows={PREDICTIONS: len(result)},
                                 events=len(result))
    log.info("scored %d events in %.1f s (%.0f events/s) → %s", len(result), details["inference_seconds"],
             details["inference_events_per_second"], storage.join(out, PREDICTIONS))
    return manifest
