"""Ray Data wiring shared by inference and training: planned slices → blocks of featurised events.

A split is planned into :class:`~neutrino_ray.icecube.data.BatchSlice`\\ s (one batch file's row groups and
the meta rows of the events that start in them) by :func:`plan_split` / :func:`plan_ranges`; a Ray Data row
is one slice, in exactly its fields (:meth:`SplitPlan.tables`, decoded by :func:`iter_slices`), and
:func:`read_featurise` turns rows of slices into a block of featurised events. The pure work is in
:mod:`~neutrino_ray.icecube.data` and :mod:`~neutrino_ray.icecube.features`.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial

import numpy as np
import pyarrow as pa
import ray
from ray.data import RandomSeedConfig

from neutrino_ray import runtime, storage
from neutrino_ray.icecube import data as icdata
from neutrino_ray.icecube.features import SEED, featurise
from neutrino_ray.icecube.linefit import seed_column

log = logging.getLogger("neutrino_ray")

SLICE_FIELDS = tuple(f.name for f in dataclasses.fields(icdata.BatchSlice))  # the columns of a slice row


@ray.remote
def _plan_batch(data: str, split: str, run: str, batch: icdata.BatchSummary, events_per_task: int, start: int,
                stop: int, truth: bool) -> list[icdata.BatchSlice]:
    return icdata.plan_batch(data, split, run, batch, events_per_task, start, stop, truth)


@dataclass
class SplitPlan:
    """What the driver holds of a split it scores or trains on: a summary per batch and the light slices."""

    data: str
    split: str
    summary: dict[int, icdata.BatchSummary]
    slices: list[icdata.BatchSlice]
    events: int  # the events the slices cover

    @staticmethod
    def table(slices: list[icdata.BatchSlice]) -> pa.Table:
        """Slice rows: one per slice, its fields as columns."""
        return pa.table({f: [getattr(s, f) for s in slices] for f in SLICE_FIELDS})

    def tables(self) -> list[pa.Table]:
        """One single-row Arrow table (→ one Ray Data block) per slice."""
        return [self.table([s]) for s in self.slices]

    def guided_blocks(self, slots: int) -> list[pa.Table]:
        """The slices in Ray Data blocks of shrinking size (guided scheduling): each block holds
        ceil(remaining / (2 · slots)) slices, so the first blocks are large and the last ones single slices.
        Ray Data waits up to 0.1 s after each task before it notices the task is done and starts the next
        (``ray.wait`` with a timeout in the streaming executor, ray-project/ray#45934): with one slice per task
        that left the CPUs idle for a large share of a LineFit job (docs/icecube.md, "End to end against the
        two-core limit"). Few, large blocks pay it rarely; the
        small last blocks keep the slots finishing together. Each slice is still its own batch (and part)."""
        out, i, n = [], 0, len(self.slices)
        while i < n:
            k = max(1, -(-(n - i) // (2 * max(1, slots))))
            out.append(self.table(self.slices[i:i + k]))
            i += k
        return out


def split_summary(data: str, split: str) -> dict[int, icdata.BatchSummary]:
    """A split's summary per batch, streamed from its meta (row checks on the way), after checking that every
    batch file is there and that no event id is in two batches: the one split check of predict, stats and the
    LineFit uncertainty fit. Batch files the meta does not name are not read, with a warning."""
    summary = icdata.meta_batch_summary(data, split)
    if not summary:
        raise icdata.DataError(f"{icdata.meta_uri(data, split)}: no events in split {split!r}")
    unused = icdata.check_batch_files(data, split, summary)
    if unused:
        log.warning("%s: %d batch files have no meta rows (e.g. batch %d); they are not read",
                    storage.join(data, split), len(unused), unused[0])
    icdata.check_ids_across_batches(data, split, summary)
    return summary


def plan_ranges(data: str, split: str, summary: dict[int, icdata.BatchSummary], ranges: dict[int, tuple[int, int]],
                events_per_task: int, truth: bool = False, in_process: bool = False) -> SplitPlan:
    """Slices of the meta rows [start, stop) of each batch in ``ranges``, by :func:`icdata.plan_batch`: one Ray
    task per batch (Ray started, if it is not), or, ``in_process``, one batch after another in this process
    (benchmarks and tests of the pure cores)."""
    run = uuid.uuid4().hex
    args = [(data, split, run, summary[b], events_per_task, start, stop, truth) for b, (start, stop) in ranges.items()]
    if in_process:
        planned = [icdata.plan_batch(*a) for a in args]
    else:
        runtime.init_ray()
        planned = ray.get([_plan_batch.remote(*a) for a in args])
    slices = [s for batch_slices in planned for s in batch_slices]
    return SplitPlan(data, split, summary, slices, sum(stop - start for start, stop in ranges.values()))


def plan_split(data: str, split: str, events_per_task: int, last_events: int | None = None,
               in_process: bool = False) -> SplitPlan:
    """Plan a split (or its last ``last_events`` events in file order) without holding its meta."""
    summary = split_summary(data, split)
    return plan_ranges(data, split, summary, icdata.batch_ranges(summary, last_events), events_per_task,
                       in_process=in_process)


def iter_slices(rows: pa.Table) -> Iterator[icdata.BatchSlice]:
    """The slices of slice rows (:meth:`SplitPlan.table`)."""
    for row in rows.select(list(SLICE_FIELDS)).to_pylist():
        yield icdata.BatchSlice(**row)


def read_featurise(rows: pa.Table, geometry: np.ndarray, max_pulses: int, seeds: bool = False) -> pa.Table:
    """Slice rows → featurised event rows (event_id, n_pulses, n_selected, features[, seed][, azimuth, zenith]);
    ``seeds``: with the events' Kaggle LineFit directions, fitted to all their pulses, for the seeded models."""
    out = []
    for s in iter_slices(rows):
        raw = icdata.read_slice(s, len(geometry))
        events = featurise(raw, geometry, max_pulses)
        if seeds:
            events = events.append_column(SEED, seed_column(raw, geometry))
        for c, values in icdata.slice_truth(s).items():
            events = events.append_column(c, pa.array(values))
        out.append(events)
    return pa.concat_tables(out)


def events_dataset(plan: SplitPlan, geometry: np.ndarray, max_pulses: int, num_cpus: float = 1.0,
                   shuffle_seed: int | None = None, seeds: bool = False) -> ray.data.Dataset:
    """Lazy dataset of featurised events, one block per slice, read and decoded where it is consumed.
    With ``shuffle_seed``, the order of the slices (row-group ranges of the batch files) is shuffled anew
    for every pass over the data (epoch), reproducibly: only the light slice rows move, never events."""
    ds: ray.data.Dataset = ray.data.from_arrow(plan.tables())
    if shuffle_seed is not None and len(plan.slices) > 1:
        ds = ds.randomize_block_order(seed=RandomSeedConfig(seed=shuffle_seed, reseed_after_execution=True))
    return ds.map_batches(partial(read_featurise, geometry=geometry, max_pulses=max_pulses, seeds=seeds),
                          batch_format="pyarrow", batch_size=1, zero_copy_batch=True, num_cpus=num_cpus)
