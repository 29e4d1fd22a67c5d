"""What clusters do to batch inference, on a multi-node Ray on one machine (``ray.cluster_utils.Cluster``).

A head that schedules no work plus two 1-CPU worker nodes, as on KubeRay. A kill point (see
``tests/faults.py``) stalls one unit of work in the middle of the run, and the test kills whatever runs
it: the worker node (a spot node taken away), or the job's driver (a driver pod OOM-killed). Each run is
compared with an undisturbed run of the same command: every event exactly once, the same values.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import faults
import numpy as np
import pytest
import ray
import ray.cloudpickle
from kaggle import model_artefact, random_events, write_dataset
from ray.cluster_utils import Cluster

from neutrino_ray import storage
from neutrino_ray.icecube import scoring as icscoring
from neutrino_ray.icecube.options import ScoringOptions
from neutrino_ray.icecube.predict import PREDICTIONS, SUBMISSION, predict

TESTS = Path(__file__).resolve().parent
NODE = {"num_cpus": 1, "object_store_memory": 100 * 2**20, "node_ip_address": "127.0.0.1"}


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """Head (0 CPUs) + two 1-CPU worker nodes; the test process is its driver."""
    if ray.is_initialized():
        ray.shutdown()
    c = Cluster(initialize_head=True, head_node_args={**NODE, "num_cpus": 0, "include_dashboard": False})
    for _ in range(2):
        c.add_node(**NODE)
    c.wait_for_nodes()
    ray.init(address=c.address)
    ray.cloudpickle.register_pickle_by_value(faults)  # the kill points run on workers, which cannot import tests/
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


@pytest.fixture
def two_workers(cluster: Cluster) -> Cluster:
    """The cluster with exactly two live worker nodes (a test before may have killed one)."""
    while len(cluster.worker_nodes) < 2:
        cluster.add_node(**NODE)
    cluster.wait_for_nodes()
    return cluster


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3,000 events in two batch files with small row groups: many slices."""
    rng = np.random.default_rng(31)
    a = random_events(rng, 1500, first_id=0)
    b = random_events(rng, 1500, first_id=int(a["event_id"][-1]) + 1)
    return write_dataset(tmp_path_factory.mktemp("faults") / "icecube", {1: a, 2: b}, row_group_size=20_000)


def _kill_stalled_node(c: Cluster, folder: Path, replace: bool) -> tuple[threading.Thread, list[object]]:
    """A thread that waits for the kill point and takes that worker node away (then adds a fresh one)."""
    outcome: list[object] = []

    def run() -> None:
        try:
            node_id, _ = faults.wait_for_stall(str(folder))
            node = next(n for n in c.worker_nodes if n.node_id == node_id)
            c.remove_node(node, allow_graceful=False)
            outcome.append(node_id)
            if replace:
                c.add_node(**NODE)
        except Exception as e:  # reported by the test
            outcome.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, outcome


def _submission(out: str) -> bytes:
    return storage.read_bytes(storage.join(out, SUBMISSION))


