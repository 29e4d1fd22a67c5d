"""Shared fixtures: an S3 (moto) server on 127.0.0.1 and one local Ray for in-process tests.

The S3 endpoint and test credentials are put in the environment before anything starts Ray, so local
Ray workers inherit them exactly as cluster workers would read them from their pods.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def one_line_error(code: int, err: str) -> str:
    """The CLI's contract for bad input: exit code 2 and one error line on stderr, no traceback; the line."""
    lines = [line for line in err.splitlines() if line.startswith("neutrino-ray: error: ")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


S3_PORT = free_port()
S3_ENDPOINT = f"http://127.0.0.1:{S3_PORT}"
# The S3 secret of every test is a canary, fresh each session: tests grep logs, outputs, job metadata and
# pickled Ray payloads for it (moto accepts any secret).
CANARY = f"nr-canary-{secrets.token_hex(12)}"
os.environ.update({
    "AWS_ENDPOINT_URL": S3_ENDPOINT, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": CANARY,
    "AWS_REGION": "us-east-1", "NEUTRINO_RAY_S3_RETRIES": "3",
    # In-process CLI calls leave fd 2 to pytest's capture (tests of the filter itself set it to 1).
    "NEUTRINO_RAY_FILTER_STDERR": "0",
    # Every Ray process of the tests (local Ray, multi-node test clusters, job drivers) on 127.0.0.1
    # instead of this machine's outward address: tests talk only to loopback.
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
})
for var in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN", "RAY_ADDRESS"):
    os.environ.pop(var, None)


# ----------------------------------------------------------------------------------------------
# Unit tests and integration tests. `make test-fast` runs `-m "not integration"` with NEUTRINO_RAY_UNIT_ONLY=1:
# a test is an integration test when it lives in one of these modules, uses the S3 server (directly or through
# `bucket`), or is marked @pytest.mark.integration (tests that start Ray in-process, directly or through a
# fixture, or run the CLI in a subprocess). In unit-only mode starting Ray fails the test with a message saying
# to mark it, so the split cannot drift.
INTEGRATION_MODULES = {"test_e2e_job_submit", "test_faults", "test_s3_faults", "test_local_cluster"}
_current_test = ["(collection)"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        module = getattr(item, "module", None)
        if (module is not None and module.__name__ in INTEGRATION_MODULES) or "s3_server" in getattr(
                item, "fixturenames", ()):
            item.add_marker(pytest.mark.integration)


def pytest_configure(config: pytest.Config) -> None:
    if not os.environ.get("NEUTRINO_RAY_UNIT_ONLY"):
        return
    from neutrino_ray import runtime

    def refuse(*args: object, **kwargs: object) -> dict[str, object]:
        raise AssertionError(f"{_current_test[0]} starts Ray: mark it @pytest.mark.integration (see tests/conftest.py)")

    runtime.init_ray = refuse  # type: ignore[assignment]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    _current_test[0] = item.nodeid


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 for the whole session; yields its endpoint URL."""
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(S3_PORT)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(S3_ENDPOINT, timeout=1)
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("moto S3 server did not start within 30 s")
            time.sleep(0.2)
    yield S3_ENDPOINT
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def bucket(s3_server: str, request: pytest.FixtureRequest) -> str:
    """A fresh bucket per test; yields 's3://name'."""
    import boto3

    name = "nr-" + re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:40].strip("-") + f"-{os.getpid()}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture(scope="session", autouse=True)
def _local_ray() -> Iterator[None]:
    """Tests that call Ray share one local instance (started lazily by neutrino_ray.runtime)."""
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()
