"""Kaggle-layout IceCube datasets: meta, sensor geometry and pulse files, read and validated.

Layout under a dataset URI (local or s3://):
``{split}/batch_{id}.parquet`` (pulses: event_id index, sensor_id, time, charge, auxiliary),
``{split}_meta.parquet`` (batch_id, event_id, first_pulse_index, last_pulse_index[, azimuth, zenith]),
``sensor_geometry.csv`` (sensor_id, x, y, z).

Reading is planned in *read tasks*: consecutive row groups of one batch file together with the meta
rows of the events that start in them. A task reads only the row groups its events touch and emits
Arrow tables with one row per event (pulse columns as lists), so events are never split.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from neutrino_ray import storage
from neutrino_ray.errors import InputError
from neutrino_ray.icecube.features import PULSE_COLUMNS

SPLITS = ("train", "test")
META_COLUMNS = ("batch_id", "event_id", "first_pulse_index", "last_pulse_index")
PULSE_TYPES = {"event_id": pa.int64(), "sensor_id": pa.int16(), "time": pa.int64(),
               "charge": pa.float64(), "auxiliary": pa.bool_()}


class DataError(InputError):
    """Bad IceCube input data; the message names the file, the event or row, and the problem."""


def meta_uri(data: str, split: str) -> str:
    return storage.join(data, f"{split}_meta.parquet")


def batch_uri(data: str, split: str, batch_id: int) -> str:
    return storage.join(data, split, f"batch_{int(batch_id)}.parquet")


def geometry_uri(data: str) -> str:
    return storage.join(data, "sensor_geometry.csv")


def list_batches(data: str, split: str) -> dict[int, str]:
    """batch_id → URI of every ``{split}/batch_{id}.parquet`` that a storage listing finds, sorted by id."""
    folder = storage.join(data, split)
    try:
        entries = storage.listdir(folder)
    except FileNotFoundError:
        entries = []
    found = {}
    for uri in entries:
        m = re.fullmatch(r"batch_(\d+)\.parquet", uri.rstrip("/").rsplit("/", 1)[-1])
        if m:
            found[int(m.group(1))] = batch_uri(data, split, int(m.group(1)))
    return dict(sorted(found.items()))


def load_geometry(data: str) -> np.ndarray:
    """(n_sensors, 3) positions indexed by sensor_id, from the dataset's ``sensor_geometry.csv``."""
    uri = geometry_uri(data)
    try:
        t = storage.read_csv(uri)
    except FileNotFoundError as e:
        raise DataError(f"{uri}: sensor geometry not found") from e
    missing = {"sensor_id", "x", "y", "z"} - set(t.column_names)
    if missing:
        raise DataError(f"{uri}: missing columns {sorted(missing)}")
    sid = t.column("sensor_id").to_numpy()
    if not np.array_equal(sid, np.arange(len(sid))):
        raise DataError(f"{uri}: sensor_id must run 0..{len(sid) - 1} in order")
    xyz = np.stack([t.column(c).to_numpy().astype(np.float64) for c in "xyz"], axis=1)
    if not np.isfinite(xyz).all():
        bad = int(np.flatnonzero(~np.isfinite(xyz).all(axis=1))[0])
        raise DataError(f"{uri}: sensor_id {bad} has a non-finite position")
    return xyz


def _no_meta(uri: str, data: str, split: str) -> DataError:
    return DataError(f"{uri}: meta for split {split!r} not found (is {data} a Kaggle-layout dataset?)")


def load_meta(data: str, split: str, with_truth: bool = False) -> pa.Table:
    """The split's meta table sorted by (batch_id, first_pulse_index), validated."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {SPLITS}")
    uri = meta_uri(data, split)
    cols = list(META_COLUMNS) + (["azimuth", "zenith"] if with_truth else [])
    try:
        t = storage.read_parquet(uri, columns=cols)
    except FileNotFoundError as e:
        raise _no_meta(uri, data, split) from e
    except KeyError as e:
        raise DataError(str(e.args[0])) from e
    return _checked_meta(t, uri)


def load_batch_meta(data: str, split: str, batch_id: int, with_truth: bool = False) -> pa.Table:
    """The meta rows of one batch file, read with a ``batch_id`` filter pushed down to the Parquet reader
    (row groups whose statistics exclude the batch are skipped), validated and sorted as :func:`load_meta`."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {SPLITS}")
    uri = meta_uri(data, split)
    cols = list(META_COLUMNS) + (["azimuth", "zenith"] if with_truth else [])
    try:
        with storage.open_input(uri) as f:
            names = pq.read_schema(f).names
            missing = [c for c in cols if c not in names]
            if missing:
                raise DataError(f"{uri}: missing columns {missing} (has {names})")
            f.seek(0)
            t = pq.read_table(f, columns=cols, filters=[("batch_id", "==", int(batch_id))])
    except FileNotFoundError as e:
        raise _no_meta(uri, data, split) from e
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{uri}: not a readable Parquet file: {e}") from e
    return _checked_meta(t, uri)


