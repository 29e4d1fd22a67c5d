"""Where and in what precision torch runs, for training and inference alike: the precision policy (fp32 on CPUs;
on a CUDA device bf16 autocast where the GPU has it, else fp16 with a gradient scaler), its autocast context,
the fp16 gradient scaler, and batch copies from pinned host memory to the device."""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from neutrino_ray.errors import InputError
from neutrino_ray.settings import PRECISIONS


def precision_policy(requested: str, device: torch.device, bf16_supported: bool | None = None) -> str:
    """The precision a worker trains in: fp32 on CPUs (and whenever asked); on a CUDA device, ``auto`` is bf16
    autocast where the GPU supports it (Ampere and later) and fp16 autocast with a gradient scaler elsewhere
    (T4, V100); ``bf16`` on a GPU without it is refused. ``bf16_supported`` defaults to the device's own
    answer (a seam for tests)."""
    if requested not in PRECISIONS:
        raise InputError(f"--precision {requested}: expected one of {', '.join(PRECISIONS)}")
    if requested == "fp32" or device.type != "cuda":
        return "fp32"
    if bf16_supported is None:
        bf16_supported = torch.cuda.is_bf16_supported()
    if requested == "bf16" and not bf16_supported:
        raise InputError(f"--precision bf16: {device} ({torch.cuda.get_device_name(device)}) has no bf16; "
                         "use --precision fp16 or auto")
    if requested == "auto":
        return "bf16" if bf16_supported else "fp16"
    return requested


def autocast(precision: str, device: torch.device) -> Any:
    """The autocast context of a precision (none for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """fp16 needs a gradient scaler (small gradients underflow in half precision); a disabled one otherwise."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def to_device(x: Any, device: torch.device) -> Any:
    """A batch (tensor or PyG batch) to ``device``: to a GPU from pinned host memory, without blocking (the
    copy overlaps the queued work; the host arrays stay alive in the pinned copy)."""
    if device.type == "cuda":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)
