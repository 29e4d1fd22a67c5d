"""cluster/local-up.sh and local-down.sh: a head with no work plus worker nodes, all on loopback, token auth on.

The scripts run on ports of their own, so the test neither needs nor disturbs any other Ray on the machine
(local-down stops only the processes of its own cluster: checked against the test process's own Ray).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray
from conftest import free_port

from neutrino_ray import storage

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _run(cmd: list[str], env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def _listening(port: int) -> list[str]:
    """Local addresses listening on ``port``."""
    out = subprocess.run(["ss", "-Hltn"], capture_output=True, text=True, timeout=30).stdout
    return [line.split()[3].rsplit(":", 1)[0] for line in out.splitlines() if line.split()[3].endswith(f":{port}")]


@pytest.mark.slow  # 82 s at 5c578c8; out of the default suite for its budget (docs/development.md)
@pytest.mark.skipif(shutil.which("ss") is None, reason="needs `ss` to check which addresses the ports listen on")
def test_local_up_submit_and_down(tmp_path: Path) -> None:
    if not ray.is_initialized():  # another Ray, which local-down must leave alone
        ray.init(address="local", num_cpus=1, include_dashboard=False)
    gcs, dash, client = free_port(), free_port(), free_port()
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "RAY_GCS_PORT": str(gcs),
           "RAY_DASHBOARD_PORT": str(dash), "RAY_CLIENT_PORT": str(client), "RAY_AGENT_PORT": str(free_port()),
           "RAY_AUTH_TOKEN_PATH": str(tmp_path / "token")}
    for var in ("RAY_AUTH_MODE", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"):  # the latter refuses multi-node `ray start`
        env.pop(var, None)
    try:
        up = _run(["bash", "cluster/local-up.sh", "2", "1"], env)
        assert up.returncode == 0, up.stdout[-2000:] + up.stderr[-2000:]
        assert f"http://127.0.0.1:{dash}" in up.stdout and "cluster/local-down.sh" in up.stdout
        assert (tmp_path / "token").stat().st_mode & 0o077 == 0  # the token is readable by its owner only
        # The dashboard / job API on loopback only. Ray's gRPC servers (GCS, raylets, Ray client) listen on
        # every interface with no setting to change it; token authentication guards them.
        assert set(_listening(dash)) == {"127.0.0.1"}, _listening(dash)
        assert _listening(gcs) and _listening(client)
        again = _run(["bash", "cluster/local-up.sh", "1", "1"], env)
        assert again.returncode != 0 and "already running" in again.stderr

        job_env = {**env, "RAY_AUTH_MODE": "token"}
        status = _run(["ray", "status", f"--address=127.0.0.1:{gcs}"], job_env, timeout=60)
        assert status.returncode == 0, status.stderr[-2000:]
        assert len(re.findall(r"^\s*1 node_", status.stdout, flags=re.M)) == 3, status.stdout  # head + 2 workers
        assert re.search(r"0\.0/2\.0 CPU", status.stdout), status.stdout  # the head adds no CPU
        refused = _run(["ray", "job", "list", f"--address=http://127.0.0.1:{dash}"],
                       {**job_env, "RAY_AUTH_TOKEN_PATH": str(tmp_path / "no-token")}, timeout=60)
        assert refused.returncode != 0

        data, out = tmp_path / "icecube", tmp_path / "linefit"
        for script, *args in (("icecube_simulate.py", str(data), "--events-per-batch", "300", "--train-batches", "0",
                               "--test-batches", "1", "--seed", "2"),
                              ("icecube_predict.py", str(data), "--out", str(out))):
            for _ in range(10):  # right after start the job agents may still be registering: bounded retries
                job = _run(["ray", "job", "submit", f"--address=http://127.0.0.1:{dash}", f"--working-dir={REPO}",
                            "--", "python", f"jobs/{script}", *args], job_env, timeout=300)
                if "No available agent" not in job.stderr:
                    break
                time.sleep(3)
            assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
        assert storage.read_manifest(str(out))["events"] == 300
    finally:
        down = _run(["bash", "cluster/local-down.sh"], env)
    assert down.returncode == 0, down.stderr
    assert "stopped the cluster" in down.stdout
    for _ in range(20):  # processes signalled by local-down take a moment to exit: bounded wait
        left = subprocess.run(["pgrep", "-f", f"/tmp/neutrino-ray-{gcs}/"], capture_output=True, text=True)
        if not left.stdout.strip():
            break
        time.sleep(1)
    assert left.stdout.strip() == "", f"processes of the cluster survived local-down: {left.stdout}"
    assert not _listening(dash)
    assert ray.get(ray.put(41)) == 41  # the other Ray is untouched
    ray.shutdown()
    assert "no cluster running" in _run(["bash", "cluster/local-down.sh"], env).stdout
    shutil.rmtree(f"/tmp/neutrino-ray-{gcs}", ignore_errors=True)
