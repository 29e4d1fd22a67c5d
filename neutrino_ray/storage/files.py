"""The filesystem layer of :mod:`neutrino_ray.storage`: URIs (local paths, ``file://``, ``s3://``), the S3
client built from the standard AWS environment, reads and writes of single objects, and the mapping of every
storage failure to a one-line :class:`StorageError` naming the URI.

S3 endpoint and credentials come only from the standard AWS environment (``AWS_ENDPOINT_URL_S3`` /
``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``), so MinIO works
unchanged. Only URIs travel to Ray workers; each process builds its own filesystem from its own
environment, so no secret is ever pickled into a task.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from neutrino_ray.errors import InputError


class StorageError(RuntimeError):
    """An input or output URI could not be used; the message names the URI."""


def is_s3(uri: str) -> bool:
    return uri.startswith(("s3://", "s3a://"))


def _local_path(uri: str) -> str:
    if uri.startswith("file://"):
        return uri[len("file://"):]
    if "://" in uri:
        raise StorageError(f"{uri}: unsupported URI scheme (use a local path, file:// or s3://)")
    return uri


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a URI with '/'."""
    out = uri.rstrip("/")
    for p in parts:
        out = f"{out}/{p.strip('/')}"
    return out


def s3_endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def s3_region() -> str | None:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None


def s3_retries() -> int:
    """Attempts per S3 request (``NEUTRINO_RAY_S3_RETRIES``, default 8), with exponential backoff."""
    return int(os.environ.get("NEUTRINO_RAY_S3_RETRIES", "8"))


def s3_read_timeout() -> float:
    """Seconds to wait for an S3 response before retrying (``NEUTRINO_RAY_S3_READ_TIMEOUT``, default 60):
    a stalled server costs one timeout per attempt, never a hang."""
    return float(os.environ.get("NEUTRINO_RAY_S3_READ_TIMEOUT", "60"))


@lru_cache(maxsize=4)
def _s3fs(endpoint: str | None, region: str | None, retries: int, read_timeout: float) -> Any:
    import s3fs

    client_kwargs: dict[str, Any] = {}
    if endpoint:
        client_kwargs["endpoint_url"] = endpoint
    if region:
        client_kwargs["region_name"] = region
    # botocore's standard retry mode backs off exponentially on throttling, transient 5xx errors, dropped
    # connections and timeouts. s3fs retries on top of it; one extra try there is kept for a response body
    # that breaks off mid-stream (which botocore does not retry), so a dead server costs at most
    # 2 x NEUTRINO_RAY_S3_RETRIES x the read timeout, not s3fs's default 5x that.
    config_kwargs = {"retries": {"max_attempts": retries, "mode": "standard"},
                     "connect_timeout": 10, "read_timeout": read_timeout}
    fs = s3fs.S3FileSystem(client_kwargs=client_kwargs, config_kwargs=config_kwargs,
                           use_listings_cache=False, skip_instance_cache=True)
    fs.retries = 2
    return fs


def s3() -> Any:
    """The process's S3 filesystem, built from this process's environment."""
    return _s3fs(s3_endpoint(), s3_region(), s3_retries(), s3_read_timeout())


def arrow_filesystem(uri: str) -> tuple[Any, str]:
    """(pyarrow filesystem, path) for libraries that take one, such as Ray Train's checkpoint storage.

    S3 endpoint, region and retries come from this process's environment as for :func:`s3`; the
    filesystem carries no credentials, so pickling it to other processes ships no secret (each
    resolves its own from its environment).
    """
    import pyarrow.fs as pafs

    if is_s3(uri):
        region = s3_region()
        retries = pafs.AwsStandardS3RetryStrategy(max_attempts=s3_retries())
        kwargs: dict[str, Any] = {"retry_strategy": retries, "connect_timeout": 10,
                                  "request_timeout": s3_read_timeout()}
        if s3_endpoint():
            kwargs["endpoint_override"] = s3_endpoint()
        if region:
            kwargs["region"] = region
        return pafs.S3FileSystem(**kwargs), _s3_key(uri).rstrip("/")
    return pafs.LocalFileSystem(), os.path.abspath(_local_path(uri)).rstrip("/")


def polars_storage_options(uri: str) -> dict[str, str] | None:
    """``storage_options`` for ``polars.scan_parquet`` (object_store) from the same AWS environment as
    :func:`s3`: endpoint, region, plain HTTP for a local MinIO/moto endpoint, and the credentials of this
    process's environment (built where the scan runs; never stored). None for local paths."""
    if not is_s3(uri):
        return None
    opts = {"aws_region": s3_region() or "us-east-1"}
    endpoint = s3_endpoint()
    if endpoint:
        opts["aws_endpoint_url"] = endpoint
        if endpoint.startswith("http://"):
            opts["aws_allow_http"] = "true"
    for env, key in (("AWS_ACCESS_KEY_ID", "aws_access_key_id"), ("AWS_SECRET_ACCESS_KEY", "aws_secret_access_key"),
                     ("AWS_SESSION_TOKEN", "aws_session_token")):
        if os.environ.get(env):
            opts[key] = os.environ[env]
    return opts


