"""A pretend accelerator and a process group that enforces NCCL's rules: the CPU seam for the GPU paths.

NCCL reduces tensors that live on the worker's GPU and refuses host tensors ("No backend type associated
with device type cpu"). A CPU machine cannot run NCCL, and with gloo on CPUs every tensor is a host tensor,
so a host tensor slipping into a collective goes unnoticed there. This module lets a CPU test see it:

* ``fakegpu``: a device of its own (torch's PrivateUse1 key, named and registered from Python). Its
  tensors wrap CPU tensors and compute on the CPU, but report ``fakegpu:0`` as their device; an operation
  that mixes them with (non-scalar) host tensors fails as it would on CUDA, and ``.cpu()`` is the way back.
* ``fakenccl``: a process-group backend that checks NCCL's rule (every tensor of a collective on the
  worker's device, not the host) and then runs the collective with gloo on the wrapped CPU tensors.

The training scaffold's seam (``Settings.backend``, ``Settings.device_hook``) runs the real training loop
with them: ``backend="fakenccl"``, ``device_hook="neutrino_ray.fakegpu:device"``, and each Ray worker
process calls :func:`setup` first (Ray's ``worker_process_setup_hook``). See tests/test_training_nccl.py.
Test-only: nothing in a real run imports this module.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch.utils._pytree import tree_map

NAME = "fakegpu"
BACKEND = "fakenccl"
_lib: Any = None
# Operations that move data between the host and the device: the only ones that may mix the two.
_COPIES = ("copy_", "_to_copy", "_copy_from", "lift_fresh")


class DeviceTensor(torch.Tensor):
    """A tensor on the pretend device: a CPU tensor (``raw``) that reports ``fakegpu:0``."""

    raw: torch.Tensor

    @staticmethod
    def __new__(cls, raw: torch.Tensor) -> DeviceTensor:
        t = torch.Tensor._make_wrapper_subclass(cls, raw.shape, strides=raw.stride(),
                                                storage_offset=raw.storage_offset(), dtype=raw.dtype,
                                                device=torch.device(NAME, 0), requires_grad=False)
        t.raw = raw
        return t

    def __repr__(self) -> str:  # type: ignore[override]
        return f"DeviceTensor({self.raw!r})"

    @classmethod
    def __torch_dispatch__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:  # type: ignore[override]
        kwargs = kwargs or {}
        name = func.__name__
        copies = name.startswith(_COPIES)

        def unwrap(x: Any) -> Any:
            if isinstance(x, DeviceTensor):
                return x.raw
            if isinstance(x, torch.Tensor) and x.dim() > 0 and not copies:
                raise RuntimeError(f"Expected all tensors to be on the same device, but found at least two "
                                   f"devices, {NAME}:0 and {x.device}! ({func})")
            if isinstance(x, torch.device) and x.type == NAME:
                return torch.device("cpu")
            return x

        to_host = name.startswith("_to_copy") and kwargs.get("device") is not None \
            and torch.device(kwargs["device"]).type == "cpu"
        out = func(*tree_map(unwrap, args), **tree_map(unwrap, kwargs))
        if to_host:
            return out
        inputs = {id(a.raw): a for a in args if isinstance(a, DeviceTensor)}  # in-place ops return their input

        def wrap(x: Any) -> Any:
            if isinstance(x, torch.Tensor) and not isinstance(x, DeviceTensor):
                return inputs[id(x)] if id(x) in inputs else DeviceTensor(x)
            return x

        return tree_map(wrap, out)


def _factory(op: Any) -> Any:
    def make(*args: Any, **kwargs: Any) -> DeviceTensor:
        return DeviceTensor(op(*args, **{**kwargs, "device": torch.device("cpu")}))
    return make


def _copy_from(src: torch.Tensor, dst: torch.Tensor, non_blocking: bool = False) -> torch.Tensor:
    (dst.raw if isinstance(dst, DeviceTensor) else dst).copy_(src.raw if isinstance(src, DeviceTensor) else src)
    return dst


def setup() -> None:
    """Register the pretend device and the ``fakenccl`` backend in this process (idempotent)."""
    global _lib
    if _lib is not None:
        return
    from torch.utils.backend_registration import _setup_privateuseone_for_python_backend

    _setup_privateuseone_for_python_backend(NAME)
    lib = torch.library.Library("aten", "IMPL")
    aten = torch.ops.aten
    for key, op in {"empty.memory_format": aten.empty.memory_format, "empty_strided": aten.empty_strided.default,
                    "zeros": aten.zeros.default, "ones": aten.ones.default, "full": aten.full.default,
                    "arange.start_step": aten.arange.start_step, "arange": aten.arange.default,
                    "scalar_tensor": aten.scalar_tensor.default}.items():
        lib.impl(key, _factory(op), "PrivateUse1")
    lib.impl("_copy_from", _copy_from, "PrivateUse1")
    dist.Backend.register_backend(BACKEND, _create_group, devices=[NAME])
    _lib = lib


def device() -> torch.device:
    """The worker's device (the scaffold's ``device_hook``)."""
    setup()
    return torch.device(NAME, 0)


class NCCLRuleViolation(RuntimeError):
    """A collective was handed a tensor NCCL would refuse."""


def _check(tensors: Any, what: str) -> list[torch.Tensor]:
    flat: list[torch.Tensor] = []
    tree_map(lambda x: flat.append(x) if isinstance(x, torch.Tensor) else None, tensors)
    for t in flat:
        if not isinstance(t, DeviceTensor):
            raise NCCLRuleViolation(f"{what}: a tensor on {t.device} entered a collective; NCCL takes tensors on "
                                    f"the worker's device ({NAME}:0) only (No backend type associated with device "
                                    f"type {t.device.type})")
    return flat


def _raw(tensors: Any) -> Any:
    return tree_map(lambda x: x.raw if isinstance(x, DeviceTensor) else x, tensors)


class FakeNCCL(dist.ProcessGroup):
    """NCCL's device rule, checked on every collective; the data moved by gloo on the wrapped CPU tensors."""

    def __init__(self, store: Any, rank: int, size: int, timeout: timedelta):
        super().__init__(rank, size)  # type: ignore[call-arg]
        self.inner: Any = dist.ProcessGroupGloo(store, rank, size, timeout)

    def getBackendName(self) -> str:
        return BACKEND

    def _forward(self, name: str, *tensors: Any, opts: Any = None) -> Any:
        _check(list(tensors), name)
        args = [_raw(t) for t in tensors]
        return getattr(self.inner, name)(*args) if opts is None else getattr(self.inner, name)(*args, opts)

    def allreduce(self, tensors: Any, opts: Any = None) -> Any:  # type: ignore[override]
        return self._forward("allreduce", tensors, opts=opts)

    def allreduce_coalesced(self, tensors: Any, opts: Any = None) -> Any:
        return self._forward("allreduce_coalesced", tensors, opts=opts)

    def broadcast(self, tensors: Any, opts: Any = None) -> Any:  # type: ignore[override]
        return self._forward("broadcast", tensors, opts=opts)

    def allgather(self, outputs: Any, inputs: Any, opts: Any = None) -> Any:
        return self._forward("allgather", outputs, inputs, opts=opts)

    def _allgather_base(self, output: Any, input: Any, opts: Any = None) -> Any:
        return self._forward("_allgather_base", output, input, opts=opts)

    def barrier(self, opts: Any = None) -> Any:
        return self.inner.barrier() if opts is None else self.inner.barrier(opts)


def _create_group(store: Any, rank: int, size: int, timeout: timedelta) -> FakeNCCL:
    return FakeNCCL(store, rank, size, timeout)