def test_linefit_survives_a_worker_node_killed_mid_run(two_workers: Cluster, data: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    scoring = ScoringOptions(events_per_task=100)  # 30 slices over the two nodes
    clean = predict(str(data), "test", str(tmp_path / "clean"), scoring)
    folder = tmp_path / "kill"
    folder.mkdir()
    monkeypatch.setattr(icscoring, "linefit_block", faults.stalled(str(folder), icscoring.linefit_block, after=8))
    thread, outcome = _kill_stalled_node(two_workers, folder, replace=False)
    hit = predict(str(data), "test", str(tmp_path / "hit"), scoring)
    thread.join(timeout=60)
    assert outcome and isinstance(outcome[0], str), f"no node was killed: {outcome}"
    assert not (folder / "survived").exists(), "the stalled task finished: the node was not killed mid-task"
    assert len(two_workers.worker_nodes) == 1  # the rest ran on the one node left
    assert hit["events"] == clean["events"] == 3000
    assert _submission(str(tmp_path / "hit")) == _submission(str(tmp_path / "clean"))


@pytest.mark.slow
def test_gnn_actor_pool_survives_a_node_killed_and_replaced(two_workers: Cluster, data: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    model = str(model_artefact(tmp_path / "model"))
    scoring = ScoringOptions(model, events_per_task=150, batch_size=64, actors=2)
    clean = predict(str(data), "test", str(tmp_path / "clean"), scoring)
    folder = tmp_path / "kill"
    folder.mkdir()
    monkeypatch.setattr(icscoring, "DirectionScorer", faults.stalling_scorer(str(folder), after=6))
    thread, outcome = _kill_stalled_node(two_workers, folder, replace=True)  # the autoscaler's new node
    hit = predict(str(data), "test", str(tmp_path / "hit"), scoring)
    thread.join(timeout=60)
    assert outcome and isinstance(outcome[0], str), f"no node was killed: {outcome}"
    assert not (folder / "survived").exists()
    assert hit["events"] == clean["events"] == 3000
    a = np.loadtxt(storage.join(str(tmp_path / "hit"), SUBMISSION), delimiter=",", skiprows=1)
    b = np.loadtxt(storage.join(str(tmp_path / "clean"), SUBMISSION), delimiter=",", skiprows=1)
    assert np.array_equal(a[:, 0], b[:, 0])
    np.testing.assert_allclose(a[:, 1:], b[:, 1:], atol=1e-6)


def _driver(c: Cluster, *args: str, kill_point: tuple[str, str, int] | None = None) -> subprocess.Popen[str]:
    """The CLI as a job driver on the cluster, optionally with a kill point installed."""
    env = {**os.environ, "RAY_ADDRESS": c.address}
    cmd = ([sys.executable, str(TESTS / "faults.py"), kill_point[0], kill_point[1], str(kill_point[2]), "--"]
           if kill_point else [sys.executable, "-m", "neutrino_ray.cli"])
    return subprocess.Popen([*cmd, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


@pytest.mark.parametrize(("phase", "where"), [pytest.param("inference", "local", marks=pytest.mark.slow),
                                              ("publish", "s3"),
                                              pytest.param("publish", "local", marks=pytest.mark.slow)])
def test_a_driver_killed_mid_run_leaves_no_partial_output_and_a_rerun_resumes_and_publishes_once(
        two_workers: Cluster, data: Path, tmp_path: Path, phase: str, where: str,
        request: pytest.FixtureRequest) -> None:
    out = request.getfixturevalue("bucket") + "/pred" if where == "s3" else str(tmp_path / "pred")
    args = ["-q", "icecube", "predict", str(data), "--out", out, "--events-per-task", "200"]
    old = predict(str(data), "test", out, ScoringOptions(max_pulses=32))  # an older publication at the same place
    old_bytes = _submission(out)

    folder = tmp_path / "kill"
    folder.mkdir()
    proc = _driver(two_workers, *args, kill_point=(str(folder), phase, 4 if phase == "inference" else 0))
    finished: list[str] = []
    try:
        faults.wait_for_stall(str(folder))
        if phase == "inference":  # let the other worker finish a few parts (bounded), then kill mid-run
            deadline = time.monotonic() + 60
            while len(finished) < 3 and time.monotonic() < deadline:
                finished = [p for d in storage.listdir(out) if "_staging-parts-" in d for p in storage.listdir(d)
                            if p.endswith(".parquet")]
                time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
    # Readers still see the old submission, complete. A driver killed while scoring had not touched the
    # output; one killed while publishing had first withdrawn the old manifest.
    assert _submission(out) == old_bytes
    if phase == "inference":
        assert storage.read_manifest(out) == old
    else:
        assert not storage.exists(storage.join(out, storage.SUCCESS))

    rerun = _driver(two_workers, *args)
    log, _ = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, log[-3000:]
    manifest = storage.read_manifest(out)
    assert manifest["events"] == 3000 and manifest["files"] == [PREDICTIONS, SUBMISSION]
    if phase == "inference":  # resumed: the parts the killed run finished are reused, not scored again
        assert len(finished) >= 3 and manifest["parts_reused"] >= len(finished), (finished, manifest)
    entries = [p.rstrip("/").rsplit("/", 1)[-1] for p in storage.listdir(out)]
    assert sorted(entries) == [storage.SUCCESS, PREDICTIONS, SUBMISSION], entries  # the killed run's staging is gone
    new = predict(str(data), "test", str(tmp_path / "undisturbed"), ScoringOptions(events_per_task=200))
    assert new["events"] == 3000
    assert _submission(out) == _submission(str(tmp_path / "undisturbed")) != old_bytes
    assert storage.read_bytes(storage.join(out, PREDICTIONS)) == storage.read_bytes(
        storage.join(str(tmp_path / "undisturbed"), PREDICTIONS))  # byte-identical after the resume
    ids = np.loadtxt(storage.join(str(tmp_path / "undisturbed"), SUBMISSION), delimiter=",", skiprows=1)[:, 0]
    assert len(np.unique(ids)) == len(ids) == 3000
