"""One storage layer for every input and output: local paths, ``file://`` and ``s3://`` URIs.

S3 endpoint and credentials come only from the standard AWS environment (``AWS_ENDPOINT_URL_S3`` /
``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``), so MinIO works
unchanged. Only URIs travel to Ray workers; each process builds its own filesystem from its own
environment, so no secret is ever pickled into a task.

Outputs are published atomically with :class:`Output`: files are written under a staging prefix,
moved to their final keys only when everything succeeded (a per-object rename locally, a
server-side copy on S3 — a reader sees the old object or the new one, never a partial one), and a
``_SUCCESS.json`` manifest is written last.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

import neutrino_ray
from neutrino_ray.errors import InputError

log = logging.getLogger(__name__)

SUCCESS = "_SUCCESS.json"
# The manifest keys Output.commit writes itself; a caller's manifest may not set them, and a republication
# (e.g. calibrate's) carries over every other key.
RESERVED_MANIFEST_KEYS = ("output", "files", "inputs", "command", "code_version", "wall_seconds", "finished_at")
STAGING_PREFIX = "_staging-"


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


def read_parquet(uri: str, columns: list[str] | None = None) -> pa.Table:
    """Read a Parquet file (only ``columns`` when given, all of which must exist).

    A corrupt or truncated file raises StorageError naming it; missing columns raise KeyError.
    """
    with open_input(uri) as f:
        try:
            pf = pq.ParquetFile(f)
            if columns is not None:
                missing = [c for c in columns if c not in pf.schema_arrow.names]
                if missing:
                    raise KeyError(f"{uri}: missing columns {missing} (has {pf.schema_arrow.names})")
            return pf.read(columns=columns)
        except (pa.ArrowInvalid, OSError) as e:
            raise StorageError(f"{uri}: not a readable Parquet file: {e}") from e


def read_parquet_range(uri: str, key: str, lo: int, hi: int, columns: list[str]) -> pa.Table:
    """The rows of a Parquet file with ``lo <= key <= hi``: row groups whose statistics exclude the range are
    never read (predicate pushdown), so a slice at the end of a big file costs its row groups, not the file.
    Missing columns raise KeyError; a corrupt file StorageError naming it."""
    import pyarrow.dataset as pads

    fs, path = arrow_filesystem(uri)
    with _errors(uri, "read"):
        try:
            ds = pads.dataset(path, format="parquet", filesystem=fs)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{uri}: not found") from e
        except pa.ArrowInvalid as e:
            raise StorageError(f"{uri}: not a readable Parquet file: {e}") from e
        missing = [c for c in columns if c not in ds.schema.names]
        if missing:
            raise KeyError(f"{uri}: missing columns {missing} (has {ds.schema.names})")
        field = pads.field(key)
        try:
            return ds.to_table(columns=columns, filter=(field >= lo) & (field <= hi))
        except pa.ArrowInvalid as e:
            raise StorageError(f"{uri}: not a readable Parquet file: {e}") from e


def read_parquet_metadata(uri: str) -> pq.FileMetaData:
    """A Parquet file's footer only (row count, schema and its key-value metadata): one small read."""
    with open_input(uri) as f:
        try:
            return pq.read_metadata(f)
        except (pa.ArrowInvalid, OSError) as e:
            raise StorageError(f"{uri}: not a readable Parquet file: {e}") from e


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


def code_version() -> str:
    """Package version plus the git commit when run from a checkout."""
    here = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "-C", str(here), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return f"{neutrino_ray.__version__}+g{sha}{'.dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        return neutrino_ray.__version__


