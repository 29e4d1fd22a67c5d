"""Kaggle-layout IceCube datasets: meta, sensor geometry and pulse files, read and validated.

Layout under a dataset URI (local or s3://):
``{split}/batch_{id}.parquet`` (pulses: event_id index, sensor_id, time, charge, auxiliary),
``{split}_meta.parquet`` (batch_id, event_id, first_pulse_index, last_pulse_index[, azimuth, zenith]),
``sensor_geometry.csv`` (sensor_id, x, y, z).

Reading is planned in *slices* (:class:`BatchSlice`, by :func:`plan_batch`): consecutive row groups of one
batch file together with the meta rows of the events that start in them. A slice reads only the row groups
its events touch (:func:`read_slice`) and emits Arrow tables with one row per event (pulse columns as lists),
so events are never split.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from neutrino_ray import storage
from neutrino_ray.errors import InputError
from neutrino_ray.icecube.features import PULSE_COLUMNS

log = logging.getLogger("neutrino_ray")

SPLITS = ("train", "test")
META_SCAN_ROWS = 1 << 20  # the driver's summary scan of the meta: this many rows at a time, whatever its row groups
META_ROW_GROUP_WARN = 4_000_000  # a meta row group this large makes every per-batch read decode it whole
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
        with storage.parquet_errors(uri, DataError), storage.open_input(uri) as f:
            names = pq.read_schema(f).names
            missing = [c for c in cols if c not in names]
            if missing:
                raise DataError(f"{uri}: missing columns {missing} (has {names})")
            f.seek(0)
            t = pq.read_table(f, columns=cols, filters=[("batch_id", "==", int(batch_id))])
    except FileNotFoundError as e:
        raise _no_meta(uri, data, split) from e
    return _checked_meta(t, uri)


@dataclass(frozen=True)
class BatchSummary:
    """What the driver holds of one batch's meta: its event count and event-id range."""

    batch_id: int
    n_events: int
    min_event_id: int
    max_event_id: int


