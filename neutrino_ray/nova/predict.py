"""Batch scoring of NOvA pixel maps with a trained model: HDF5 slices → actor pool → one atomic Parquet file.

Each actor loads the model once (on a GPU with ``gpus_per_actor``; batch normalisation folded into the
convolutions, :func:`neutrino_ray.inference.fold_batchnorm`), then reads its slices itself
(so pixels never cross the object store), scores them in mini-batches and writes each slice's scores as a
part (:mod:`neutrino_ray.parts`: a killed run re-run with the same command reuses the parts it finished);
only the parts' summaries come back. The driver checks from them that every planned event is scored exactly
once, then streams the parts in file order into ``OUT/predictions.parquet``: the keys (``file``, ``index``,
run, subrun, cycle, evt, subevt), the event's visible energy, and the scores: ``prob_<class>`` and
``predicted`` (class index) for classification tasks, ``predicted`` (GeV or y) for regressions. The task's
name is stored in the Parquet schema metadata so ``nova evaluate`` knows what it is reading.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch
from torch import nn

from neutrino_ray import devices, inference, progress, runtime, storage
from neutrino_ray.nova import data
from neutrino_ray.nova.architectures import DEFAULT_BATCH_SIZE
from neutrino_ray.nova.artefact import load_task_and_model
from neutrino_ray.nova.simulate import GEV_PER_COUNT
from neutrino_ray.nova.train import NovaTask
from neutrino_ray.parts import PART_SUMMARY, Parts, Unit, check_parts, iter_parts

log = logging.getLogger("neutrino_ray")

PREDICTIONS = "predictions.parquet"
KEY_FIELDS = ("run", "subrun", "cycle", "evt", "subevt")
TASK_METADATA = b"neutrino_ray.task"
DEFAULT_EVENTS_PER_TASK = 1_000
PARTS_FORMAT = "neutrino-ray nova parts v1"
KEY = "key"  # a part's sort key: the file's position in the scan << 32 | the event's row in it (not published)


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


def part_unit(s: data.Slice, file_no: int) -> Unit:
    """A slice's part: named by its file's position in the scan, its first row and its row count."""
    return Unit(f"part-{file_no:06d}-{s.start:010d}-{len(s.rows):08d}.parquet", file_no, len(s.rows))


class NovaScorer(inference.Scorer):
    """Ray Data actor: loads a trained model once, then reads and scores slices (writing each as a part)."""

    def __init__(self, model_uri: str, batch_size: int, threads: int, use_gpu: bool, parts: Parts,
                 file_numbers: dict[str, int], precision: str = "auto"):
        super().__init__(use_gpu, threads, precision)
        self.task, self.model, _ = load_task_and_model(model_uri)
        self.model = inference.fold_batchnorm(self.model).to(self.device)
        self.batch_size, self.parts, self.file_numbers = batch_size, parts, file_numbers

    def __call__(self, batch: pa.Table) -> pa.Table:
        slices = data.slices_from_table(batch)

        def score(i: int) -> pa.Table:
            s = slices[i]
            result = score_events(self.task, self.model, data.read_slice(s), self.batch_size, self.device,
                                  self.precision)
            key = (self.file_numbers[s.name] << 32) + result.column("index").to_numpy().astype(np.int64)
            return result.append_column(KEY, pa.array(key))

        return self.parts.score([part_unit(s, self.file_numbers[s.name]) for s in slices], score)


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


def fingerprint(data_uri: str, scan: data.Scan, scoring: Scoring) -> str:
    """What a part's scores depend on, hashed: the code version, the input files (sizes and versions, from
    listings) and their event counts, the model's files and every scoring setting."""
    doc = {"format": PARTS_FORMAT, "code": storage.code_version(), "data": data_uri,
           "files": [[m.name, m.n_events, storage.versions(m.uri)] for m in scan.files],
           "model": scoring.model, "model_files": storage.versions(scoring.model),
           "events_per_task": scoring.events_per_task, "batch_size": scoring.batch_size}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def score_parts(data_uri: str, scan: data.Scan, scoring: Scoring, parts: Parts) -> tuple[pa.Table, int]:
    """Score every event under DATA, each slice written as a part; returns the parts' summaries and the actors."""
    slices = data.plan_slices(scan.files, None, scoring.events_per_task)
    runtime.init_ray()
    use_gpu = scoring.gpus_per_actor > 0
    actors = runtime.actor_pool_size(scoring.actors, scoring.cpus_per_actor, scoring.gpus_per_actor,
                                     scoring.resource_wait_minutes)
    ds: ray.data.Dataset = ray.data.from_arrow(data.slice_tables(slices))
    ds = inference.actor_pool(ds, NovaScorer, {"model_uri": scoring.model, "batch_size": scoring.batch_size,
                                               "threads": max(1, int(scoring.cpus_per_actor)), "use_gpu": use_gpu,
                                               "parts": parts,
                                               "file_numbers": {m.name: i for i, m in enumerate(scan.files)}},
                              actors, scoring.cpus_per_actor, scoring.gpus_per_actor)
    blocks = list(progress.track(ds.iter_batches(batch_format="pyarrow", batch_size=None), "predict nova",
                                 scan.n_events, count=lambda b: sum(b.column("rows").to_pylist())))
    return (pa.concat_tables(blocks) if blocks else PART_SUMMARY.empty_table()), actors


