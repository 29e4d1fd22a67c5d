"""Atomic publication, the part of :mod:`neutrino_ray.storage` every pipeline ends with: :class:`Output`
writes files under a staging prefix, moves them to their final keys only when everything succeeded (a
per-object rename locally, a server-side copy on S3 — a reader sees the old object or the new one, never a
partial one) and writes the ``_SUCCESS.json`` manifest last, under the output's lease
(:mod:`neutrino_ray.storage.leases`).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import neutrino_ray
from neutrino_ray.storage.files import StorageError, _move, exists, join, read_bytes, remove, write_bytes
from neutrino_ray.storage.leases import lease

SUCCESS = "_SUCCESS.json"
# The manifest keys Output.commit writes itself; a caller's manifest may not set them, and a republication
# (e.g. calibrate's) carries over every other key.
RESERVED_MANIFEST_KEYS = ("output", "files", "inputs", "command", "code_version", "wall_seconds", "finished_at")
STAGING_PREFIX = "_staging-"


def code_version() -> str:
    """Package version plus the git commit when run from a checkout."""
    here = Path(__file__).resolve().parents[2]  # the checkout holding neutrino_ray/
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
