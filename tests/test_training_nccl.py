"""NCCL's rules, enforced on a CPU: the real training loop on a pretend device with a process group that
refuses host tensors (neutrino_ray.fakegpu), data-parallel over two Ray Train workers.

On 216946f the loop reduced host tensors (the lockstep flags, the validation sums): with NCCL and more
than one worker it would have crashed on its first step. This test fails there (see docs/cluster.md).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import ray
import torch
import torch.distributed as dist

from neutrino_ray import fakegpu, runtime
from neutrino_ray.cli import main

SETUP_HOOK = "neutrino_ray.fakegpu.setup"


def _collectives(rank: int, store_path: str, out: str) -> None:
    fakegpu.setup()
    store = dist.FileStore(store_path, 2)
    dist.init_process_group(fakegpu.BACKEND, store=store, rank=rank, world_size=2, timeout=timedelta(seconds=30))
    dev = fakegpu.device()
    t = torch.tensor([rank + 1.0, 2.0], device=dev)
    dist.all_reduce(t)
    results = [t.cpu().tolist()]
    try:
        dist.all_reduce(torch.tensor([1.0]))  # a host tensor: NCCL refuses it
        results.append("accepted")
    except fakegpu.NCCLRuleViolation as e:
        results.append(str(e))
    with pytest.raises(RuntimeError, match="Expected all tensors to be on the same device"):
        _ = t + torch.ones(2)  # mixing device and host tensors fails as on CUDA
    Path(out, f"rank{rank}").write_text(repr(results))
    dist.destroy_process_group()


def test_fake_nccl_refuses_host_tensors_and_reduces_device_ones(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    mp.start_processes(_collectives, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True,
                       start_method="fork")
    for rank in range(2):
        reduced, refused = eval((tmp_path / f"rank{rank}").read_text())  # our own repr
        assert reduced == [3.0, 4.0]
        assert "a tensor on cpu entered a collective" in refused and "NCCL takes tensors" in refused


@pytest.fixture
def fake_accelerator_ray() -> Iterator[None]:
    """A local Ray whose every worker process registers the pretend device and the fakenccl backend."""
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=True, log_to_driver=True,
             runtime_env={"worker_process_setup_hook": SETUP_HOOK})
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("nccl") / "icecube"
    assert main(["-q", "simulate", "icecube", str(out), "--events-per-batch", "500", "--train-batches", "1",
                 "--test-batches", "0", "--seed", "4"]) == 0
    return out


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("size", ["small", "transformer-tiny"])
def test_data_parallel_training_follows_nccl_rules(dataset: Path, tmp_path: Path, fake_accelerator_ray: None,
                                                   size: str) -> None:
    """Two workers, every collective checked (lockstep flags, validation, DDP's gradients and broadcasts), a
    mid-run checkpoint (validation included) and the epoch-end one: the run publishes its model."""
    from neutrino_ray.icecube.train import train

    assert runtime.init_ray()["CPU"] == 2
    res = train(str(dataset), str(tmp_path / "run"), size, workers=2, cpus_per_worker=0.5, epochs=1, batch_size=32,
                val_events=100, checkpoint_minutes=0.05, backend=fakegpu.BACKEND,
                device_hook="neutrino_ray.fakegpu:device")
    t = res.config["training"]
    assert t["events"] == 400 and t["precision"] == "fp32"
    assert res.history[-1]["val_events"] == 100
    assert all(math.isfinite(h["val_mean_angular_error"]) and math.isfinite(h["train_loss"]) for h in res.history)
    assert (tmp_path / "run" / "model" / "model.pt").exists()