def check_complete(result: pa.Table, scan: data.Scan, data_uri: str) -> None:
    """Every event of every file exactly once (in file order), scores finite; else nothing is published."""
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
    check_finite(result)


def check_finite(result: pa.Table) -> None:
    """Every score finite; else nothing is published."""
    names = result.column("file").to_numpy(zero_copy_only=False)
    index = result.column("index").to_numpy()
    score_cols = [c for c in result.column_names if c.startswith("prob_") or c == "predicted"]
    for c in score_cols:
        v = result.column(c).to_numpy()
        bad = np.flatnonzero(~np.isfinite(v))
        if len(bad):
            i = int(bad[0])
            raise RuntimeError(f"{names[i]} event row {index[i]}: non-finite {c}; nothing was published")


def predict(data_uri: str, out: str, scoring: Scoring, skip_bad: bool = False,
            command: list[str] | None = None) -> dict[str, Any]:
    """Score DATA and publish ``OUT/predictions.parquet`` and ``_SUCCESS.json`` atomically, through parts
    (see the module docstring): the driver holds one part at a time."""
    started = time.time()
    start = time.perf_counter()
    task, _, config = load_task_and_model(scoring.model)  # a bad model fails before any work
    scan = data.scan(data_uri, skip_bad=skip_bad)
    fp = fingerprint(data_uri, scan, scoring)
    with storage.lease(out) as held:  # one writer per output from the first part written to the publication
        parts = Parts.beside(out, fp, key=KEY)
        held.add_staging(parts.uri)  # kept for a resume if this run dies
        summary, actors = score_parts(data_uri, scan, scoring, parts)
        expected = {i: m.n_events for i, m in enumerate(scan.files)}
        names, disjoint = check_parts(summary, expected, fp, data_uri, group="file", planned="the file")
        reused = summary.filter(summary.column("reused"))
        n_events = scan.n_events
        with storage.Output(out, command=command, inputs=[data_uri, scoring.model], started=started) as output:
            with storage.open_output(output.staged(PREDICTIONS)) as f:
                writer = None
                try:
                    for t in iter_parts(parts, names, disjoint, data_uri, lambda t: check_complete(
                            t.drop_columns([KEY]), scan, data_uri)):
                        check_finite(t)
                        t = t.drop_columns([KEY]).replace_schema_metadata({TASK_METADATA: task.name.encode()})
                        writer = writer or pq.ParquetWriter(f, t.schema)
                        writer.write_table(t)
                finally:
                    if writer is not None:
                        writer.close()
            seconds = time.perf_counter() - start
            details = {"task": task.name, "model": scoring.model, "architecture": config["model"],
                       "n_parameters": config["n_parameters"], "actors": actors, "batch_size": scoring.batch_size,
                       "events_per_task": scoring.events_per_task, "cpus_per_actor": scoring.cpus_per_actor,
                       "gpus_per_actor": scoring.gpus_per_actor, "input_files": len(scan.files),
                       "skipped_files": [u for u, _ in scan.skipped], "inference_seconds": round(seconds, 3),
                       "inference_events_per_second": round(n_events / seconds, 1), "parts": len(names),
                       "parts_reused": len(reused), "fingerprint": fp}
            manifest = output.commit(kind="nova-predict", **details, rows={PREDICTIONS: n_events}, events=n_events)
        storage.remove(parts.uri, recursive=True)
        held.drop_staging(parts.uri)
    log.info("scored %d events in %.1f s (%.0f events/s) → %s", n_events, details["inference_seconds"],
             details["inference_events_per_second"], storage.join(out, PREDICTIONS))
    return manifest