def _s3_key(uri: str) -> str:
    return uri.split("://", 1)[1]


@contextmanager
def _errors(uri: str, action: str) -> Iterator[None]:
    """Re-raise storage failures as StorageError naming the URI (never the credentials)."""
    try:
        yield
    except (StorageError, FileNotFoundError):
        raise
    except PermissionError as e:
        raise StorageError(f"{uri}: permission denied while trying to {action} ({e})") from e
    except OSError as e:
        raise StorageError(f"{uri}: cannot {action}: {e}") from e
    except Exception as e:  # botocore/aiohttp errors that s3fs does not translate
        name = type(e).__name__
        known = {"ClientError", "NoCredentialsError", "EndpointConnectionError", "ClientConnectorError",
                 "ConnectTimeoutError", "ReadTimeoutError", "ServerDisconnectedError"}
        if any(c.__name__ in known for c in type(e).__mro__):  # botocore's modelled errors (AccessDenied, ...) too
            raise StorageError(f"{uri}: cannot {action}: {name}: {e}") from e
        raise


def exists(uri: str) -> bool:
    if is_s3(uri):
        with _errors(uri, "check existence"):
            return bool(s3().exists(_s3_key(uri)))
    return os.path.exists(_local_path(uri))


def require(uri: str, what: str = "input") -> None:
    """Fail early, naming the URI, when an input does not exist."""
    if not exists(uri):
        raise StorageError(f"{uri}: {what} not found")


def listdir(uri: str) -> list[str]:
    """Full URIs of the entries directly under ``uri`` (sorted)."""
    if is_s3(uri):
        with _errors(uri, "list"):
            scheme = uri.split("://", 1)[0]
            return sorted(f"{scheme}://{p}" for p in s3().ls(_s3_key(uri), detail=False, refresh=True))
    path = _local_path(uri)
    if not os.path.isdir(path):
        return []
    prefix = "file://" if uri.startswith("file://") else ""
    return sorted(prefix + os.path.join(path, n) for n in os.listdir(path))


def versions(uri: str) -> list[tuple[str, int, str]]:
    """(path relative to ``uri``, size, version) of the object at ``uri`` or of every object under it, sorted:
    the version is the ETag on S3 (a content hash for plain uploads) and the modification time in ns locally.
    One listing, no reads: what a fingerprint of inputs needs to tell a changed file from the same one."""
    if is_s3(uri):
        with _errors(uri, "list"):
            key = _s3_key(uri).rstrip("/")
            found = s3().find(key, detail=True, withdirs=False)
            return sorted((k[len(key):].lstrip("/"), int(d.get("size") or 0),
                           str(d.get("ETag") or d.get("LastModified"))) for k, d in found.items()
                          if d.get("type") != "directory")
    path = _local_path(uri)
    if os.path.isfile(path):
        st = os.stat(path)
        return [("", st.st_size, str(st.st_mtime_ns))]
    out = []
    for root, _, names in os.walk(path):
        for n in names:
            full = os.path.join(root, n)
            st = os.stat(full)
            out.append((os.path.relpath(full, path), st.st_size, str(st.st_mtime_ns)))
    return sorted(out)


@contextmanager
def open_input(uri: str, random_access: bool = False) -> Iterator[IO[bytes]]:
    """A seekable binary file object for reading.

    On S3, sequential readers get 8 MiB read-ahead; ``random_access`` readers (HDF5 slices, which
    seek between a file's index and its data chunks) get an LRU cache of 1 MiB blocks instead.
    """
    if is_s3(uri):
        with _errors(uri, "read"):
            try:  # opening fetches the object's metadata: one request, no separate existence check
                f = s3().open(_s3_key(uri), "rb", block_size=2**20 if random_access else 8 * 2**20,
                              cache_type="blockcache" if random_access else "readahead")
            except FileNotFoundError as e:
                raise FileNotFoundError(f"{uri}: not found") from e
        try:
            yield f
        finally:
            f.close()
    else:
        path = _local_path(uri)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{uri}: not found")
        with open(path, "rb") as f:
            yield f


def read_bytes(uri: str) -> bytes:
    with open_input(uri) as f, _errors(uri, "read"):
        return f.read()


def read_format_json(uri: str, fmt: str, what: str) -> dict[str, Any] | None:
    """A JSON file beside an artefact that names its format (``{"format": fmt, …}``): its contents, or None
    where there is none; a one-line InputError for a file that is not JSON or of another format."""
    try:
        doc = json.loads(read_bytes(uri))
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as e:
        raise InputError(f"{uri}: not {what} ({e})") from e
    if not isinstance(doc, dict) or doc.get("format") != fmt:
        got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise InputError(f"{uri}: a {got!r} file, expected {fmt!r}")
    return doc


