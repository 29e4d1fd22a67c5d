"""How to train: the training scaffold's :class:`Settings`, and the CLI flags generated from it (no torch).

Each setting is one dataclass field. A field that is also a command-line flag carries its flag in the
field's metadata (:func:`flag`: help text, value type, choices); :func:`add_training_args` adds those flags
to a parser and :func:`training_kwargs` reads them back, both from :func:`flags`, so a new flag is one field
here and nothing else. The settings are stored with every checkpoint and in the published model's
``config.json``; test hooks (fault injection) are not settings (:func:`neutrino_ray.training.inject_fault`).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterator
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any, ClassVar

from neutrino_ray.argtypes import non_negative, non_negative_float, positive, positive_float, unit_interval
from neutrino_ray.errors import InputError

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
OPTIMIZERS = ("adamw", "adam")
SCHEDULES = ("warmup-cosine", "constant")
KEEPS = ("last", "best")  # which weights training publishes
DATA_TASK_CPUS = 0.25  # Ray Data decode tasks beside the training workers: light, and never starved of CPUs


def flag(default: Any, help: str, *, type: Callable[[str], Any] | None = None,
         choices: tuple[str, ...] | None = None, name: str | None = None, metavar: str | None = None) -> Any:
    """A dataclass field that is also a training flag (``--field-name`` unless ``name``); ``help`` may use
    argparse's ``%(default)s``."""
    return field(default=default, metadata={"flag": {"help": help, "type": type, "choices": choices, "name": name,
                                                     "metavar": metavar}})


