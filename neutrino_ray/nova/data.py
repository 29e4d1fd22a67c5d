"""Reading NOvA course-layout HDF5 files (see :mod:`~neutrino_ray.nova.format`) from any URI, in event slices.

A DATA argument is one ``.h5``/``.hdf5`` file or a folder/prefix holding them (natural order:
``neutrino2.h5`` before ``neutrino10.h5``). Planning reads each file's header and its ``neutrino/*``
fields (small: 16 numbers per event) on the driver, validating the layout so an error names the file.
Reading is a Ray Data datasource with one read task per *slice* (a sorted set of rows of one file):
each task opens its file through the storage layer and reads only the rows its slice spans, so a big
file is never loaded whole into one task. A row of the resulting dataset is one event: ``file``,
``index`` (row in the file), the 16 fields, and ``cvnmap`` (16,000 uint8 pixels; :func:`images` turns
a batch into (N, 2, 100, 80) = (view, plane, cell) arrays).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import ray
from ray.data import Datasource, ReadTask
from ray.data.block import BlockMetadata

from neutrino_ray import storage
from neutrino_ray.errors import InputError
from neutrino_ray.nova import format as fmt

log = logging.getLogger("neutrino_ray")

EXTENSIONS = (".h5", ".hdf5")
DEFAULT_EVENTS_PER_TASK = 1_000  # 16 MB of pixels per read task
SCAN_THREADS = 16  # files whose headers and fields are read at once while planning (I/O bound)
KEYS = ("file", "index")
CVNMAP_TYPE = pa.list_(pa.uint8(), fmt.PIXELS)


class DataError(InputError):
    """Bad NOvA input; the message names the file, the event row and the problem."""


def _natural_key(uri: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", uri)]


def list_files(data: str) -> list[str]:
    """The HDF5 files a DATA URI names: the file itself, or every .h5/.hdf5 directly under the folder."""
    if data.lower().endswith(EXTENSIONS):
        storage.require(data, "input file")
        return [data]
    files = [u for u in storage.listdir(data) if u.lower().endswith(EXTENSIONS)]
    if not files:
        raise DataError(f"{data}: no HDF5 files ({', '.join(EXTENSIONS)}) found")
    return sorted(files, key=_natural_key)


def file_name(uri: str) -> str:
    return os.path.basename(uri.rstrip("/"))


@dataclass
class FileMeta:
    """One validated file: its URI, name and the 16 fields (1-D, the layout's dtypes)."""

    uri: str
    name: str
    fields: dict[str, np.ndarray]

    @property
    def n_events(self) -> int:
        return len(self.fields["evt"])


def _check_layout(h: Any, uri: str) -> int:
    """Validate one open file's layout; returns its number of events."""
    import h5py

    if fmt.IMAGE not in h or not isinstance(h[fmt.IMAGE], h5py.Dataset):
        raise DataError(f"{uri}: no '{fmt.IMAGE}' dataset (has {sorted(h.keys())}); not a NOvA pixel-map file")
    cvn = h[fmt.IMAGE]
    if cvn.ndim != 2 or cvn.shape[1] != fmt.PIXELS:
        raise DataError(f"{uri}: '{fmt.IMAGE}' has shape {cvn.shape}; expected (N, {fmt.PIXELS}) = "
                        f"(N, {fmt.VIEWS} views x {fmt.PLANES} planes x {fmt.CELLS} cells)")
    if cvn.dtype != np.uint8:
        raise DataError(f"{uri}: '{fmt.IMAGE}' has dtype {cvn.dtype}; expected uint8")
    n = int(cvn.shape[0])
    if fmt.GROUP not in h or not isinstance(h[fmt.GROUP], h5py.Group):
        raise DataError(f"{uri}: no '{fmt.GROUP}' group with the event fields")
    g = h[fmt.GROUP]
    missing = [f for f in fmt.FIELDS if f not in g]
    if missing:
        raise DataError(f"{uri}: '{fmt.GROUP}' lacks fields {missing}")
    for name, dtype in fmt.FIELDS.items():
        d = g[name]
        if not isinstance(d, h5py.Dataset):
            raise DataError(f"{uri}: '{fmt.GROUP}/{name}' is a {type(d).__name__}, not a dataset")
        if d.shape not in ((n, 1), (n,)):
            raise DataError(f"{uri}: '{fmt.GROUP}/{name}' has shape {d.shape} but '{fmt.IMAGE}' has {n} events; "
                            f"expected ({n}, 1)")
        if d.dtype.kind not in "iuf" or (dtype.kind in "iu" and d.dtype.kind == "f"):
            raise DataError(f"{uri}: '{fmt.GROUP}/{name}' has dtype {d.dtype}; expected {dtype}")
    return n


def _read_fields(g: Any, sel: slice) -> dict[str, np.ndarray]:
    return {name: np.asarray(g[name][sel]).reshape(-1).astype(dtype, copy=False)
            for name, dtype in fmt.FIELDS.items()}


def read_file_meta(uri: str) -> FileMeta:
    """Open one file, validate its layout and read its 16 fields; errors name the file."""
    import h5py

    with storage.open_input(uri, random_access=True) as f:
        try:
            with h5py.File(f, "r") as h:
                n = _check_layout(h, uri)
                fields = _read_fields(h[fmt.GROUP], slice(0, n))
        except DataError:
            raise
        except (OSError, KeyError, ValueError) as e:  # truncated or not HDF5 at all
            raise DataError(f"{uri}: not a readable HDF5 file ({type(e).__name__}: {e})") from e
    return FileMeta(uri, file_name(uri), fields)


@dataclass
class Scan:
    files: list[FileMeta]
    skipped: list[tuple[str, str]]  # (uri, reason) of bad files skipped with skip_bad

    @property
    def n_events(self) -> int:
        return sum(m.n_events for m in self.files)


def scan(data: str, skip_bad: bool = False) -> Scan:
    """Validate every file under DATA and read their fields; bad files raise, or are skipped and counted."""
    uris = list_files(data)

    def one(uri: str) -> FileMeta | tuple[str, str]:
        try:
            return read_file_meta(uri)
        except (DataError, storage.StorageError) as e:
            if not skip_bad:
                raise
            return uri, str(e)

    with ThreadPoolExecutor(min(SCAN_THREADS, len(uris))) as pool:
        results = list(pool.map(one, uris))
    files = [r for r in results if isinstance(r, FileMeta)]
    skipped = [r for r in results if isinstance(r, tuple)]
    names = [m.name for m in files]
    if len(set(names)) != len(names):
        raise DataError(f"{data}: file names must be unique (they key the events): {names}")
    for _, reason in skipped:
        log.warning("skipping bad file (--skip-bad): %s", reason)
    if skipped:
        log.warning("%s: skipped %d of %d files (--skip-bad)", data, len(skipped), len(uris))
    if not files or sum(m.n_events for m in files) == 0:
        raise DataError(f"{data}: no events to read ({len(uris)} files, {len(skipped)} skipped as bad)")
    return Scan(files, skipped)


@dataclass(frozen=True)
class Slice:
    """Rows of one file read by one task: sorted row numbers (the task reads rows[0]..rows[-1])."""

    uri: str
    name: str
    rows: np.ndarray

    @property
    def start(self) -> int:
        return int(self.rows[0])

    @property
    def stop(self) -> int:
        return int(self.rows[-1]) + 1


def plan_slices(files: list[FileMeta], selected: list[np.ndarray] | None, events_per_task: int) -> list[Slice]:
    """Cut each file's selected rows (all rows when ``selected`` is None) into slices of ``events_per_task``."""
    out = []
    for i, m in enumerate(files):
        rows = np.arange(m.n_events, dtype=np.int64) if selected is None else np.sort(selected[i]).astype(np.int64)
        for lo in range(0, len(rows), events_per_task):  # slices, not events
            out.append(Slice(m.uri, m.name, rows[lo:lo + events_per_task]))
    return out


def read_slice(s: Slice, images: bool = True) -> pa.Table:
    """One slice → an Arrow table of its events (keys, fields[, cvnmap]); errors name the file and rows."""
    import h5py

    with storage.open_input(s.uri, random_access=True) as f:
        try:
            with h5py.File(f, "r") as h:
                n = _check_layout(h, s.uri)
                if s.stop > n:
                    raise DataError(f"{s.uri}: rows {s.start}..{s.stop - 1} requested but the file now holds {n} "
                                    f"events (changed since planning?)")
                fields = _read_fields(h[fmt.GROUP], slice(s.start, s.stop))
                pixels = np.asarray(h[fmt.IMAGE][s.start:s.stop]) if images else None
                if not np.array_equal(s.rows, np.arange(s.start, s.stop)):  # selected rows (all rows: no copy)
                    take = s.rows - s.start
                    fields = {k: v[take] for k, v in fields.items()}
                    pixels = pixels[take] if pixels is not None else None
        except DataError:
            raise
        except (OSError, KeyError, ValueError) as e:
            raise DataError(f"{s.uri}: cannot read event rows {s.start}..{s.stop - 1} "
                            f"({type(e).__name__}: {e})") from e
    cols: dict[str, Any] = {"file": pa.array([s.name] * len(s.rows), pa.string()),
                            "index": pa.array(s.rows, pa.int64())}
    cols.update({k: pa.array(v) for k, v in fields.items()})
    if pixels is not None:
        cols[fmt.IMAGE] = pa.FixedSizeListArray.from_arrays(pa.array(pixels.reshape(-1), pa.uint8()), fmt.PIXELS)
    return pa.table(cols)


def images(batch: pa.Table) -> np.ndarray:
    """A batch's pixel maps as (N, 2, 100, 80) uint8 = (view, plane, cell); view 0 is x–z, view 1 y–z."""
    col = batch.column(fmt.IMAGE)
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    return arr.flatten().to_numpy().reshape(len(batch), fmt.VIEWS, fmt.PLANES, fmt.CELLS)


class NovaDatasource(Datasource):
    """Ray Data datasource: one read task per planned slice (Ray 2.60 has no HDF5 reader)."""

    def __init__(self, slices: list[Slice], images: bool = True):
        self.slices = slices
        self.images = images

    def estimate_inmemory_data_size(self) -> int | None:
        per_event = (fmt.PIXELS if self.images else 0) + 80
        return sum(len(s.rows) for s in self.slices) * per_event

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context: Any = None) -> list[ReadTask]:
        tasks = []
        for s in self.slices:
            meta = BlockMetadata(num_rows=len(s.rows), size_bytes=len(s.rows) * (fmt.PIXELS + 80),
                                 input_files=(s.uri,), exec_stats=None)

            def read(s: Slice = s, images: bool = self.images) -> Iterable[pa.Table]:
                return [read_slice(s, images)]

            tasks.append(ReadTask(read, meta))
        return tasks

    def get_name(self) -> str:
        return "NovaHDF5"


