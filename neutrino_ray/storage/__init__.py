"""One storage layer for every input and output: local paths, ``file://`` and ``s3://`` URIs.

This package is the one API the rest of the project imports (``from neutrino_ray import storage``); its
modules each do one job:

- :mod:`.files`: URIs, the S3 client from the standard AWS environment, reads and writes of single objects,
  storage failures as one-line :class:`StorageError` naming the URI;
- :mod:`.publish`: atomic publication (:class:`Output`: files staged, moved into place only when everything
  succeeded, the ``_SUCCESS.json`` manifest last);
- :mod:`.leases`: one writer per output (:class:`Lease`, :func:`lease`).
"""

from __future__ import annotations

from neutrino_ray.storage.files import (
    StorageError,
    arrow_filesystem,
    csv_bytes,
    csv_header,
    csv_rows,
    exists,
    is_s3,
    join,
    listdir,
    open_input,
    open_output,
    parquet_bytes,
    parquet_errors,
    polars_storage_options,
    read_bytes,
    read_csv,
    read_format_json,
    read_parquet,
    read_parquet_metadata,
    read_parquet_range,
    remove,
    require,
    s3,
    s3_endpoint,
    s3_read_timeout,
    s3_region,
    s3_retries,
    versions,
    write_bytes,
)
from neutrino_ray.storage.leases import (
    LEASE,
    LEASE_FORMAT,
    Lease,
    LeaseHeld,
    lease,
    lease_heartbeat_seconds,
    lease_poll_seconds,
    lease_stale_seconds,
)
from neutrino_ray.storage.publish import (
    RESERVED_MANIFEST_KEYS,
    STAGING_PREFIX,
    SUCCESS,
    Output,
    code_version,
    read_manifest,
)

__all__ = [
    "LEASE", "LEASE_FORMAT", "RESERVED_MANIFEST_KEYS", "STAGING_PREFIX", "SUCCESS", "Lease", "LeaseHeld", "Output",
    "StorageError", "arrow_filesystem", "code_version", "csv_bytes", "csv_header", "csv_rows", "exists", "is_s3",
    "join", "lease", "lease_heartbeat_seconds", "lease_poll_seconds", "lease_stale_seconds", "listdir",
    "open_input", "open_output", "parquet_bytes", "parquet_errors", "polars_storage_options", "read_bytes", "read_csv",
    "read_format_json", "read_manifest", "read_parquet", "read_parquet_metadata", "read_parquet_range", "remove",
    "require", "s3", "s3_endpoint", "s3_read_timeout", "s3_region", "s3_retries", "versions", "write_bytes",
]
