"""Ray Data wiring shared by inference and training: read tasks → blocks of featurised events.

A Ray Data row here is first a *read task* (one batch file's row groups and the meta of the events
that start in them, optionally with their true directions); :func:`read_featurise` turns one into a
block of featurised events. The pure work is in :mod:`~neutrino_ray.icecube.data` and
:mod:`~neutrino_ray.icecube.features`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import pyarrow as pa
import ray
from ray.data import RandomSeedConfig

from neutrino_ray import runtime
from neutrino_ray.icecube import data as icdata
from neutrino_ray.icecube.features import SEED, featurise
from neutrino_ray.icecube.linefit import seed_column


def task_tables(tasks: list[icdata.ReadTask], truth: pa.Table | None = None) -> list[pa.Table]:
    """One single-row Arrow table (→ one Ray Data block) per read task.

    ``truth`` (event_id, azimuth, zenith) in the tasks' order, as :func:`icdata.iter_split_tasks` plans
    them from the sorted meta, adds each task's true directions.
    """
    out, row = [], 0
    for t in tasks:
        cols = {
            "uri": [t.uri], "batch_id": [t.batch_id], "rg_start": [t.rg_start], "rg_stop": [t.rg_stop],
            "event_id": pa.array([t.event_id], pa.list_(pa.int64())),
            "first": pa.array([t.first], pa.list_(pa.int64())),
            "last": pa.array([t.last], pa.list_(pa.int64())),
        }
        if truth is not None:
            part = truth.slice(row, len(t.event_id))
            if not np.array_equal(part.column("event_id").to_numpy(), t.event_id):
                raise ValueError("truth rows are not in read-task order")
            for c in ("azimuth", "zenith"):
                cols[c] = pa.array([part.column(c).to_numpy()], pa.list_(pa.float64()))
        row += len(t.event_id)
        out.append(pa.table(cols))
    return out


@ray.remote
def _plan_batch(run: str, data: str, split: str, batch: icdata.BatchSummary, start: int, stop: int,
                events_per_task: int, truth: bool) -> list[icdata.TaskSpec]:
    return icdata.plan_batch_specs(run, data, split, batch, start, events_per_task, stop, truth)


@dataclass
class SplitPlan:
    """What the driver holds of a split it scores or trains on: a summary per batch and light task specs."""

    data: str
    split: str
    summary: dict[int, icdata.BatchSummary]
    specs: list[icdata.TaskSpec]
    events: int  # the events the specs cover

    def _table(self, specs: list[icdata.TaskSpec]) -> pa.Table:
        """Task-spec rows: one per spec."""
        return pa.table({"data": [self.data] * len(specs), "split": [self.split] * len(specs),
                         **{f: [getattr(s, f) for s in specs]
                            for f in ("run", "batch_id", "start", "lo", "hi", "rg_start", "rg_stop", "truth")}})

    def tables(self) -> list[pa.Table]:
        """One single-row Arrow table (→ one Ray Data block) per task spec."""
        return [self._table([s]) for s in self.specs]

    def guided_blocks(self, slots: int) -> list[pa.Table]:
        """The task specs in Ray Data blocks of shrinking size (guided scheduling): each block holds
        ceil(remaining / (2 · slots)) specs, so the first blocks are large and the last ones single specs.
        Ray Data waits up to 0.1 s after each task before it notices the task is done and starts the next
        (``ray.wait`` with a timeout in the streaming executor, ray-project/ray#45934): with one spec per task
        that left the CPUs idle for ~28 % of a LineFit job on 2 cores. Few, large blocks pay it rarely; the
        small last blocks keep the slots finishing together. Each spec is still its own batch (and part)."""
        out, i, n = [], 0, len(self.specs)
        while i < n:
            k = max(1, -(-(n - i) // (2 * max(1, slots))))
            out.append(self._table(self.specs[i:i + k]))
            i += k
        return out


def split_summary(data: str, split: str) -> dict[int, icdata.BatchSummary]:
    """A split's summary per batch, streamed from its meta (row checks on the way), after checking that every
    batch file is there and that no event id is in two batches."""
    summary = icdata.meta_batch_summary(data, split)
    if not summary:
        raise icdata.DataError(f"{icdata.meta_uri(data, split)}: no events in split {split!r}")
    icdata.check_batch_files(data, split, summary)
    icdata.check_ids_across_batches(data, split, summary)
    return summary


def plan_ranges(data: str, split: str, summary: dict[int, icdata.BatchSummary], ranges: dict[int, tuple[int, int]],
                events_per_task: int, truth: bool = False) -> SplitPlan:
    """Task specs for the meta rows [start, stop) of each batch in ``ranges``: (Ray started, if it is not) one
    Ray task per batch reads that batch's meta, validates it against its pulse file and cuts it into specs."""
    runtime.init_ray()
    run = uuid.uuid4().hex
    refs = [_plan_batch.remote(run, data, split, summary[b], start, stop, events_per_task, truth)
            for b, (start, stop) in ranges.items()]
    specs = [s for batch_specs in ray.get(refs) for s in batch_specs]
    return SplitPlan(data, split, summary, specs, sum(stop - start for start, stop in ranges.values()))


def plan_split(data: str, split: str, events_per_task: int, last_events: int | None = None) -> SplitPlan:
    """Plan a split (or its last ``last_events`` events in file order) without holding its meta."""
    summary = split_summary(data, split)
    return plan_ranges(data, split, summary, icdata.batch_ranges(summary, last_events), events_per_task)


def iter_tasks(batch: pa.Table) -> Iterator[tuple[icdata.ReadTask, dict[str, np.ndarray]]]:
    """Read tasks (and their truth columns, if any) back from task rows: rows of task specs
    (:class:`SplitPlan`), whose arrays come from the batch's meta, or rows carrying their arrays."""
    if "lo" in batch.column_names:
        for row in batch.to_pylist():
            yield spec_row_task(row)
        return
    extra = [c for c in ("azimuth", "zenith") if c in batch.column_names]
    for row in batch.to_pylist():
        task = icdata.ReadTask(row["uri"], row["batch_id"], row["rg_start"], row["rg_stop"],
                               np.asarray(row["event_id"], np.int64), np.asarray(row["first"], np.int64),
                               np.asarray(row["last"], np.int64))
        yield task, {c: np.asarray(row[c], np.float64) for c in extra}


def spec_row_task(row: dict[str, Any]) -> tuple[icdata.ReadTask, dict[str, np.ndarray]]:
    """The read task of one task-spec row (:meth:`SplitPlan.tables`), its arrays (and, for a spec with
    ``truth``, its events' true directions) from the batch's meta."""
    spec = icdata.TaskSpec(row["run"], row["batch_id"], row["start"], row["lo"], row["hi"],
                           row["rg_start"], row["rg_stop"], bool(row.get("truth")))
    task = icdata.spec_task(row["data"], row["split"], spec)
    if not spec.truth:
        return task, {}
    meta = icdata.spec_meta(row["data"], row["split"], spec)  # its directions were checked at planning
    return task, {c: meta.column(c).to_numpy(zero_copy_only=False).astype(np.float64) for c in ("azimuth", "zenith")}


def read_featurise(batch: pa.Table, geometry: np.ndarray, max_pulses: int, seeds: bool = False) -> pa.Table:
    """Task rows → featurised event rows (event_id, n_pulses, n_selected, features[, seed][, azimuth, zenith]);
    ``seeds``: with the events' Kaggle LineFit directions, for the seeded models."""
    out = []
    for task, truth in iter_tasks(batch):
        raw = icdata.read_task_events(task, len(geometry))
        events = featurise(raw, geometry, max_pulses)
        if seeds:
            events = events.append_column(SEED, seed_column(raw, geometry))
        for c, values in truth.items():
            events = events.append_column(c, pa.array(values))
        out.append(events)
    return pa.concat_tables(out)


def events_dataset(plan: SplitPlan, geometry: np.ndarray, max_pulses: int, num_cpus: float = 1.0,
                   shuffle_seed: int | None = None, seeds: bool = False) -> ray.data.Dataset:
    """Lazy dataset of featurised events, one block per task spec, read and decoded where it is consumed.
    With ``shuffle_seed``, the order of the tasks (row-group ranges of the batch files) is shuffled anew
    for every pass over the data (epoch), reproducibly: only the light spec rows move, never events."""
    ds: ray.data.Dataset = ray.data.from_arrow(plan.tables())
    if shuffle_seed is not None and len(plan.specs) > 1:
        ds = ds.randomize_block_order(seed=RandomSeedConfig(seed=shuffle_seed, reseed_after_execution=True))
    return ds.map_batches(partial(read_featurise, geometry=geometry, max_pulses=max_pulses, seeds=seeds),
                          batch_format="pyarrow", batch_size=1, zero_copy_batch=True, num_cpus=num_cpus)