@dataclass(frozen=True)
class Settings:
    """How to train: scale, budget, optimiser. Stored with every checkpoint and the final artefact."""

    OPTIMIZERS: ClassVar[tuple[str, ...]] = OPTIMIZERS
    SCHEDULES: ClassVar[tuple[str, ...]] = SCHEDULES

    out: str
    workers: int = flag(1, "data-parallel training workers (%(default)s)", type=positive)
    gpus_per_worker: float = flag(0.0, "GPUs per worker; > 0 trains on GPUs with NCCL (0: CPUs, gloo)",
                                  type=non_negative_float)
    # GPUs: bf16 where supported, else fp16 with a gradient scaler (devices.precision_policy)
    precision: str = flag("auto", "GPU training precision: auto = bf16 autocast where the GPU has it, else fp16 "
                                  "with a gradient scaler; CPUs train in fp32 (%(default)s)", choices=PRECISIONS)
    # wait this long for the autoscaler to bring the GPUs; 0: refuse at once
    resource_wait_minutes: float = flag(15.0, "wait this long for the autoscaler to bring the GPUs asked for; 0 "
                                              "refuses at once (%(default)g)", type=non_negative_float)
    # None: share the cluster's CPUs between workers (see cpus())
    cpus_per_worker: float | None = flag(None, "CPUs per worker (default: 1 with GPUs; else an equal share of the "
                                               "cluster's CPUs)", type=positive_float)
    max_minutes: float | None = flag(None, "training time budget in minutes, counted across restarts and resumes "
                                           "(none)", type=positive_float)
    epochs: int = flag(10, "passes over the training events (%(default)s)", type=positive)
    batch_size: int = flag(128, "events per batch per worker (%(default)s)", type=positive)
    lr: float = flag(1e-3, "peak learning rate; with the warmup-cosine schedule: warm-up, then cosine decay over "
                           "the epochs or the time budget, whichever ends first (%(default)g)", type=positive_float)
    checkpoint_minutes: float = flag(5.0, "validate and checkpoint at every epoch end and at least this often "
                                          "(%(default)g)", type=positive_float)
    max_failures: int = flag(3, "worker failures to recover from the latest checkpoint (%(default)s)",
                             type=non_negative)
    seed: int = flag(0, "seed for weights, shuffling and balancing (%(default)s)", type=int)
    # keep an exponential moving average of the weights; validate and publish it
    ema_decay: float | None = flag(None, "keep an exponential moving average of the weights with this decay (e.g. "
                                         "0.999); validation and the published model use it (off)",
                                   type=unit_interval, name="--ema", metavar="DECAY")
    optimizer: str = flag("adamw", "adamw (weight decay 1e-5), or adam (no weight decay, as the NOvA course "
                                   "recipe) (%(default)s)", choices=OPTIMIZERS)
    schedule: str = flag("warmup-cosine", "learning-rate schedule: warm-up then cosine decay, or constant "
                                          "(%(default)s)", choices=SCHEDULES)
    patience: int | None = flag(None, "early stopping: end after this many epochs without a lower validation "
                                      "loss (off)", type=positive)
    keep: str = flag("last", "weights to publish: the last, or the best checkpoint's (lowest validation loss, "
                             "the one early stopping counts from; Keras' restore_best_weights) (%(default)s)",
                     choices=KEEPS)
    weight_decay: float = 1e-5
    warmup_steps: int = 100
    warmup_fraction: float = 0.03
    min_lr_fraction: float = 0.02
    grad_clip: float = 1.0
    log_every_steps: int = 50  # a progress line every this many steps, and at least once a minute
    shuffle_buffer: int = 1024
    # The device seam for CPU tests: a process-group backend registered in the workers (e.g. one that enforces
    # NCCL's rules) and "module:function" returning the device the loop runs on (e.g. a pretend accelerator).
    backend: str | None = None
    device_hook: str | None = None

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise InputError(f"--precision {self.precision}: expected one of {', '.join(PRECISIONS)}")
        if self.gpus_per_worker <= 0 and self.precision in ("bf16", "fp16"):
            raise InputError(f"--precision {self.precision} needs GPU workers (--gpus-per-worker); CPUs train "
                             "in fp32")
        if self.optimizer not in OPTIMIZERS:
            raise InputError(f"unknown optimizer {self.optimizer!r}: expected one of {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise InputError(f"unknown schedule {self.schedule!r}: expected one of {', '.join(SCHEDULES)}")
        if self.keep not in KEEPS:
            raise InputError(f"unknown keep {self.keep!r}: expected one of {', '.join(KEEPS)}")
        if self.patience is not None and self.patience < 1:
            raise InputError(f"patience must be >= 1 epoch, got {self.patience}")

    def cpus(self, cluster_cpus: float) -> float:
        """CPUs per worker: as given, else an equal share that leaves a little for Ray Data's decode tasks."""
        if self.cpus_per_worker is not None:
            return self.cpus_per_worker
        share = (cluster_cpus - 2 * DATA_TASK_CPUS) / self.workers
        if share < DATA_TASK_CPUS:
            raise InputError(f"--workers {self.workers} do not fit on a cluster with {cluster_cpus:g} CPUs")
        # Whole CPUs where there are: a worker on 1.5 of 2 CPUs starves the decode tasks and trains slower
        # (docs/nova.md, "Training throughput").
        return float(math.floor(share)) if share >= 1 else share


def flags() -> Iterator[Field[Any]]:
    """The Settings fields that are command-line flags, in declaration order."""
    return (f for f in fields(Settings) if "flag" in f.metadata)


def add_training_args(p: argparse.ArgumentParser, batch_size: int, lr: float) -> None:
    """Options every Ray Train command shares, one per flagged Settings field; ``batch_size`` and ``lr`` are the
    command's own defaults."""
    own = {"batch_size": batch_size, "lr": lr}
    for f in flags():
        spec = f.metadata["flag"]
        kwargs: dict[str, Any] = {"dest": f.name, "help": spec["help"],
                                  "default": own.get(f.name, None if f.default is MISSING else f.default)}
        for key in ("type", "choices", "metavar"):
            if spec[key] is not None:
                kwargs[key] = spec[key]
        p.add_argument(spec["name"] or "--" + f.name.replace("_", "-"), **kwargs)


def training_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The Settings a parsed command line asks for (the flags of :func:`add_training_args`)."""
    return {f.name: getattr(args, f.name) for f in flags()}
