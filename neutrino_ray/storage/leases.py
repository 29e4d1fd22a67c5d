"""One writer per output, the part of :mod:`neutrino_ray.storage` that guards :class:`~.publish.Output`: a
lease object ``OUT/_LEASE.json`` with a heartbeat, created and renewed by compare-and-swap (``flock``
locally, conditional writes on S3), taken over when stale, re-entrant within a process (:func:`lease`).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from neutrino_ray.storage.files import (
    StorageError,
    _errors,
    _local_path,
    _s3_key,
    exists,
    is_s3,
    join,
    s3_endpoint,
    s3_read_timeout,
    s3_region,
    s3_retries,
)

log = logging.getLogger("neutrino_ray.storage")


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
