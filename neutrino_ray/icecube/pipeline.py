"""Ray Data wiring shared by inference and training: read tasks → blocks of featurised events.

A Ray Data row here is first a *read task* (one batch file's row groups and the meta of the events
that start in them, optionally with their true directions); :func:`read_featurise` turns one into a
block of featurised events. The pure work is in :mod:`~neutrino_ray.icecube.data` and
:mod:`~neutrino_ray.icecube.features`.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

import numpy as np
import pyarrow as pa
import ray

from neutrino_ray.icecube import data as icdata
from neutrino_ray.icecube.features import featurise


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


def iter_tasks(batch: pa.Table) -> Iterator[tuple[icdata.ReadTask, dict[str, np.ndarray]]]:
    """Read tasks (and their truth columns, if any) back from task rows."""
    extra = [c for c in ("azimuth", "zenith") if c in batch.column_names]
    for row in batch.to_pylist():
        task = icdata.ReadTask(row["uri"], row["batch_id"], row["rg_start"], row["rg_stop"],
                               np.asarray(row["event_id"], np.int64), np.asarray(row["first"], np.int64),
                               np.asarray(row["last"], np.int64))
        yield task, {c: np.asarray(row[c], np.float64) for c in extra}


def read_featurise(batch: pa.Table, geometry: np.ndarray, max_pulses: int) -> pa.Table:
    """Task rows → featurised event rows (event_id, n_pulses, n_selected, features[, azimuth, zenith])."""
    out = []
    for task, truth in iter_tasks(batch):
        events = featurise(icdata.read_task_events(task, len(geometry)), geometry, max_pulses)
        for c, values in truth.items():
            events = events.append_column(c, pa.array(values))
        out.append(events)
    return pa.concat_tables(out)


def events_dataset(tasks: list[icdata.ReadTask], geometry: np.ndarray, max_pulses: int,
                   truth: pa.Table | None = None, num_cpus: float = 1.0) -> ray.data.Dataset:
    """Lazy dataset of featurised events, one block per read task, decoded where it is consumed."""
    ds: ray.data.Dataset = ray.data.from_arrow(task_tables(tasks, truth))
    return ds.map_batches(partial(read_featurise, geometry=geometry, max_pulses=max_pulses),
                          batch_format="pyarrow", batch_size=1, zero_copy_batch=True, num_cpus=num_cpus)


def checked_truth(meta: pa.Table, uri: str) -> pa.Table:
    """(event_id, azimuth, zenith) of a train meta, refusing non-finite or out-of-range directions."""
    az = meta.column("azimuth").to_numpy(zero_copy_only=False).astype(np.float64)
    zen = meta.column("zenith").to_numpy(zero_copy_only=False).astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(az) | ~np.isfinite(zen) | (zen < 0) | (zen > np.pi))
    if len(bad):
        i = int(bad[0])
        raise icdata.DataError(f"{uri}: event_id {meta.column('event_id')[i].as_py()} has an invalid true direction "
                               f"(azimuth {az[i]!r}, zenith {zen[i]!r}); {len(bad)} such rows")
    return pa.table({"event_id": meta.column("event_id"), "azimuth": az, "zenith": zen})
