"""The torch model artefact at ``OUT/model/``: its file names and format tag, the ``config.json`` part that
identifies a model (format, task, the task's config, size), the weights' bytes, a bare model folder for the
benchmarks, and the learning-curve plot. :func:`neutrino_ray.training.publish` writes a trained one;
:func:`neutrino_ray.inference.load_artefact` reads it back."""

from __future__ import annotations

import io
import json
from typing import Any, Protocol

import torch
from torch import nn

from neutrino_ray import storage
from neutrino_ray.errors import InputError
from neutrino_ray.plotting import png, pyplot

MODEL_DIR = "model"  # the artefact under OUT/model/
WEIGHTS, CONFIG, METRICS, CURVE = "model.pt", "config.json", "metrics.json", "learning_curve.png"
FORMAT = "neutrino-ray torch model v1"


def read_config(uri: str, task_name: str | tuple[str, ...]) -> dict[str, Any]:
    """The ``config.json`` of the model artefact at ``uri``, for one of the task names: a one-line InputError
    for a missing, unreadable or foreign one."""
    cfg_uri = storage.join(uri, CONFIG)
    config = storage.read_format_json(cfg_uri, FORMAT, "a model config")
    if config is None:
        raise InputError(f"{cfg_uri}: no trained model here (expected {CONFIG} and {WEIGHTS}, as written by "
                         f"'train' at OUT/{MODEL_DIR})")
    names = (task_name,) if isinstance(task_name, str) else task_name
    if config.get("task") not in names:
        raise InputError(f"{cfg_uri}: a model for task {config.get('task')!r}, expected one for "
                         f"{' or '.join(map(repr, names))}")
    return config


class Described(Protocol):
    """What the artefact records of a training task (:class:`neutrino_ray.training.Task` has it)."""

    @property
    def name(self) -> str: ...
    def config(self) -> dict[str, Any]: ...


def artefact_config(task: Described, model: nn.Module) -> dict[str, Any]:
    """The part of ``config.json`` that identifies a model: format, task, the task's config, size."""
    return {"format": FORMAT, "task": task.name, **task.config(),
            "n_parameters": sum(x.numel() for x in model.parameters())}


def weights_bytes(model: nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getvalue()


def write_model(uri: str, task: Described, model: nn.Module) -> str:
    """A model folder at ``uri`` (weights and ``config.json``, as :func:`publish` writes them, without a run's
    manifest): the benchmarks' models with freshly initialised weights. Returns ``uri``."""
    storage.write_bytes(storage.join(uri, WEIGHTS), weights_bytes(model))
    storage.write_bytes(storage.join(uri, CONFIG), json.dumps(artefact_config(task, model)).encode())
    return uri


def learning_curve(history: list[dict[str, Any]], metric: str, title: str) -> bytes:
    """Validation metric and training loss versus training time."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    minutes = [h["minutes"] for h in history]
    ax.plot(minutes, [h.get(metric, float("nan")) for h in history], "o-", color="C0", label=metric)
    ax.set_xlabel("training time (min)")
    ax.set_ylabel(metric, color="C0")
    ax2 = ax.twinx()
    ax2.plot(minutes, [h["train_loss"] for h in history], "s--", color="C1", label="train loss")
    ax2.set_ylabel("train loss", color="C1")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return png(fig)