@contextmanager
def parquet_errors(uri: str, error: type[Exception] = StorageError,
                   kinds: tuple[type[Exception], ...] = (pa.ArrowInvalid, OSError)) -> Iterator[None]:
    """The one mapping of a file pyarrow cannot parse (not Parquet, truncated, corrupt) to a one-line ``error``
    naming ``uri``. A missing file stays FileNotFoundError, for the caller to say what is missing."""
    try:
        yield
    except FileNotFoundError:
        raise
    except kinds as e:
        raise error(f"{uri}: not a readable Parquet file: {e}") from e


def read_parquet(uri: str, columns: list[str] | None = None) -> pa.Table:
    """Read a Parquet file (only ``columns`` when given, all of which must exist).

    A corrupt or truncated file raises StorageError naming it; missing columns raise KeyError.
    """
    with open_input(uri) as f, parquet_errors(uri):
        pf = pq.ParquetFile(f)
        if columns is not None:
            missing = [c for c in columns if c not in pf.schema_arrow.names]
            if missing:
                raise KeyError(f"{uri}: missing columns {missing} (has {pf.schema_arrow.names})")
        return pf.read(columns=columns)


def read_parquet_range(uri: str, key: str, lo: int, hi: int, columns: list[str]) -> pa.Table:
    """The rows of a Parquet file with ``lo <= key <= hi``: row groups whose statistics exclude the range are
    never read (predicate pushdown), so a slice at the end of a big file costs its row groups, not the file.
    Missing columns raise KeyError; a corrupt file StorageError naming it."""
    import pyarrow.dataset as pads

    fs, path = arrow_filesystem(uri)
    with _errors(uri, "read"):
        try:
            with parquet_errors(uri, kinds=(pa.ArrowInvalid,)):
                ds = pads.dataset(path, format="parquet", filesystem=fs)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{uri}: not found") from e
        missing = [c for c in columns if c not in ds.schema.names]
        if missing:
            raise KeyError(f"{uri}: missing columns {missing} (has {ds.schema.names})")
        field = pads.field(key)
        with parquet_errors(uri, kinds=(pa.ArrowInvalid,)):
            return ds.to_table(columns=columns, filter=(field >= lo) & (field <= hi))


def read_parquet_metadata(uri: str) -> pq.FileMetaData:
    """A Parquet file's footer only (row count, schema and its key-value metadata): one small read."""
    with open_input(uri) as f, parquet_errors(uri):
        return pq.read_metadata(f)


def read_csv(uri: str) -> pa.Table:
    with open_input(uri) as f:
        try:
            return pacsv.read_csv(f)
        except pa.ArrowInvalid as e:
            raise StorageError(f"{uri}: not a readable CSV file: {e}") from e


def write_bytes(uri: str, data: bytes, content_type: str | None = None) -> None:
    """Write one object; locally via a temporary file and rename so it is never seen half-written. On S3,
    ``content_type`` sets the object's Content-Type (kept by the server-side copy that publishes it)."""
    if is_s3(uri):
        with _errors(uri, "write"):
            s3().pipe_file(_s3_key(uri), data, **({"ContentType": content_type} if content_type else {}))
        return
    path = Path(_local_path(uri))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def open_output(uri: str) -> Iterator[IO[bytes]]:
    """A binary file object to stream one object into (bounded memory): on S3 a multipart upload, locally
    a temporary file renamed into place on success, so the object is never seen half-written."""
    if is_s3(uri):
        with _errors(uri, "write"), s3().open(_s3_key(uri), "wb", block_size=16 * 2**20) as f:
            yield f
        return
    path = Path(_local_path(uri))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            yield f
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def csv_header(table: pa.Table) -> bytes:
    """The header line of :func:`csv_bytes`."""
    if any(c in name for name in table.column_names for c in ',"\n'):
        raise ValueError(f"column names must not need quoting: {table.column_names}")
    return (",".join(table.column_names) + "\n").encode()


def csv_rows(table: pa.Table, f: IO[bytes]) -> None:
    """The rows of :func:`csv_bytes`, written to ``f`` (parts of one CSV, streamed)."""
    pacsv.write_csv(table, f, write_options=pacsv.WriteOptions(include_header=False, quoting_style="none"))


def parquet_bytes(table: pa.Table, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, **kwargs)
    return buf.getvalue()


def csv_bytes(table: pa.Table) -> bytes:
    """Plain CSV as pandas writes it: unquoted header and values, full float precision."""
    buf = io.BytesIO()
    buf.write(csv_header(table))
    csv_rows(table, buf)
    return buf.getvalue()


def remove(uri: str, recursive: bool = False) -> None:
    if is_s3(uri):
        with _errors(uri, "delete"):
            if s3().exists(_s3_key(uri)):
                s3().rm(_s3_key(uri), recursive=recursive)
        return
    path = _local_path(uri)
    if os.path.isdir(path) and recursive:
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.exists(path):
        os.remove(path)


def _move(src: str, dst: str) -> None:
    if is_s3(src):
        with _errors(dst, "publish"):
            s3().copy(_s3_key(src), _s3_key(dst))
        return
    d = Path(_local_path(dst))
    d.parent.mkdir(parents=True, exist_ok=True)
    os.replace(_local_path(src), d)