def meta_batch_summary(data: str, split: str) -> dict[int, BatchSummary]:
    """Per batch_id of a split's meta: event count and event-id range, streamed :data:`META_SCAN_ROWS` rows
    at a time (memory independent of the number of events, whatever the row groups), every chunk checked as
    :func:`_checked_rows` does.
    Duplicate ids are checked where a batch's meta is read (within a batch) and by
    :func:`check_ids_across_batches` (across batches)."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {SPLITS}")
    uri = meta_uri(data, split)
    out: dict[int, BatchSummary] = {}
    try:
        with storage.parquet_errors(uri, DataError), storage.open_input(uri) as f:
            pf = pq.ParquetFile(f)
            missing = [c for c in META_COLUMNS if c not in pf.schema_arrow.names]
            if missing:
                raise DataError(f"{uri}: missing columns {missing} (has {pf.schema_arrow.names})")
            largest = max((pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)), default=0)
            if largest > META_ROW_GROUP_WARN:
                log.warning("%s: a row group holds %d meta rows, and every per-batch read of the meta decodes whole "
                            "row groups: rewrite it with row groups of at most ~1,000,000 rows (docs/icecube.md, "
                            "data contract) before planning a large split", uri, largest)
            # One reader per row group: a single iter_batches over every row group keeps memory that grows
            # with the file, one per row group stays flat (figures: docs/icecube.md, "Predict on a meta
            # written in 1,048,576-row groups"); a huge row group still streams in chunks.
            chunks = (chunk for rg in range(pf.num_row_groups)
                      for chunk in pf.iter_batches(batch_size=META_SCAN_ROWS, columns=list(META_COLUMNS),
                                                   row_groups=[rg]))
            for chunk in chunks:
                t = _checked_rows(pa.Table.from_batches([chunk]), uri)
                agg = t.group_by("batch_id").aggregate([("event_id", "count"), ("event_id", "min"),
                                                        ("event_id", "max")])
                for b, n, lo, hi in zip(*(agg.column(c).to_pylist() for c in (
                        "batch_id", "event_id_count", "event_id_min", "event_id_max"))):
                    old = out.get(b)
                    out[b] = BatchSummary(b, n, lo, hi) if old is None else BatchSummary(
                        b, old.n_events + n, min(old.min_event_id, lo), max(old.max_event_id, hi))
    except FileNotFoundError as e:
        raise _no_meta(uri, data, split) from e
    return dict(sorted(out.items()))


def check_batch_files(data: str, split: str, summary: dict[int, BatchSummary]) -> list[int]:
    """Every batch the meta names has its pulse file (else a clear error); returns the batch files that
    the meta does not name, which are not read."""
    files = list_batches(data, split)
    missing = [b for b in summary if b not in files]
    if missing:
        b = missing[0]
        raise DataError(f"{batch_uri(data, split, b)}: pulse file for batch {b} not found "
                        f"({summary[b].n_events} events in {meta_uri(data, split)}; {len(missing)} of "
                        f"{len(summary)} batch files missing)")
    return [b for b in files if b not in summary]


def check_ids_across_batches(data: str, split: str, summary: dict[int, BatchSummary]) -> None:
    """No event id in two batches, without one process holding every id: only batches whose id ranges
    overlap (none, in the Kaggle files) are compared, pair by pair, reading their event ids."""
    by_min = sorted(summary.values(), key=lambda s: (s.min_event_id, s.batch_id))
    active: list[BatchSummary] = []
    ids: dict[int, np.ndarray] = {}

    def batch_ids(b: int) -> np.ndarray:
        if b not in ids:
            ids[b] = np.sort(load_batch_meta(data, split, b).column("event_id").to_numpy())
        return ids[b]

    for s in by_min:  # a sweep over the ranges: memory of the overlapping batches only
        active = [a for a in active if a.max_event_id >= s.min_event_id]
        for a in active:
            common = np.intersect1d(batch_ids(a.batch_id), batch_ids(s.batch_id), assume_unique=True)
            if len(common):
                raise DataError(f"{meta_uri(data, split)}: duplicate event_id {int(common[0])} in batch "
                                f"{a.batch_id} and batch {s.batch_id} ({len(common)} ids in both)")
        active.append(s)
        for b in [b for b in ids if b not in {a.batch_id for a in active}]:
            del ids[b]


def _checked_meta(t: pa.Table, uri: str) -> pa.Table:
    """Meta columns integer without nulls, event ids unique, 0 <= first <= last; sorted for reading."""
    t = _checked_rows(t, uri)
    ids = t.column("event_id").to_numpy()
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise DataError(f"{uri}: duplicate event_id {int(uniq[counts > 1][0])} "
                        f"({int((counts > 1).sum())} duplicated ids)")
    return t.sort_by([("batch_id", "ascending"), ("first_pulse_index", "ascending")])


def _checked_rows(t: pa.Table, uri: str) -> pa.Table:
    """The checks of each meta row on its own: integer columns (cast to int64) without nulls, 0 <= first <= last."""
    for c in META_COLUMNS:
        if not pa.types.is_integer(t.schema.field(c).type):
            raise DataError(f"{uri}: column {c} must be integer, found {t.schema.field(c).type}")
        if t.column(c).null_count:
            raise DataError(f"{uri}: column {c} has nulls")
        t = t.set_column(t.schema.get_field_index(c), c, t.column(c).cast(pa.int64()))
    ids = t.column("event_id").to_numpy()
    first = t.column("first_pulse_index").to_numpy()
    last = t.column("last_pulse_index").to_numpy()
    bad = np.flatnonzero((first < 0) | (last < first))
    if len(bad):
        f, lst = int(first[bad[0]]), int(last[bad[0]])
        why = ("0 pulses: the indices are inclusive and every event needs at least one pulse"
               if f >= 0 and lst == f - 1 else "need 0 <= first <= last")
        raise DataError(f"{uri}: event_id {int(ids[bad[0]])} has first_pulse_index {f} "
                        f"and last_pulse_index {lst} ({why})")
    return t


@dataclass(frozen=True)
class BatchSlice:
    """The unit of reading, one form from the planner to the worker: the meta rows [lo, hi) of one batch file's
    validated, sorted meta (counted from its row ``start``), whose pulses lie in the file's row groups
    [rg_start, rg_stop). With ``truth``, its events' true directions (checked at planning) come with it.
    ``run`` names the planning run, so that a worker's cached meta is never that of an earlier run. A slice is
    light (no per-event arrays): the worker fills them in from the batch's meta (:func:`slice_meta`)."""

    data: str
    split: str
    run: str
    batch_id: int
    start: int
    lo: int
    hi: int
    rg_start: int
    rg_stop: int
    truth: bool = False

    @property
    def uri(self) -> str:
        return batch_uri(self.data, self.split, self.batch_id)