class Output:
    """An output folder published atomically.

    Writers (on the driver or on Ray workers) write to :meth:`staged` URIs; :meth:`commit` moves every
    staged file to its final key and then writes ``_SUCCESS.json``. The output's :class:`Lease` is held from
    ``__enter__`` (joining the caller's when it already holds it) until ``__exit__``, so one run at a time
    writes here; a run removes only its own staging folder, and those of a dead run whose lease it took. Any
    previous ``_SUCCESS.json`` is removed when the output is opened, so a reader never pairs an old manifest
    with new files.
    """

    def __init__(self, uri: str, *, command: list[str] | None = None, inputs: list[str] | None = None,
                 started: float | None = None):
        self.uri = uri.rstrip("/")
        self.staging = join(self.uri, f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}")
        self.command = command if command is not None else sys.argv
        self.inputs = inputs or []
        self.started = time.time() if started is None else started  # wall time counts from here
        self._files: list[str] = []
        self._previous: list[str] = []

    def __enter__(self) -> Output:
        self._lease_cm = lease(self.uri)  # joins the caller's lease on this output when it holds one
        self.lease = self._lease_cm.__enter__()
        try:
            self.lease.add_staging(self.staging)
        except BaseException:
            self._lease_cm.__exit__(*sys.exc_info())
            raise
        try:  # files of the previous publication, removed at commit if this one does not rewrite them
            self._previous = list(read_manifest(self.uri).get("files", []))
        except (FileNotFoundError, ValueError, StorageError):
            self._previous = []
        remove(join(self.uri, SUCCESS))
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            remove(self.staging, recursive=True)
            self.lease.drop_staging(self.staging)
        finally:
            self._lease_cm.__exit__(exc_type, exc, tb)

    def staged(self, relpath: str) -> str:
        """URI to write ``relpath`` to before commit; safe to call from any process."""
        if relpath not in self._files:
            self._files.append(relpath)
        return join(self.staging, relpath)

    def write(self, relpath: str, data: bytes, content_type: str | None = None) -> None:
        write_bytes(self.staged(relpath), data, content_type)

    def commit(self, **manifest: Any) -> dict[str, Any]:
        """Publish every staged file, then the manifest (row counts, inputs, command, timing)."""
        reserved = sorted(set(manifest) & set(RESERVED_MANIFEST_KEYS))
        if reserved:
            raise ValueError(f"manifest keys {reserved} are written by Output itself")
        for rel in self._files:
            src = join(self.staging, rel)
            if not exists(src):
                raise StorageError(f"{src}: staged output missing at commit; nothing was published")
        self.lease.check()  # still the one writer: a run whose lease was taken over publishes nothing
        for rel in self._files:
            _move(join(self.staging, rel), join(self.uri, rel))
        for rel in sorted(set(self._previous) - set(self._files)):
            remove(join(self.uri, rel))
        for leftover in self.lease.inherited_staging():  # of the dead or failed run whose lease this run took,
            if leftover.startswith(self.uri + "/"):      # now that its resume has reused what it could
                remove(leftover, recursive=True)
        wall = time.time() - self.started
        doc = {
            "output": self.uri,
            "files": sorted(self._files),
            "inputs": self.inputs,
            "command": self.command,
            "code_version": code_version(),
            "wall_seconds": round(wall, 3),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **manifest,
        }
        if "events" in manifest and wall > 0:
            doc.setdefault("events_per_second", round(manifest["events"] / wall, 1))
        write_bytes(join(self.uri, SUCCESS), json.dumps(doc, indent=2, default=str).encode())
        return doc


def read_manifest(uri: str) -> dict[str, Any]:
    return json.loads(read_bytes(join(uri, SUCCESS)))


# --- One writer per output: a lease -------------------------------------------------------------------------

LEASE = "_LEASE.json"
LEASE_FORMAT = "neutrino-ray lease v1"


def lease_stale_seconds() -> float:
    """A lease whose heartbeat is older than this is stale and may be taken over
    (``NEUTRINO_RAY_LEASE_STALE_MINUTES``, default 5)."""
    return 60.0 * float(os.environ.get("NEUTRINO_RAY_LEASE_STALE_MINUTES", "5"))


def lease_heartbeat_seconds() -> float:
    """How often a holder renews its lease: a tenth of the stale age, at most every 30 s."""
    return min(30.0, lease_stale_seconds() / 10)


def lease_poll_seconds() -> float:
    """How often ``--wait`` looks at a held lease again (``NEUTRINO_RAY_LEASE_POLL_SECONDS``, default 2)."""
    return float(os.environ.get("NEUTRINO_RAY_LEASE_POLL_SECONDS", "2"))


class LeaseHeld(StorageError):
    """Another run holds the output's lease; the message names it."""


def _pid_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), so a reused pid is not taken for its
    predecessor; None where /proc is unavailable."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _pid_alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return start is None or _pid_start(pid) in (None, start)


