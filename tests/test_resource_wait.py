"""GPU jobs wait for the autoscaler, boundedly: a local Ray cluster gains a node declared with GPUs while
the job waits; the job's workers are scheduled there and stop with one line, since CUDA cannot see a GPU
on this machine. Without the node, the wait times out with one line; --resource-wait-minutes 0 refuses
at once (tests/test_icecube_train.py)."""

from __future__ import annotations

import shlex
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
import yaml
from conftest import one_line_error
from ray.cluster_utils import Cluster

from neutrino_ray import runtime
from neutrino_ray.cli import main
from neutrino_ray.errors import InputError

REPO = Path(__file__).resolve().parents[1]
HEAD = {"num_cpus": 2, "num_gpus": 0, "object_store_memory": 100 * 2**20, "include_dashboard": False}


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """A head node with CPUs and no GPU; the test process is its driver."""
    if ray.is_initialized():
        ray.shutdown()
    c = Cluster(initialize_head=True, head_node_args=HEAD)
    ray.init(address=c.address)
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wait") / "icecube"
    assert main(["-q", "simulate", "icecube", str(out), "--events-per-batch", "300", "--train-batches", "1",
                 "--test-batches", "0", "--seed", "5"]) == 0
    return out


def _prod_train_args(dataset: Path, out: Path) -> list[str]:
    """The prod overlay's IceCube training command, as written, on local paths."""
    doc = yaml.safe_load((REPO / "k8s/overlays/prod/jobs/icecube-train-patch.yaml").read_text())
    entry = next(op["value"] for op in doc if op["path"] == "/spec/entrypoint")
    argv = shlex.split(entry)
    assert argv[:2] == ["python", "jobs/icecube_train.py"]
    args = argv[2:]
    args[0] = str(dataset)
    args[args.index("--out") + 1] = str(out)
    return args


def _wait_then_stop(c: Cluster, delay: float, run: Any, **node: Any) -> tuple[str, float, Any]:
    """``run()`` in a thread (the job, waiting); after ``delay`` s the cluster gains a node with ``node``'s
    resources, as the autoscaler would add one (Ray adds nodes from the main thread only)."""
    result: list[Any] = []
    start = time.monotonic()
    t = threading.Thread(target=lambda: result.append(run()), daemon=True)
    t.start()
    time.sleep(delay)
    assert t.is_alive(), "the job did not wait for the GPUs"
    added = c.add_node(object_store_memory=80 * 2**20, **node)
    try:
        t.join(timeout=240)
        assert result, "the job did not end after the GPU node arrived"
        return result[0], time.monotonic() - start, added
    finally:
        c.remove_node(added)


@pytest.mark.slow
@pytest.mark.integration
def test_prod_training_command_waits_for_the_gpu_node_and_is_scheduled_there(
        cluster: Cluster, dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--workers 4 --gpus-per-worker 1 --cpus-per-worker 4`` as in k8s/overlays/prod: the node (4 GPUs, 16
    CPUs) arrives after 30 s; the workers' resources are placed on it and CUDA's absence ends the run."""
    args = _prod_train_args(dataset, tmp_path / "gnn")
    assert "--resource-wait-minutes" in args  # the overlay states its wait for the GPU pool

    def run() -> str:
        code = main(["-q", "icecube", "train", *args, "--val-events", "100"])
        return one_line_error(code, capsys.readouterr().err)

    err, waited, node = _wait_then_stop(cluster, 30.0, run, num_cpus=16, num_gpus=4)
    assert waited >= 30.0
    assert "was given GPU" in err and "that CUDA cannot see" in err and "built without CUDA" in err
    assert node.node_id in err  # scheduled on the node that arrived
    assert not (tmp_path / "gnn" / "model").exists()


@pytest.mark.integration
def test_gpu_actor_pool_waits_for_the_gpu_node_and_times_out_without_it(cluster: Cluster) -> None:
    def run() -> str:
        try:
            runtime.actor_pool_size(None, 1.0, 1.0, resource_wait_minutes=1.0)
        except InputError as e:
            return str(e)
        return "no error"

    err, waited, node = _wait_then_stop(cluster, 3.0, run, num_cpus=1, num_gpus=1)
    assert waited >= 3.0 and node.node_id in err and "that CUDA cannot see" in err

    start = time.monotonic()
    with pytest.raises(InputError, match=r"^--actors 2 x --gpus-per-actor 1 need 2 GPUs \(with 2 CPUs each of 2\); "
                                         r"after waiting 0.05 min for the autoscaler the cluster has 0 GPUs$"):
        runtime.actor_pool_size(2, 2.0, 1.0, resource_wait_minutes=0.05)
    assert 3.0 <= time.monotonic() - start < 20
    with pytest.raises(InputError, match="not waiting for the autoscaler"):
        runtime.actor_pool_size(2, 2.0, 1.0, resource_wait_minutes=0)
    assert runtime.actor_pool_size(None, 1.0, 0.0, resource_wait_minutes=0) == 2  # CPU pools never wait


@pytest.mark.slow
@pytest.mark.integration
def test_gpu_training_times_out_with_one_line(cluster: Cluster, dataset: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    start = time.monotonic()
    code = main(["-q", "icecube", "train", str(dataset), "--out", str(tmp_path / "o"), "--workers", "2",
                 "--gpus-per-worker", "1", "--val-events", "100", "--resource-wait-minutes", "0.05"])
    line = one_line_error(code, capsys.readouterr().err)
    assert line.endswith("--workers 2 x --gpus-per-worker 1 need 2 GPUs (with 1 CPUs each of 2); after waiting "
                         "0.05 min for the autoscaler the cluster has 0 GPUs"), line
    assert time.monotonic() - start < 60
    assert not (tmp_path / "o" / "model").exists()