_META_CACHE: dict[tuple[str, str, str, int, bool], pa.Table] = {}  # this process's last few batch metas
_META_CACHE_SIZE = 4


def batch_meta(run: str, data: str, split: str, batch_id: int, truth: bool = False) -> pa.Table:
    """A batch's validated, sorted meta (:func:`load_batch_meta`), read once per process and planning run
    (the last few cached)."""
    key = (run, data, split, batch_id, truth)
    if key not in _META_CACHE:
        while len(_META_CACHE) >= _META_CACHE_SIZE:
            _META_CACHE.pop(next(iter(_META_CACHE)))
        _META_CACHE[key] = load_batch_meta(data, split, batch_id, with_truth=truth)
    return _META_CACHE[key]


def forget_run(run: str) -> None:
    """Drop a planning run's cached metas (the driver's, once it has read what it needed from them)."""
    for key in [k for k in _META_CACHE if k[0] == run]:
        del _META_CACHE[key]


def plan_batch(data: str, split: str, run: str, batch: BatchSummary, events_per_slice: int, start: int = 0,
               stop: int | None = None, truth: bool = False) -> list[BatchSlice]:
    """The one planner: one batch's meta rows [start, stop) (to its end when ``stop`` is None) cut into slices
    of about ``events_per_slice`` events at row-group boundaries. Its meta is read and validated (duplicates
    within the batch, row count against the summary, true directions with ``truth``) and its pulse ranges
    checked against the file's footer; the events are not read."""
    meta = batch_meta(run, data, split, batch.batch_id, truth)
    if len(meta) != batch.n_events:
        raise DataError(f"{meta_uri(data, split)}: batch {batch.batch_id} has {len(meta)} meta rows, "
                        f"{batch.n_events} when the split was planned (the file changed during the run)")
    meta = meta.slice(start, (len(meta) if stop is None else stop) - start)
    if truth:  # invalid true directions fail here, at planning, before any training
        checked_truth(meta, meta_uri(data, split))
    uri = batch_uri(data, split, batch.batch_id)
    try:
        with storage.parquet_errors(uri, DataError), storage.open_input(uri) as f:
            md = pq.ParquetFile(f).metadata
    except FileNotFoundError as e:
        raise DataError(f"{uri}: pulse file for batch {batch.batch_id} not found") from e
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
    slices: list[BatchSlice] = []
    lo = 0
    while lo < len(ids):
        hi = min(len(ids), lo + events_per_slice)
        # Extend to the end of the row group the last event starts in, so slices cut at row groups.
        hi = int(np.searchsorted(rg_first, rg_first[hi - 1], side="right"))
        slices.append(BatchSlice(data, split, run, batch.batch_id, start, lo, hi, int(rg_first[lo]),
                                 int(rg_last[lo:hi].max()) + 1, truth))
        lo = hi
    return slices


def slice_meta(s: BatchSlice) -> pa.Table:
    """A slice's meta rows (with its true directions, for a slice with ``truth``), from the batch's cached meta."""
    return batch_meta(s.run, s.data, s.split, s.batch_id, s.truth).slice(s.start + s.lo, s.hi - s.lo)


def slice_truth(s: BatchSlice) -> dict[str, np.ndarray]:
    """A slice's true directions (checked at planning), or none for a slice without ``truth``."""
    if not s.truth:
        return {}
    meta = slice_meta(s)
    return {c: meta.column(c).to_numpy(zero_copy_only=False).astype(np.float64) for c in ("azimuth", "zenith")}


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


