"""The one inference layer for torch models, every detector: load an artefact, score on an actor, set up the pool.

- :func:`load_model`: ``config.json`` + ``model.pt`` → (task, model in eval mode, config), with the one-line
  errors of every broken-artefact case (missing, foreign format or task, inputs of another build, weights that
  do not fit the config). A detector passes how to check its inputs and how to build its task.
- :func:`batched`: the mini-batch loop every scorer runs, under ``torch.inference_mode`` and the precision's
  autocast; the outputs stay on the device until the end, so a GPU queue is not drained per mini-batch.
- :class:`Scorer`: the base of the Ray Data scoring actors (IceCube's ensemble scorer, NOvA's scorer). It
  owns the device (a GPU that CUDA can see, or a one-line error naming the node), the torch threads of a CPU
  actor, the precision (:func:`neutrino_ray.devices.precision_policy`: bf16 autocast on GPUs that have it,
  fp16 on older ones, fp32 on CPUs unless asked) and host→device copies from pinned memory without blocking
  (:func:`neutrino_ray.devices.to_device`).
- :func:`fold_batchnorm`: a convolution followed by its batch normalisation becomes one convolution for
  inference (eval mode: the normalisation is a fixed affine map per channel, so it folds into the weights and
  bias; ``torch.nn.utils.fusion.fuse_conv_bn_eval``): one pass over the activations less per pair, the outputs
  the same up to float rounding.
- :func:`actor_pool`: the ``map_batches`` stage of an actor pool (sized by :func:`neutrino_ray.runtime.actor_pool_size`,
  where GPU actors wait, boundedly, for the autoscaler to provide their GPUs); :func:`cpu_pool_for_tasks` folds
  the CPUs of CPU actors that would get no slice into the busy ones' threads.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from neutrino_ray import artefact, devices, storage
from neutrino_ray.errors import InputError


def load_artefact(uri: str, task_name: str | tuple[str, ...]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config, state_dict) of a model artefact for one of the task names; a clear error for a missing or
    foreign one."""
    config = artefact.read_config(uri, task_name)
    w_uri = storage.join(uri, artefact.WEIGHTS)
    try:
        state = torch.load(io.BytesIO(storage.read_bytes(w_uri)), map_location="cpu", weights_only=True)
    except FileNotFoundError as e:
        raise InputError(f"{w_uri}: model weights not found") from e
    except Exception as e:  # truncated or foreign file
        raise InputError(f"{w_uri}: unreadable model weights ({type(e).__name__}: {e})") from e
    return config, state


def load_model(uri: str, task_names: str | tuple[str, ...], build: Callable[[dict[str, Any]], Any],
               check: Callable[[dict[str, Any]], None] | None = None) -> tuple[Any, nn.Module, dict[str, Any]]:
    """A trained model from ``uri`` (OUT/model): ``check(config)`` raises for inputs this build does not compute,
    ``build(config)`` returns the detector's task, whose ``build_model()`` the weights are loaded into."""
    config, state = load_artefact(uri, task_names)
    if check is not None:
        check(config)
    task = build(config)
    model = task.build_model()
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise InputError(f"{uri}: weights do not match the model in its config.json ({e})") from e
    return task, model.eval(), config


def batched(model: nn.Module, n: int, batch_size: int, step: Callable[[int, int], torch.Tensor],
            device: torch.device, precision: str = "fp32") -> torch.Tensor | None:
    """``step(lo, hi)`` (the model's output for items ``lo:hi``, as float) over mini-batches of ``batch_size``,
    concatenated on the host; None for no items. Inference mode, the precision's autocast, one host copy."""
    model.eval()
    outs = []
    with torch.inference_mode(), devices.autocast(precision, device):
        for lo in range(0, n, batch_size):  # mini-batches, not items
            outs.append(step(lo, min(n, lo + batch_size)).float())
    if not outs:
        return None
    return torch.cat(outs).cpu()


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """``model`` (in eval mode) with every ``Conv2d`` directly followed by a ``BatchNorm2d`` in an ``nn.Sequential``
    folded into one convolution (the normalisation replaced by ``nn.Identity``), in place; returns it. Only for
    inference: the folded model no longer trains its normalisation. Other modules are left as they are."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    if model.training:
        raise ValueError("fold_batchnorm needs a model in eval mode")
    for seq in model.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        for i in range(len(seq) - 1):
            conv, bn = seq[i], seq[i + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.running_mean is not None \
                    and bn.running_var is not None and conv.out_channels == bn.num_features:
                seq[i], seq[i + 1] = fuse_conv_bn_eval(conv, bn), nn.Identity()
    return model


class Scorer:
    """Base of the Ray Data scoring actors: device, threads, precision, pinned copies (see the module docs)."""

    def __init__(self, use_gpu: bool, threads: int, precision: str = "auto"):
        if use_gpu:
            if not torch.cuda.is_available():
                raise InputError(f"a scoring actor on node {_node()} was given a GPU "
                                 f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}) that CUDA "
                                 f"cannot see (torch {torch.__version__}, CUDA {torch.version.cuda})")
            self.device = torch.device("cuda")
        else:
            self.device = torch.device("cpu")
            torch.set_num_threads(max(1, threads))
        self.precision = devices.precision_policy(precision, self.device)

    def to_device(self, x: Any) -> Any:
        """A tensor (or a batch of them) on this actor's device: pinned and non-blocking to a GPU."""
        return devices.to_device(x, self.device)


def _node() -> str:
    try:
        import ray

        return str(ray.util.get_node_ip_address())
    except Exception:
        return "?"


def cpu_pool_for_tasks(actors: int, cpus_per_actor: float, tasks: int) -> tuple[int, float]:
    """(actors, CPUs per actor) of a CPU actor pool sized by default that has ``tasks`` slices to score: with
    fewer tasks than actors the idle actors would hold CPUs no task uses (a split of one or two row groups, e.g. a
    few hundred events, is one task), so the pool shrinks to one actor per task and each takes, as torch
    threads, the CPUs the idle ones would have held. The pool's CPUs do not change."""
    if tasks <= 0 or tasks >= actors:
        return actors, cpus_per_actor
    return tasks, max(cpus_per_actor, float(int(actors * cpus_per_actor // tasks)))


def actor_pool(ds: Any, actor: type, kwargs: dict[str, Any], size: int, cpus_per_actor: float,
               gpus_per_actor: float) -> Any:
    """``ds`` → one block per call through a pool of ``size`` ``actor`` s (constructed with ``kwargs``), each
    holding ``cpus_per_actor`` CPUs and ``gpus_per_actor`` GPUs. Size it with
    :func:`neutrino_ray.runtime.actor_pool_size`, which waits (boundedly) for a GPU pool's GPUs."""
    from ray.data import ActorPoolStrategy

    return ds.map_batches(actor, batch_format="pyarrow", batch_size=1, zero_copy_batch=True,
                          fn_constructor_kwargs=kwargs, compute=ActorPoolStrategy(size=size),
                          num_cpus=cpus_per_actor, num_gpus=gpus_per_actor if gpus_per_actor > 0 else None)
