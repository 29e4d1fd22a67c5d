"""Load KM3NeT feature tables from any URI: simulated HDF5 (``*.h5``), Parquet, or real offline ROOT files.

A DATA argument is one file or a folder/prefix holding such files; files are read in parallel as
Ray tasks (each worker opens its file through the storage layer), validated one by one so errors name
the file, and concatenated with a ``source`` column.
"""

from __future__ import annotations

import logging
import os
import tempfile

import pyarrow as pa
import ray

from neutrino_ray import runtime, storage
from neutrino_ray.errors import InputError
from neutrino_ray.km3net import features

log = logging.getLogger("neutrino_ray")

EXTENSIONS = (".h5", ".hdf5", ".parquet", ".root")


def list_inputs(uri: str) -> list[str]:
    """The feature files a DATA URI names (one file, or every supported file under a folder/prefix)."""
    if uri.lower().endswith(EXTENSIONS):
        storage.require(uri, "input file")
        return [uri]
    files = [u for u in storage.listdir(uri) if u.lower().endswith(EXTENSIONS)]
    if not files:
        raise InputError(f"{uri}: no feature files ({', '.join(EXTENSIONS)}) found")
    return files


def read_file(uri: str) -> pa.Table:
    """One file → its raw table (not yet validated), with a ``source`` column."""
    name = uri.lower()
    if name.endswith((".h5", ".hdf5")):
        from neutrino_ray.km3net.simulate import read_h5

        with storage.open_input(uri) as f:
            table = read_h5(f, uri)
    elif name.endswith(".parquet"):
        table = storage.read_parquet(uri)
    elif name.endswith(".root"):
        from neutrino_ray.km3net.real import read_offline

        if storage.is_s3(uri):  # ROOT readers want a local file
            with tempfile.NamedTemporaryFile(suffix=".root") as tmp:
                tmp.write(storage.read_bytes(uri))
                tmp.flush()
                table = read_offline(tmp.name, uri, require_truth=False)
        else:
            table = read_offline(uri.removeprefix("file://"), uri, require_truth=False)
    else:
        raise InputError(f"{uri}: unsupported file type (expected one of {EXTENSIONS})")
    return table.append_column(features.SOURCE, pa.array([os.path.basename(uri)] * len(table), pa.string()))


def read_validated(uri: str, need_truth: bool | None, skip_bad: bool) -> tuple[pa.Table, int]:
    """One file, validated; ``need_truth=None`` keeps truth columns only when the file has them all."""
    raw = read_file(uri)
    if need_truth is None:
        need_truth = all(c in raw.column_names for c in features.TRUTH)
    return features.validate(raw, uri, need_truth=need_truth, skip_bad=skip_bad)


_read_validated_task = ray.remote(read_validated)


def load_table(uri: str, need_truth: bool = True, skip_bad: bool = False) -> tuple[pa.Table, int]:
    """All events under ``uri``, validated; returns (table, rows skipped by ``skip_bad``)."""
    files = list_inputs(uri)
    if len(files) == 1:
        parts = [read_validated(files[0], need_truth, skip_bad)]
    else:
        runtime.init_ray()
        parts = ray.get([_read_validated_task.remote(f, need_truth, skip_bad) for f in files])
    table = pa.concat_tables([t for t, _ in parts])
    skipped = sum(n for _, n in parts)
    if skipped:
        log.warning("%s: skipped %d events with non-finite features (--skip-bad)", uri, skipped)
    if len(table) == 0:
        raise InputError(f"{uri}: no events")
    return table, skipped