def read_slice(s: BatchSlice, n_sensors: int) -> pa.Table:
    """Read a slice's row groups and return one row per event with pulse list columns, validated against the
    slice's meta rows."""
    uri = s.uri
    meta = slice_meta(s)
    event_id, meta_first, meta_last = (meta.column(c).to_numpy()
                                       for c in ("event_id", "first_pulse_index", "last_pulse_index"))
    try:
        with storage.open_input(uri) as f:
            pf = pq.ParquetFile(f)
            _check_pulse_schema(uri, pf.schema_arrow)
            row0 = sum(pf.metadata.row_group(i).num_rows for i in range(s.rg_start))
            pulses = pf.read_row_groups(range(s.rg_start, s.rg_stop), columns=list(PULSE_TYPES))
    except FileNotFoundError as e:
        raise DataError(f"{uri}: pulse file for batch {s.batch_id} not found") from e
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{uri}: corrupt or truncated Parquet file: {e}") from e
    first = meta_first - row0
    last = meta_last - row0
    counts = last - first + 1
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    all_ids = pulses.column("event_id").to_numpy()
    if len(first) and (first.min() < 0 or last.max() >= len(all_ids)):
        raise DataError(f"{uri}: meta pulse ranges fall outside the rows read for batch {s.batch_id}")
    # Each meta range must hold its whole event: the rows just outside it belong to other events.
    for edge in (first - 1, last + 1):
        inside = (edge >= 0) & (edge < len(all_ids))
        bad = np.flatnonzero(inside & (all_ids[np.clip(edge, 0, max(len(all_ids) - 1, 0))] == event_id))
        if len(bad):
            k = int(bad[0])
            raise DataError(f"{uri}: meta range rows {int(meta_first[k])}..{int(meta_last[k])} of event_id "
                            f"{int(event_id[k])} does not cover all of its pulses")
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
    wrong = np.flatnonzero(event_of_row[starts] != event_id) if len(starts) else starts
    if len(wrong) or len(inner):
        i = int(starts[wrong[0]]) if len(wrong) else int(inner[0])
        k = int(np.searchsorted(offsets, i, side="right") - 1)
        raise DataError(f"{uri}: meta says pulse row {int(meta_first[k] + i - offsets[k])} belongs to "
                        f"event_id {int(event_id[k])}, but the file has event_id {int(event_of_row[i])} "
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
        "event_id": pa.array(event_id, pa.int64()),
        "batch_id": pa.array(np.full(len(counts), s.batch_id, dtype=np.int64)),
        **{c: pa.ListArray.from_arrays(list_off, cols[c].cast(PULSE_TYPES[c])) for c in PULSE_COLUMNS},
    })


def batch_ranges(summary: dict[int, BatchSummary], last_events: int | None = None) -> dict[int, tuple[int, int]]:
    """batch_id → the meta rows [start, stop) to read: every row of every batch, or only the split's last
    ``last_events`` events in file order (batch by batch, then by first pulse)."""
    if last_events is None:
        return {b: (0, s.n_events) for b, s in summary.items()}
    ranges: dict[int, tuple[int, int]] = {}
    remaining = last_events
    for b in reversed(list(summary.values())):
        if remaining <= 0:
            break
        take = min(b.n_events, remaining)
        ranges[b.batch_id] = (b.n_events - take, b.n_events)
        remaining -= take
    return dict(sorted(ranges.items()))


def holdout_ranges(summary: dict[int, BatchSummary], val_events: int,
                   uri: str) -> tuple[dict[int, tuple[int, int]], dict[int, tuple[int, int]]]:
    """The training rows and the validation slice of a train split, per batch: the last ``val_events`` events
    in file order are held out (whole batches at the end, and the tail of one batch where the count cuts it)."""
    total = sum(s.n_events for s in summary.values())
    if val_events >= total:
        raise DataError(f"{uri}: --val-events {val_events} leaves no training events ({total} in the split)")
    val = batch_ranges(summary, val_events)
    train = {b: (0, val[b][0] if b in val else s.n_events) for b, s in summary.items()}
    return {b: r for b, r in train.items() if r[1] > r[0]}, val


def last_batches_events(summary: dict[int, BatchSummary], n_batches: int, uri: str) -> int:
    """The events of the split's last ``n_batches`` batch files (``--val-batches``)."""
    if n_batches >= len(summary):
        raise DataError(f"{uri}: --val-batches {n_batches} leaves no training batch ({len(summary)} in the split)")
    return sum(s.n_events for s in list(summary.values())[-n_batches:])


def checked_truth(meta: pa.Table, uri: str) -> pa.Table:
    """(event_id, azimuth, zenith) of a train meta, refusing non-finite or out-of-range directions."""
    az = meta.column("azimuth").to_numpy(zero_copy_only=False).astype(np.float64)
    zen = meta.column("zenith").to_numpy(zero_copy_only=False).astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(az) | ~np.isfinite(zen) | (zen < 0) | (zen > np.pi))
    if len(bad):
        i = int(bad[0])
        raise DataError(f"{uri}: event_id {meta.column('event_id')[i].as_py()} has an invalid true direction "
                               f"(azimuth {az[i]!r}, zenith {zen[i]!r}); {len(bad)} such rows")
    return pa.table({"event_id": meta.column("event_id"), "azimuth": az, "zenith": zen})


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

