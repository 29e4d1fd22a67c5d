"""Dataset profile of a Kaggle-layout split (real or simulated): ``neutrino-ray icecube stats``, the Ray edge.

:func:`profile_split` plans per batch file: the driver checks the split (:func:`~neutrino_ray.icecube.pipeline.
split_summary`: the meta streamed for a per-batch event count, never held whole), then runs one Ray task per
batch file. Each task reads only its own meta rows (a ``batch_id`` filter pushed down to the Parquet reader)
and its truth rows, reads its pulses slice by slice, and returns one profile
(:mod:`~neutrino_ray.icecube.profile`, exact and mergeable); the driver merges profiles as they arrive.
Memory is independent of the number of events. :func:`stats` publishes the merged profile as ``stats.json``,
``summary.md`` and PNG histograms (:mod:`~neutrino_ray.icecube.stats_report`).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from neutrino_ray import progress, runtime, storage
from neutrino_ray.icecube import data as icdata
from neutrino_ray.icecube import linefit as lf
from neutrino_ray.icecube import pipeline
from neutrino_ray.icecube.metrics import rows_by_event_id
from neutrino_ray.icecube.options import STATS_EVENTS_PER_TASK
from neutrino_ray.icecube.profile import Profile, merge, merge_all, profile_events
from neutrino_ray.icecube.stats_report import plots, summary_markdown, to_stats

log = logging.getLogger("neutrino_ray")

STATS, SUMMARY = "stats.json", "summary.md"

# ----------------------------------------------------------------------------------------------
# Ray edge: one task per batch file
def truth_uri(data: str, split: str) -> str:
    return storage.join(data, f"{split}_truth.parquet")


def batch_truth(data: str, split: str, meta: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """True (azimuth, zenith) of one batch's events in the meta's row order, checked.

    train: the meta's own columns (read with them). Otherwise ``{split}_truth.parquet``, read with an
    event_id range filter pushed down to the Parquet reader, then matched by event_id.
    """
    if split == "train":
        t = icdata.checked_truth(meta, icdata.meta_uri(data, split))
        return t.column("azimuth").to_numpy(), t.column("zenith").to_numpy()
    uri = truth_uri(data, split)
    ids = meta.column("event_id").to_numpy()
    cols = ["event_id", "azimuth", "zenith"]
    try:
        with storage.parquet_errors(uri, icdata.DataError), storage.open_input(uri) as f:
            names = pq.read_schema(f).names
            if missing := [c for c in cols if c not in names]:
                raise icdata.DataError(f"{uri}: missing columns {missing} (has {names})")
            f.seek(0)
            truth = pq.read_table(f, columns=cols, filters=[("event_id", ">=", int(ids.min())),
                                                             ("event_id", "<=", int(ids.max()))])
    except FileNotFoundError as e:
        raise icdata.DataError(f"{uri}: no truth for split {split!r} (the real Kaggle test set has none)") from e
    tid = truth.column("event_id").to_numpy()
    sorted_ids = np.sort(tid)
    dup = np.flatnonzero(sorted_ids[1:] == sorted_ids[:-1])
    if len(dup):
        raise icdata.DataError(f"{uri}: duplicate event_id {int(sorted_ids[dup[0]])}")
    rows, found = rows_by_event_id(tid, ids)
    if not found.all():
        raise icdata.DataError(f"{uri}: no truth row for event_id {int(ids[~found][0])} "
                               f"({int((~found).sum())} events of batch {int(meta.column('batch_id')[0].as_py())} "
                               f"have none)")
    t = icdata.checked_truth(truth.take(pa.array(rows)), uri)
    return t.column("azimuth").to_numpy(), t.column("zenith").to_numpy()


def profile_batch(data: str, split: str, batch: icdata.BatchSummary, geometry: np.ndarray,
                  events_per_task: int = STATS_EVENTS_PER_TASK, truth: bool = True,
                  variants: Sequence[str] = lf.VARIANTS) -> Profile:
    """The profile of one batch file: its own meta (and truth) rows only, pulses read slice by slice."""
    run = uuid.uuid4().hex
    slices = icdata.plan_batch(data, split, run, batch, events_per_task)
    try:
        meta = icdata.batch_meta(run, data, split, batch.batch_id, truth=truth and split == "train")
        az, zen = batch_truth(data, split, meta) if truth else (None, None)
    except icdata.DataError:
        for s in slices:  # a meta that disagrees with its pulse file is the error to report first
            icdata.read_slice(s, len(geometry))
        raise
    parts, row = [], 0
    for s in slices:
        k = s.hi - s.lo
        events = icdata.read_slice(s, len(geometry))
        parts.append(profile_events(events, geometry, None if az is None else az[row:row + k],
                                    None if zen is None else zen[row:row + k], variants))
        row += k
    return replace(merge_all(parts), batch_ids=(int(batch.batch_id),))


@ray.remote
def _profile_batch_task(data: str, split: str, batch: icdata.BatchSummary, geometry: np.ndarray,
                        events_per_task: int, truth: bool, variants: tuple[str, ...]) -> Profile:
    return profile_batch(data, split, batch, geometry, events_per_task, truth, variants)


@dataclass
class SplitProfile:
    profile: Profile
    no_truth_reason: str | None
    no_linefit_reason: str | None
    seconds: float


def profile_split(data: str, split: str, events_per_task: int = STATS_EVENTS_PER_TASK,
                  linefit: bool = True) -> SplitProfile:
    """Profile a split with one Ray task per batch file; partial profiles merged on the driver as they arrive."""
    start = time.perf_counter()
    summary = pipeline.split_summary(data, split)  # validates the split's rows; streams the meta
    geometry = icdata.load_geometry(data)
    truth, no_truth = True, None
    if split != "train" and not storage.exists(truth_uri(data, split)):
        truth = False
        no_truth = f"no truth for split {split!r} (the real Kaggle test set has none)"
    variants = tuple(lf.VARIANTS) if linefit else ()
    runtime.init_ray()
    geo = ray.put(geometry)
    pending = [_profile_batch_task.remote(data, split, b, geo, events_per_task, truth, variants)
               for b in summary.values()]
    counts = dict(zip(pending, (s.n_events for s in summary.values()), strict=True))
    merged: Profile | None = None
    with progress.Progress("stats", sum(counts.values()), tick=True) as line:
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                part = ray.get(done[0])
                merged = part if merged is None else merge(merged, part)
                line.update(counts[done[0]])
        except BaseException:
            for ref in pending:  # the first bad batch stops the job
                ray.cancel(ref)
            raise
    assert merged is not None
    if merged.events != sum(s.n_events for s in summary.values()):
        raise RuntimeError(f"{data} split {split!r}: profiled {merged.events} events, the meta has "
                           f"{sum(s.n_events for s in summary.values())}; nothing was published")
    return SplitProfile(merged, no_truth, None if linefit or not truth else "LineFit skipped (--no-linefit)",
                        time.perf_counter() - start)


def stats(data: str, split: str, out: str, events_per_task: int = STATS_EVENTS_PER_TASK, linefit: bool = True,
          command: list[str] | None = None) -> dict[str, Any]:
    """Profile a split and publish ``stats.json``, ``summary.md`` and PNG histograms to ``out`` atomically."""
    started = time.time()
    res = profile_split(data, split, events_per_task, linefit)  # inputs fail before outputs are touched
    doc = to_stats(res.profile, dataset=data, split=split, no_truth_reason=res.no_truth_reason,
                   no_linefit_reason=res.no_linefit_reason)
    with storage.Output(out, command=command, inputs=[data], started=started) as output:
        output.write(STATS, json.dumps(doc, indent=2).encode())
        output.write(SUMMARY, summary_markdown(doc).encode())
        for name, image in plots(res.profile).items():
            output.write(name, image)
        output.commit(kind="icecube-stats", split=split, rows={STATS: doc["events"]}, events=doc["events"],
                      batch_files=doc["batch_files"], profile_seconds=round(res.seconds, 3))
    log.info("profiled %d events in %d batch files of %s split %r in %.1f s; wrote %s", doc["events"],
             doc["batch_files"], data, split, res.seconds, storage.join(out, STATS))
    return doc
