"""Precision policy (bf16 / fp16 + gradient scaler / fp32), the scaler path on a mocked fp16 device, and the
time budget (--max-minutes bounds the whole run, validation and checkpoints included, within 10 %).

The fp16 and bf16 branches on a real GPU are only unit-tested here (no GPU on the CI machine): the policy's
choice given what the device supports, and the scaler's wiring in the training step."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from neutrino_ray import devices, training
from neutrino_ray.cli import main
from neutrino_ray.errors import InputError

CUDA = torch.device("cuda", 0)  # never touched: the policy only reads its type


def test_precision_policy() -> None:
    policy = devices.precision_policy
    assert policy("auto", CUDA, bf16_supported=True) == "bf16"  # Ampere and later
    assert policy("auto", CUDA, bf16_supported=False) == "fp16"  # T4, V100: fp16 with a gradient scaler
    assert policy("fp16", CUDA, bf16_supported=True) == "fp16"
    assert policy("fp32", CUDA, bf16_supported=True) == "fp32"
    assert policy("bf16", CUDA, bf16_supported=True) == "bf16"
    for asked in ("auto", "fp32"):
        assert policy(asked, torch.device("cpu")) == "fp32"
    with pytest.raises(InputError, match="--precision fp8: expected one of auto, bf16, fp16, fp32"):
        policy("fp8", CUDA, bf16_supported=True)
    assert devices.grad_scaler("fp16", torch.device("cpu")).is_enabled()
    assert not devices.grad_scaler("bf16", torch.device("cpu")).is_enabled()
    assert not devices.grad_scaler("fp32", torch.device("cpu")).is_enabled()


def test_cpu_training_refuses_half_precision(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="--precision bf16 needs GPU workers"):
        training.Settings(out=str(tmp_path), precision="bf16")  # before Ray starts
    assert training.Settings(out=str(tmp_path), precision="fp16", gpus_per_worker=1).precision == "fp16"


@dataclass(frozen=True)
class Regression:
    """A tiny task: y = x·w, mean squared error (what train_step needs of a Task)."""

    scale: float = 1.0

    def loss(self, model: nn.Module, b: dict[str, torch.Tensor]) -> torch.Tensor:
        return ((model(b["x"]).float() - b["y"]) ** 2).mean() * self.scale


def _step(precision: str, task: Any, clip: float = 1.0) -> tuple[nn.Module, torch.amp.GradScaler]:
    torch.manual_seed(0)
    model = nn.Linear(8, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    # The policy on a mocked pre-Ampere GPU picks fp16; the step runs it on the CPU (autocast fp16 there).
    device = torch.device("cpu")
    scaler = devices.grad_scaler(precision, device)
    b = {"x": torch.randn(64, 8), "y": torch.randn(64, 1)}
    training.train_step(model, task, b, opt, scaler, precision, device, clip)
    return model, scaler


def test_fp16_scaler_path_on_a_mocked_fp16_device() -> None:
    assert devices.precision_policy("auto", CUDA, bf16_supported=False) == "fp16"
    fp16, scaler = _step("fp16", Regression())
    assert scaler.is_enabled() and scaler.get_scale() == 65536.0  # a good step keeps the scale
    fp32, _ = _step("fp32", Regression())
    # Clipping saw the unscaled gradients: the fp16 step moves the weights as the fp32 one (to fp16 rounding).
    torch.testing.assert_close(fp16.weight, fp32.weight, atol=2e-3, rtol=0)
    before = nn.Linear(8, 1)
    torch.manual_seed(0)
    before = nn.Linear(8, 1)
    moved = (fp16.weight - before.weight).abs().max()
    assert moved > 1e-3
    # An overflow: the scaler skips the step (weights untouched) and halves its scale.
    inf, scaler = _step("fp16", Regression(scale=float("inf")))
    torch.testing.assert_close(inf.weight, before.weight, atol=0, rtol=0)
    assert scaler.get_scale() == 32768.0


@pytest.mark.slow
@pytest.mark.integration
def test_max_minutes_bounds_the_whole_run_within_ten_percent(tmp_path: Path) -> None:
    """A run whose full validation (2,000 events) would take a large part of the budget on loaded CPUs: training
    stops early enough, each validation pass keeps to its share, and from the first step to the published
    model takes the budget within 10 %."""
    data = tmp_path / "icecube"
    assert main(["-q", "simulate", "icecube", str(data), "--events-per-batch", "4000", "--train-batches", "1",
                 "--test-batches", "0", "--seed", "6"]) == 0
    out = tmp_path / "run"
    budget = 1.5
    assert main(["-q", "icecube", "train", str(data), "--out", str(out), "--model", "small", "--epochs", "50",
                 "--batch-size", "64", "--val-events", "2000", "--max-minutes", str(budget)]) == 0
    t = json.loads((out / "model" / "config.json").read_text())["training"]
    published = (out / "model" / "_SUCCESS.json").stat().st_mtime
    took = published - t["first_step_at"]
    assert abs(took - 60 * budget) <= 0.1 * 60 * budget, (took, t)
    metrics = json.loads((out / "model" / "metrics.json").read_text())
    assert 0 < metrics[-1]["val_events"] <= 2000
