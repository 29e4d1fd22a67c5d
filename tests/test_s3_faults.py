"""S3 faults on the way to and from object storage: a fault-injecting proxy in front of moto.

The CLI runs as a subprocess with its own local Ray, with ``AWS_ENDPOINT_URL`` pointing at the proxy,
so the driver's reads (meta, geometry, footers), the workers' row-group reads and the publication all
go through it. Transient faults (throttling, 5xx, dropped connections, a stalled response) must be
retried with backoff and give the same submission as an undisturbed run; permanent ones (a missing
bucket, access denied, an endpoint that never recovers) must fail with the URI named, a non-zero exit
code and nothing published.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import numpy as np
import pytest
from kaggle import random_events, write_dataset
from s3proxy import Fault, FaultProxy

from neutrino_ray import storage


@pytest.fixture(scope="module")
def proxy(s3_server: str) -> Iterator[FaultProxy]:
    p = FaultProxy(s3_server)
    yield p
    p.close()


@pytest.fixture(scope="module")
def s3_data(s3_server: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """1,200 events in two batch files, uploaded to a bucket of their own; returns the dataset URI."""
    import boto3

    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket="nr-s3-faults-data")
    rng = np.random.default_rng(41)
    a = random_events(rng, 600)
    b = random_events(rng, 600, first_id=int(a["event_id"][-1]) + 1)
    local = write_dataset(tmp_path_factory.mktemp("s3faults") / "icecube", {1: a, 2: b})
    uri = "s3://nr-s3-faults-data/icecube"
    for path in local.rglob("*"):
        if path.is_file():
            storage.write_bytes(f"{uri}/{path.relative_to(local)}", path.read_bytes())
    return uri


def _cli(endpoint: str, *args: str, timeout: float = 300, **env: str) -> tuple[int, str, float]:
    """Run the CLI against ``endpoint``; (exit code, output, seconds)."""
    full_env = {**os.environ, "AWS_ENDPOINT_URL": endpoint, **env}
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "neutrino_ray.cli", *args], env=full_env, capture_output=True,
                          text=True, timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - start


def _predict(endpoint: str, data: str, out: str, **env: str) -> tuple[int, str, float]:
    return _cli(endpoint, "icecube", "predict", data, "--out", out, "--events-per-task", "150", **env)


@pytest.fixture(scope="module")
def clean_submission(s3_data: str) -> bytes:
    """The submission of an undisturbed run (in this process, straight to moto)."""
    from neutrino_ray.icecube.options import ScoringOptions
    from neutrino_ray.icecube.predict import predict

    predict(s3_data, "test", "s3://nr-s3-faults-data/clean", ScoringOptions(events_per_task=150))
    return storage.read_bytes("s3://nr-s3-faults-data/clean/submission.csv")


def test_transient_faults_and_a_stall_are_retried_and_change_nothing(proxy: FaultProxy, s3_data: str,
                                                                     clean_submission: bytes, bucket: str) -> None:
    proxy.set_faults(
        Fault("error", status=503, method="GET", path=r"/test/batch_\d\.parquet", every=3, times=6),  # SlowDown
        Fault("error", status=500, method="GET", path=r"test_meta\.parquet", times=2),  # InternalError
        Fault("drop", path=r"sensor_geometry\.csv", times=1),  # connection dropped, no answer
        Fault("delay", seconds=1.5, method="GET", path=r"batch_2\.parquet", times=2),  # slow responses
        Fault("delay", seconds=60, method="GET", path=r"batch_1\.parquet", every=2, times=1),  # a stall: timed out
        Fault("error", status=503, method="PUT", path=r"_staging-.*submission\.csv", times=2),  # publish throttled
        Fault("error", status=500, method="PUT", path=r"/pred/submission\.csv", times=1),  # the final copy
    )
    code, log, seconds = _predict(proxy.endpoint, s3_data, f"{bucket}/pred", NEUTRINO_RAY_S3_READ_TIMEOUT="3")
    assert code == 0, log[-3000:]
    assert seconds < 55  # the stalled request timed out after 3 s and was retried: no 60 s wait
    for f in proxy.faults:
        assert f.fired == f.times if f.every == 1 else f.fired > 0, f
    # Every faulted request was tried again and then got through.
    for r in proxy.requests(action="error") + proxy.requests(action="drop"):
        later = [q for q in proxy.requests(path=r.path.split("?")[0].replace(".", r"\.")) if q.at > r.at]
        assert any(q.action == "forwarded" and q.method == r.method for q in later), r
    assert storage.read_bytes(f"{bucket}/pred/submission.csv") == clean_submission
    assert storage.read_manifest(f"{bucket}/pred")["events"] == 1200


@pytest.mark.parametrize("case", ["missing bucket", "denied read", "denied write",
                                  pytest.param("never recovers", marks=pytest.mark.slow)])
def test_permanent_errors_name_the_uri_and_publish_nothing(proxy: FaultProxy, s3_data: str, bucket: str,
                                                           case: str) -> None:
    data, out = s3_data, f"{bucket}/pred"
    if case == "missing bucket":
        proxy.set_faults()
        data, named = "s3://nr-no-such-bucket/icecube", "s3://nr-no-such-bucket/icecube/test_meta.parquet"
    elif case == "denied read":
        proxy.set_faults(Fault("error", status=403, path=r"batch_2\.parquet", times=None))
        named = f"{s3_data}/test/batch_2.parquet"
    elif case == "denied write":
        proxy.set_faults(Fault("error", status=403, method="PUT", path="/pred/", times=None))
        named = f"{out}/_LEASE.json"  # the run's first write under OUT is its lease
    else:
        proxy.set_faults(Fault("error", status=503, method="GET", path=r"batch_1\.parquet", times=None))
        named = f"{s3_data}/test/batch_1.parquet"
    code, log, seconds = _predict(proxy.endpoint, data, out, NEUTRINO_RAY_S3_RETRIES="3")
    assert code == 2, log[-3000:]
    error = [line for line in log.splitlines() if line.startswith("neutrino-ray: error:")]
    assert error and named in error[-1], log[-3000:]
    assert "Traceback" not in log.split("neutrino-ray: error:")[-1]
    assert not storage.exists(f"{out}/submission.csv") and not storage.exists(f"{out}/_SUCCESS.json")
    assert seconds < 120
    if case == "never recovers":  # backed off and gave up: a bounded number of tries per request
        tries = proxy.requests(path=r"batch_1\.parquet", action="error")
        assert 3 <= len(tries) <= 200