def meta_batch_counts(data: str, split: str) -> dict[int, int]:
    """Events per batch_id of a split's meta, streamed one row group of the ``batch_id`` column at a time
    (memory independent of the number of events)."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {SPLITS}")
    uri = meta_uri(data, split)
    counts: dict[int, int] = {}
    try:
        with storage.open_input(uri) as f:
            pf = pq.ParquetFile(f)
            missing = [c for c in META_COLUMNS if c not in pf.schema_arrow.names]
            if missing:
                raise DataError(f"{uri}: missing columns {missing} (has {pf.schema_arrow.names})")
            typ = pf.schema_arrow.field("batch_id").type
            if not pa.types.is_integer(typ):
                raise DataError(f"{uri}: column batch_id must be integer, found {typ}")
            for rg in range(pf.num_row_groups):
                col = pf.read_row_group(rg, columns=["batch_id"]).column(0)
                if col.null_count:
                    raise DataError(f"{uri}: column batch_id has nulls")
                vc = pc.value_counts(col).flatten()
                for b, n in zip(vc[0].to_pylist(), vc[1].to_pylist()):
                    counts[b] = counts.get(b, 0) + n
    except FileNotFoundError as e:
        raise _no_meta(uri, data, split) from e
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{uri}: not a readable Parquet file: {e}") from e
    return dict(sorted(counts.items()))


def _checked_meta(t: pa.Table, uri: str) -> pa.Table:
    """Meta columns integer without nulls, event ids unique, 0 <= first <= last; sorted for reading."""
    for c in META_COLUMNS:
        if not pa.types.is_integer(t.schema.field(c).type):
            raise DataError(f"{uri}: column {c} must be integer, found {t.schema.field(c).type}")
        if t.column(c).null_count:
            raise DataError(f"{uri}: column {c} has nulls")
        t = t.set_column(t.schema.get_field_index(c), c, t.column(c).cast(pa.int64()))
    ids = t.column("event_id").to_numpy()
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise DataError(f"{uri}: duplicate event_id {int(uniq[counts > 1][0])} "
                        f"({int((counts > 1).sum())} duplicated ids)")
    first = t.column("first_pulse_index").to_numpy()
    last = t.column("last_pulse_index").to_numpy()
    bad = np.flatnonzero((first < 0) | (last < first))
    if len(bad):
        f, lst = int(first[bad[0]]), int(last[bad[0]])
        why = ("0 pulses: the indices are inclusive and every event needs at least one pulse"
               if f >= 0 and lst == f - 1 else "need 0 <= first <= last")
        raise DataError(f"{uri}: event_id {int(ids[bad[0]])} has first_pulse_index {f} "
                        f"and last_pulse_index {lst} ({why})")
    return t.sort_by([("batch_id", "ascending"), ("first_pulse_index", "ascending")])


@dataclass(frozen=True)
class ReadTask:
    """Row groups [rg_start, rg_stop) of one batch file and the events that start in them."""

    uri: str
    batch_id: int
    rg_start: int
    rg_stop: int
    event_id: np.ndarray
    first: np.ndarray
    last: np.ndarray


def plan_batch(uri: str, batch_id: int, meta: pa.Table, events_per_task: int) -> list[ReadTask]:
    """Cut one batch file into read tasks at row-group boundaries, about ``events_per_task`` each."""
    try:
        with storage.open_input(uri) as f:
            md = pq.ParquetFile(f).metadata
    except FileNotFoundError as e:
        raise DataError(f"{uri}: pulse file for batch {batch_id} not found") from e
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{uri}: not a readable Parquet file: {e}") from e
    n_rows = md.num_rows
    ids = meta.column("event_id").to_numpy()
    first = meta.column("first_pulse_index").to_numpy()
    last = meta.column("last_pulse_index").to_numpy()
    if len(ids) and last.max() >= n_rows:
        i = int(np.argmax(last))
        raise DataError(f"{uri}: meta event_id {int(ids[i])} points at pulse row {int(last[i])}, "
                        f"but the file has {n_rows} rows")
    overlap = np.flatnonzero(first[1:] <= last[:-1])
    if len(overlap):
        i = int(overlap[0]) + 1
        raise DataError(f"{uri}: meta pulse ranges of event_id {int(ids[i - 1])} and {int(ids[i])} overlap")
    rg_starts = np.zeros(md.num_row_groups + 1, dtype=np.int64)
    np.cumsum([md.row_group(i).num_rows for i in range(md.num_row_groups)], out=rg_starts[1:])
    # Row group of each event's first and last pulse.
    rg_first = np.searchsorted(rg_starts, first, side="right") - 1
    rg_last = np.searchsorted(rg_starts, last, side="right") - 1
    tasks: list[ReadTask] = []
    lo = 0
    while lo < len(ids):
        hi = min(len(ids), lo + events_per_task)
        # Extend to the end of the row group the last event starts in, so tasks cut at row groups.
        hi = int(np.searchsorted(rg_first, rg_first[hi - 1], side="right"))
        tasks.append(ReadTask(uri, batch_id, int(rg_first[lo]), int(rg_last[lo:hi].max()) + 1,
                              ids[lo:hi], first[lo:hi], last[lo:hi]))
        lo = hi
    return tasks


def _check_pulse_schema(uri: str, schema: pa.Schema) -> None:
    """Column names and kinds; ``time`` may also be floating (GraphNeT-style files): checked and cast later."""
    for name, typ in PULSE_TYPES.items():
        if name not in schema.names:
            raise DataError(f"{uri}: pulse column {name!r} missing (columns: {schema.names})")
        found = schema.field(name).type
        ok = (found == typ or (pa.types.is_integer(typ) and pa.types.is_integer(found))
              or (pa.types.is_floating(found) and (pa.types.is_floating(typ) or name == "time")))
        if not ok:
            also = " (or a floating type)" if name == "time" else ""
            raise DataError(f"{uri}: pulse column {name!r} has type {found}, expected {typ}{also}")


def read_task_events(task: ReadTask, n_sensors: int) -> pa.Table:
    """Read a task's row groups and return one row per event with pulse list columns, validated."""
    uri = task.uri
    try:
        with storage.open_input(uri) as f:
            pf = pq.ParquetFile(f)
            _check_pulse_schema(uri, pf.schema_arrow)
            row0 = sum(pf.metadata.row_group(i).num_rows for i in range(task.rg_start))
            pulses = pf.read_row_groups(range(task.rg_start, task.rg_stop), columns=list(PULSE_TYPES))
    except FileNotFoundError as e:
        raise DataError(f"{uri}: pulse file for batch {task.batch_id} not found") from e
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{uri}: corrupt or truncated Parquet file: {e}") from e
    first = task.first - row0
    last = task.last - row0
    counts = last - first + 1
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    all_ids = pulses.column("event_id").to_numpy()
    if len(first) and (first.min() < 0 or last.max() >= len(all_ids)):
        raise DataError(f"{uri}: meta pulse ranges fall outside the rows read for batch {task.batch_id}")
    # Each meta range must hold its whole event: the rows just outside it belong to other events.
    for edge in (first - 1, last + 1):
        inside = (edge >= 0) & (edge < len(all_ids))
        bad = np.flatnonzero(inside & (all_ids[np.clip(edge, 0, max(len(all_ids) - 1, 0))] == task.event_id))
        if len(bad):
            k = int(bad[0])
            raise DataError(f"{uri}: meta range rows {int(task.first[k])}..{int(task.last[k])} of event_id "
                            f"{int(task.event_id[k])} does not cover all of its pulses")
    if len(first) == 0 or np.array_equal(first[1:], last[:-1] + 1):  # the usual case: one run of rows
        lo = int(first[0]) if len(first) else 0
        pulses = pulses.slice(lo, int(offsets[-1]))
        event_of_row = all_ids[lo:lo + int(offsets[-1])]
    else:  # meta skips some rows: gather each event's range
        rows = np.repeat(first - offsets[:-1], counts) + np.arange(offsets[-1])
        pulses = pulses.take(pa.array(rows))
        event_of_row = all_ids[rows]
    # Every row of a range carries the range's event id: right id at each start, no change inside.
    starts = offsets[:-1]
    changes = np.flatnonzero(event_of_row[1:] != event_of_row[:-1]) + 1
    inner = changes[np.isin(changes, starts, assume_unique=True, invert=True)]
    wrong = np.flatnonzero(event_of_row[starts] != task.event_id) if len(starts) else starts
    if len(wrong) or len(inner):
        i = int(starts[wrong[0]]) if len(wrong) else int(inner[0])
        k = int(np.searchsorted(offsets, i, side="right") - 1)
        raise DataError(f"{uri}: meta says pulse row {int(task.first[k] + i - offsets[k])} belongs to "
                        f"event_id {int(task.event_id[k])}, but the file has event_id {int(event_of_row[i])} "
                        f"there")
    cols = {c: pulses.column(c).combine_chunks() for c in PULSE_COLUMNS}
    for name, col in cols.items():
        if col.null_count:
            i = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
            raise DataError(f"{uri}: event_id {int(event_of_row[i])} has a null {name}")
    sensor = cols["sensor_id"].to_numpy()
    bad = np.flatnonzero((sensor < 0) | (sensor >= n_sensors))
    if len(bad):
        i = int(bad[0])
        raise DataError(f"{uri}: event_id {int(event_of_row[i])} has sensor_id {int(sensor[i])} outside the "
                        f"geometry (0..{n_sensors - 1}); {len(bad)} such pulses in this file chunk")
    for name in ("time", "charge"):
        col = cols[name]
        if pa.types.is_integer(col.type) and not pa.types.is_uint64(col.type):
            continue  # the fast path: integers are finite (nulls were refused above) and fit in int64
        values = pc.cast(col, pa.float64(), safe=False).to_numpy(zero_copy_only=False)  # uint64: approximate
        if name == "charge":
            bad = np.flatnonzero(~np.isfinite(values) | (values <= 0))
        else:  # NaN, ±inf and values int64 cannot hold
            bad = np.flatnonzero(~(np.abs(values) < 2.0**63))
        if len(bad):
            i = int(bad[0])
            need = ("finite and positive" if name == "charge" else
                    "finite" if not np.isfinite(values[i]) else "within the int64 range")
            raise DataError(f"{uri}: event_id {int(event_of_row[i])} has an invalid {name} "
                            f"({col[i].as_py()!r}); {name} must be {need}")
        if name == "time" and pa.types.is_floating(col.type):  # checked above: truncate to integer ns
            cols[name] = pc.cast(col, options=pc.CastOptions(pa.int64(), allow_float_truncate=True))
    list_off = pa.array(offsets.astype(np.int32))
    return pa.table({
        "event_id": pa.array(task.event_id, pa.int64()),
        "batch_id": pa.array(np.full(len(counts), task.batch_id, dtype=np.int64)),
        **{c: pa.ListArray.from_arrays(list_off, cols[c].cast(PULSE_TYPES[c])) for c in PULSE_COLUMNS},
    })


def iter_split_tasks(data: str, split: str, events_per_task: int,
                     meta: pa.Table | None = None) -> Iterator[ReadTask]:
    """Plan every read task of a split (one footer read per batch file)."""
    meta = load_meta(data, split) if meta is None else meta
    batch_ids = meta.column("batch_id").to_numpy()
    bounds = np.flatnonzero(np.diff(batch_ids)) + 1
    for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(batch_ids)]):
        if hi <= lo:
            continue
        b = int(batch_ids[lo])
        yield from plan_batch(batch_uri(data, split, b), b, meta.slice(lo, hi - lo), events_per_task)


def split_truth(data: str, split: str) -> pa.Table:
    """True directions and extras for a split: train meta carries them; test has ``test_truth.parquet``."""
    if split == "train":
        return load_meta(data, split, with_truth=True).select(["event_id", "azimuth", "zenith"])
    uri = storage.join(data, f"{split}_truth.parquet")
    try:
        t = storage.read_parquet(uri)
    except FileNotFoundError as e:
        raise DataError(f"{uri}: no truth for split {split!r} (the real Kaggle test set has none)") from e
    return t