def dataset(slices: list[Slice], num_cpus: float = 1.0, images: bool = True) -> ray.data.Dataset:
    """Lazy Ray Data dataset of the slices' events, one block per slice."""
    return ray.data.read_datasource(NovaDatasource(slices, images), num_cpus=num_cpus,
                                    override_num_blocks=max(1, len(slices)))


def iter_events(data: str, events_per_task: int = DEFAULT_EVENTS_PER_TASK) -> Iterator[pa.Table]:
    """Every event under DATA in order, one slice at a time, without Ray (small data, tests, notebooks)."""
    for s in plan_slices(scan(data).files, None, events_per_task):
        yield read_slice(s)


def file_numbers(names: pa.Array | pa.ChunkedArray, scan: Scan) -> np.ndarray:
    """Each row's file as its position in the scan (-1 for a name the scan does not have), vectorised."""
    import pyarrow.compute as pc

    known = pa.array([m.name for m in scan.files], pa.string())
    return pc.fill_null(pc.index_in(names, value_set=known), -1).to_numpy().astype(np.int64)


def slice_tables(slices: list[Slice]) -> list[pa.Table]:
    """One single-row table (→ one Ray Data block) per slice, for workers that read their slices themselves."""
    return [pa.table({"uri": [s.uri], "name": [s.name], "rows": pa.array([s.rows], pa.list_(pa.int64()))})
            for s in slices]


def slices_from_table(batch: pa.Table) -> list[Slice]:
    return [Slice(r["uri"], r["name"], np.asarray(r["rows"], np.int64)) for r in batch.to_pylist()]