class _LocalLeaseStore:
    """The lease file on a local (or POSIX-shared) file system. Every read-modify-write happens under
    ``flock`` on the output folder itself, so it is a compare-and-swap among the processes of one host; the
    token is the file's bytes."""

    def __init__(self, uri: str):
        self.folder = Path(_local_path(uri))
        self.path = self.folder / LEASE
        self.created_folder = False  # the lease made OUT: remove it again at release when nothing was written

    @contextmanager
    def _locked(self) -> Iterator[None]:
        import fcntl

        for _ in range(100):  # the folder may be removed (empty) by a releasing run between mkdir and flock
            if not self.folder.exists():
                self.folder.mkdir(parents=True, exist_ok=True)
                self.created_folder = True
            try:
                fd = os.open(self.folder, os.O_RDONLY)
            except FileNotFoundError:
                continue
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.stat(self.folder).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            try:
                yield
            finally:
                os.close(fd)  # releases the lock
            return
        raise StorageError(f"{self.folder}: cannot lock the output folder")

    def _get(self) -> bytes | None:
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return None

    def _put(self, data: bytes) -> None:
        tmp = self.path.with_name(f".{LEASE}.{uuid.uuid4().hex}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, self.path)

    def read(self) -> tuple[bytes, str] | None:
        data = self._get()
        return None if data is None else (data, data.decode(errors="replace"))

    def create(self, data: bytes) -> str | None:
        with self._locked():
            if self._get() is not None:
                return None
            self._put(data)
            return data.decode()

    def replace(self, data: bytes, token: str) -> str | None:
        with self._locked():
            old = self._get()
            if old is None or old.decode(errors="replace") != token:
                return None
            self._put(data)
            return data.decode()

    def delete(self, token: str) -> bool:
        with self._locked():
            old = self._get()
            if old is None or old.decode(errors="replace") != token:
                return False
            self.path.unlink()
            if self.created_folder:
                try:
                    self.folder.rmdir()  # only when empty: a failed first run leaves no folder behind
                except OSError:
                    pass
            return True


class _S3LeaseStore:
    """The lease object on S3: created with ``If-None-Match: *``, renewed, taken over and released with
    ``If-Match`` on its ETag (S3's conditional writes, also in MinIO and moto >= 5.0.x). The token is the ETag.

    A store that ignores the conditions would let two runs both believe they hold the lease; each write is
    therefore read back, and a run that does not find its own run id there stops with an error. A store that
    rejects them (501 NotImplemented) fails the run with a one-line error saying so."""

    def __init__(self, uri: str):
        self.uri = join(uri, LEASE)
        self.bucket, _, self.key = _s3_key(self.uri).partition("/")

    @staticmethod
    @lru_cache(maxsize=4)
    def _client(endpoint: str | None, region: str | None, retries: int) -> Any:
        import botocore.config
        import botocore.session

        config = botocore.config.Config(retries={"max_attempts": retries, "mode": "standard"}, connect_timeout=10,
                                        read_timeout=s3_read_timeout())
        return botocore.session.get_session().create_client("s3", endpoint_url=endpoint, region_name=region,
                                                            config=config)

    def client(self) -> Any:
        return self._client(s3_endpoint(), s3_region(), s3_retries())

    def _call(self, action: str, fn: Any, **kwargs: Any) -> Any:
        """One request; returns None when a condition failed (412, or 409 for a concurrent conditional write)."""
        from botocore.exceptions import ClientError

        with _errors(self.uri, action):
            try:
                return fn(Bucket=self.bucket, Key=self.key, **kwargs)
            except ClientError as e:
                status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                code = e.response.get("Error", {}).get("Code", "")
                if status in (412, 409) or code in ("PreconditionFailed", "ConditionalRequestConflict"):
                    return None
                if status == 404 or code in ("NoSuchKey", "NotFound"):
                    raise FileNotFoundError(self.uri) from e
                if status == 501 or code == "NotImplemented":
                    raise StorageError(f"{self.uri}: this S3 store does not support conditional writes "
                                       f"(If-None-Match/If-Match), so a lease cannot guarantee one writer") from e
                raise

    def read(self) -> tuple[bytes, str] | None:
        try:
            r = self._call("read the lease", self.client().get_object)
        except FileNotFoundError:
            return None
        return r["Body"].read(), r["ETag"]

    def _verified(self, data: bytes, etag: str) -> str | None:
        got = self.read()
        if got is None or got[0] != data:  # a store that ignored the condition: someone else's write won
            raise StorageError(f"{self.uri}: the lease just written reads back differently; this S3 store does "
                               f"not honour conditional writes, so one writer per output cannot be guaranteed")
        return etag

    def create(self, data: bytes) -> str | None:
        r = self._call("create the lease", self.client().put_object, Body=data, IfNoneMatch="*")
        return None if r is None else self._verified(data, r["ETag"])

    def replace(self, data: bytes, token: str) -> str | None:
        r = self._call("renew the lease", self.client().put_object, Body=data, IfMatch=token)
        return None if r is None else self._verified(data, r["ETag"])

    def delete(self, token: str) -> bool:
        got = self.read()  # DeleteObject's If-Match is not universally supported: check, then delete
        if got is None or got[1] != token:
            return False
        self._call("release the lease", self.client().delete_object)
        return True


class Lease:
    """One writer per output: a lock object ``OUT/_LEASE.json`` naming the holder (host, pid, run id) with a
    heartbeat that a background thread renews.

    A second run finds it held and fails at once with a one-line :class:`LeaseHeld` naming the holder, or,
    with ``wait_minutes``, polls until the holder finishes (bounded). A lease is *stale*, and is taken over
    with a warning, when its heartbeat is older than :func:`lease_stale_seconds` (holder clocks are assumed
    NTP-synchronised to well within that), or at once when its holder ran on this host and its process is
    gone. A released lease whose run failed stays behind in state ``released`` only while it names staging
    folders kept for a resume (prediction parts); the run that takes it inherits them, and so does a run that
    takes over a stale lease: :meth:`inherited_staging`, which the new run removes only once it has published
    (after its resume reused what it could). A run removes no other staging folder.
    """

    def __init__(self, uri: str, wait_minutes: float | None = None):
        self.uri = uri.rstrip("/")
        self.wait_minutes = wait_minutes
        self.run_id = uuid.uuid4().hex[:12]
        self.store: _LocalLeaseStore | _S3LeaseStore = _S3LeaseStore(self.uri) if is_s3(self.uri) else \
            _LocalLeaseStore(self.uri)
        self.token: str | None = None
        self.staging: list[str] = []
        self.inherited: list[str] = []
        self.taken_over: dict[str, Any] | None = None
        self.lost: dict[str, Any] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = time.time()

    def _doc(self, state: str = "held") -> bytes:
        import socket

        return json.dumps({"format": LEASE_FORMAT, "state": state, "run_id": self.run_id,
                           "host": socket.gethostname(), "pid": os.getpid(), "pid_start": _pid_start(os.getpid()),
                           "command": sys.argv, "started": self._started, "heartbeat": time.time(),
                           "staging": self.staging}, indent=1).encode()

    @staticmethod
    def describe(doc: dict[str, Any]) -> str:
        age = time.time() - float(doc.get("heartbeat") or 0)
        return (f"run {doc.get('run_id')} (host {doc.get('host')}, pid {doc.get('pid')}, started "
                f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(float(doc.get('started') or 0)))}, "
                f"heartbeat {age:.0f} s ago)")

    @staticmethod
    def _parse(data: bytes) -> dict[str, Any]:
        try:
            doc = json.loads(data)
        except json.JSONDecodeError:
            doc = None
        return doc if isinstance(doc, dict) else {"state": "unreadable"}

    @staticmethod
    def stale_reason(doc: dict[str, Any]) -> str | None:
        """Why the lease ``doc`` may be taken, or None while its holder is alive."""
        import socket

        if doc.get("state") != "held":
            return f"released by {doc.get('run_id')}" if doc.get("state") == "released" else "an unreadable lease"
        age = time.time() - float(doc.get("heartbeat") or 0)
        if age > lease_stale_seconds():
            return f"its heartbeat is {age:.0f} s old (stale after {lease_stale_seconds():.0f} s)"
        if doc.get("host") == socket.gethostname() and isinstance(doc.get("pid"), int) and \
                not _pid_alive(doc["pid"], doc.get("pid_start")):
            return f"its process {doc['pid']} on this host is gone"
        return None

    def acquire(self) -> Lease:
        deadline = time.monotonic() + 60 * (self.wait_minutes or 0)
        waited = False
        while True:
            token = self.store.create(self._doc())
            if token is not None:
                self.token = token
                break
            got = self.store.read()
            if got is None:
                time.sleep(0.05)  # released between our create and read: try again
                continue
            data, token = got
            doc = self._parse(data)
            reason = self.stale_reason(doc)
            if reason is not None:
                with self._lock:
                    new = self.store.replace(self._doc(), token)
                if new is None:
                    continue  # someone else took it first: look again
                self.token = new
                self.inherited = [s for s in doc.get("staging", []) if isinstance(s, str)]
                if doc.get("state") == "held":
                    self.taken_over = doc
                    log.warning("%s: took over the lease of %s: %s", self.uri, self.describe(doc), reason)
                break
            if time.monotonic() >= deadline:
                hint = (f"waited {self.wait_minutes:g} min" if self.wait_minutes else
                        "wait for it with --wait [MINUTES]")
                raise LeaseHeld(f"{self.uri}: output in use by {self.describe(doc)}; {hint}, or it is taken over "
                                f"once its heartbeat is {lease_stale_seconds() / 60:g} min old")
            if not waited:
                log.info("%s: in use by %s; waiting up to %g min", self.uri, self.describe(doc), self.wait_minutes)
                waited = True
            time.sleep(min(lease_poll_seconds(), max(0.0, deadline - time.monotonic())))
        self._thread = threading.Thread(target=self._beat, name=f"lease {self.uri}", daemon=True)
        self._thread.start()
        return self

    def _renew(self, state: str = "held") -> None:
        with self._lock:
            if self.lost is not None or self.token is None:
                return
            new = self.store.replace(self._doc(state), self.token)
            if new is None:
                got = self.store.read()
                self.lost = self._parse(got[0]) if got else {"state": "deleted"}
                log.error("%s: lease lost to %s; this run will not publish", self.uri, self.describe(self.lost))
            else:
                self.token = new

    def _beat(self) -> None:
        while not self._stop.wait(lease_heartbeat_seconds()):
            try:
                self._renew()
            except Exception as e:  # a failed renewal is retried at the next beat; staleness is minutes away
                log.warning("%s: lease heartbeat failed: %s", self.uri, e)

    def add_staging(self, uri: str) -> None:
        """Record a staging folder this run writes, so that a run taking over a dead holder's lease can clean
        it up (after reusing it)."""
        if uri not in self.staging:
            self.staging.append(uri)
            self._renew()

    def drop_staging(self, uri: str) -> None:
        if uri in self.staging:
            self.staging.remove(uri)
            self._renew()

    def inherited_staging(self) -> list[str]:
        """Staging folders of the run this lease was taken from, except those this run uses itself."""
        return [s for s in self.inherited if s not in self.staging]

    def check(self) -> None:
        """Raise unless this run still holds the lease (called before publishing)."""
        self._renew()
        if self.lost is not None:
            raise StorageError(f"{self.uri}: lease lost to {self.describe(self.lost)}; nothing was published")

    def release(self) -> None:
        """Stop the heartbeat; delete the lease, or leave it ``released`` while it names staging kept for a
        resume."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        if self.lost is not None or self.token is None:
            return
        self.staging = [s for s in self.staging if exists(s)]
        with self._lock:
            if self.staging:
                new = self.store.replace(self._doc("released"), self.token)
                if new is None:
                    log.warning("%s: lease changed hands before release", self.uri)
            elif not self.store.delete(self.token):
                log.warning("%s: lease changed hands before release", self.uri)
            self.token = None


_HELD: dict[str, Lease] = {}
_HELD_LOCK = threading.Lock()


@contextmanager
def lease(uri: str, wait_minutes: float | None = None) -> Iterator[Lease]:
    """Hold the lease on output ``uri`` for the block (re-entrant within a process: an inner ``lease`` of
    the same URI, such as the one :class:`Output` takes, joins the outer one)."""
    key = uri.rstrip("/")
    outer = _HELD.get(key)
    if outer is not None:
        yield outer
        return
    held = Lease(key, wait_minutes).acquire()
    with _HELD_LOCK:
        _HELD[key] = held
    try:
        yield held
    finally:
        with _HELD_LOCK:
            _HELD.pop(key, None)
        held.release()
