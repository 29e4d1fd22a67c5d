"""Batch inference on Ray Data: read → featurise → reconstruct → one atomic ``submission.csv``.

Read tasks (see :mod:`neutrino_ray.icecube.data`) become one Ray Data block each; the read,
featurise and reconstruction stages are fused by Ray Data into one task per block, so pulses never
leave the worker that decoded them. Only (event_id, azimuth, zenith) come back to the driver, which
checks that every event of the split's meta is present exactly once before publishing.
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

from neutrino_ray import runtime, storage
from neutrino_ray.errors import InputError
from neutrino_ray.icecube import data as icdata
from neutrino_ray.icecube.features import DEFAULT_MAX_PULSES, features_from_table, featurise, positions_and_times
from neutrino_ray.icecube.linefit import linefit

log = logging.getLogger("neutrino_ray")

DEFAULT_EVENTS_PER_TASK = 20_000
SUBMISSION = "submission.csv"
MODELS = ("linefit",)


def _tasks_table(tasks: list[icdata.ReadTask]) -> list[pa.Table]:
    """One single-row Arrow table (→ one Ray Data block) per read task."""
    return [pa.table({
        "uri": [t.uri], "batch_id": [t.batch_id], "rg_start": [t.rg_start], "rg_stop": [t.rg_stop],
        "event_id": pa.array([t.event_id], pa.list_(pa.int64())),
        "first": pa.array([t.first], pa.list_(pa.int64())),
        "last": pa.array([t.last], pa.list_(pa.int64())),
    }) for t in tasks]


def read_block(batch: pa.Table, n_sensors: int) -> pa.Table:
    """Ray Data UDF: task rows → event rows with pulse lists."""
    out = []
    for row in batch.to_pylist():
        task = icdata.ReadTask(row["uri"], row["batch_id"], row["rg_start"], row["rg_stop"],
                               np.asarray(row["event_id"], np.int64), np.asarray(row["first"], np.int64),
                               np.asarray(row["last"], np.int64))
        out.append(icdata.read_task_events(task, n_sensors))
    return pa.concat_tables(out)


def featurise_block(batch: pa.Table, geometry: np.ndarray, max_pulses: int) -> pa.Table:
    return featurise(batch, geometry, max_pulses)


def linefit_block(batch: pa.Table) -> pa.Table:
    """Ray Data UDF: featurised events → event_id, azimuth, zenith, ok."""
    feats, offsets = features_from_table(batch)
    xyz, t = positions_and_times(feats)
    az, zen, ok = linefit(xyz, t, offsets)
    return pa.table({"event_id": batch.column("event_id"), "azimuth": az, "zenith": zen, "ok": ok})


@dataclass
class PredictResult:
    submission: pa.Table
    events: int
    degenerate: int
    seconds: float

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else float("nan")


def build_dataset(data: str, split: str, meta: pa.Table, geometry: np.ndarray, model: str,
                  max_pulses: int, events_per_task: int) -> ray.data.Dataset:
    """The lazy Ray Data pipeline for one split."""
    tasks = list(icdata.iter_split_tasks(data, split, events_per_task, meta=meta))
    if not tasks:
        raise icdata.DataError(f"{icdata.meta_uri(data, split)}: no events in split {split!r}")
    ds: ray.data.Dataset = ray.data.from_arrow(_tasks_table(tasks))
    ds = ds.map_batches(partial(read_block, n_sensors=len(geometry)), batch_format="pyarrow", batch_size=1,
                        zero_copy_batch=True)
    ds = ds.map_batches(partial(featurise_block, geometry=geometry, max_pulses=max_pulses),
                        batch_format="pyarrow", batch_size=None, zero_copy_batch=True)
    return ds.map_batches(linefit_block, batch_format="pyarrow", batch_size=None, zero_copy_batch=True)


def run_inference(data: str, split: str, model: str = "linefit", max_pulses: int = DEFAULT_MAX_PULSES,
                  events_per_task: int = DEFAULT_EVENTS_PER_TASK) -> PredictResult:
    """Score every event of the split; returns the sorted, checked submission table."""
    if model not in MODELS:
        raise InputError(f"unknown model {model!r}: expected one of {MODELS}")
    start = time.perf_counter()
    meta = icdata.load_meta(data, split)  # bad or unreachable inputs fail before Ray starts
    geometry = icdata.load_geometry(data)
    runtime.init_ray()
    ds = build_dataset(data, split, meta, geometry, model, max_pulses, events_per_task)
    parts = [b for b in ds.iter_batches(batch_format="pyarrow", batch_size=None)]
    result = pa.concat_tables(parts) if parts else None
    if result is None:
        raise icdata.DataError(f"{data}: split {split!r} produced no predictions")
    result = result.sort_by("event_id")
    check_complete(result, meta, data, split)
    sub = result.select(["event_id", "azimuth", "zenith"])
    degenerate = int(len(result) - np.count_nonzero(result.column("ok").to_numpy(zero_copy_only=False)))
    return PredictResult(sub, len(sub), degenerate, time.perf_counter() - start)


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


def predict(data: str, split: str, model: str, out: str, max_pulses: int = DEFAULT_MAX_PULSES,
            events_per_task: int = DEFAULT_EVENTS_PER_TASK, command: list[str] | None = None) -> dict[str, Any]:
    """Score a split and publish ``OUT/submission.csv`` plus ``_SUCCESS.json`` atomically."""
    started = time.time()
    res = run_inference(data, split, model, max_pulses, events_per_task)  # inputs fail before outputs are touched
    with storage.Output(out, command=command, inputs=[data], started=started) as output:
        output.write(SUBMISSION, storage.csv_bytes(res.submission))
        manifest = output.commit(
            kind="icecube-predict", split=split, model=model, max_pulses=max_pulses,
            rows={SUBMISSION: res.events}, events=res.events, degenerate_events=res.degenerate,
            inference_seconds=round(res.seconds, 3), inference_events_per_second=round(res.events_per_second, 1),
        )
    log.info("predicted %d events in %.1f s (%.0f events/s); %d degenerate events got the default "
             "direction; wrote %s", res.events, res.seconds, res.events_per_second, res.degenerate,
             storage.join(out, SUBMISSION))
    return manifest
