"""A trained IceCube direction model: load it (through the one inference layer), score featurised events with it,
and the κ calibration stored beside it. Used by predict, calibrate, bench and the tests; training writes it."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from neutrino_ray import inference, storage
from neutrino_ray.errors import InputError
from neutrino_ray.icecube import models, uncertainty
from neutrino_ray.icecube.linefit import direction_to_angles
from neutrino_ray.icecube.train import TASK, DirectionTask, feature_set


def _check(uri: str) -> Any:
    def check(config: dict[str, Any]) -> None:
        if config.get("features") != feature_set():
            raise InputError(f"{uri}: model was trained with another feature set ({config.get('features')}); this "
                             f"build computes {feature_set()}")
    return check


def _task(config: dict[str, Any]) -> DirectionTask:
    return DirectionTask(size=config["model"], max_pulses=int(config["max_pulses"]), loss_kind=config["loss"],
                         sizes=config["sizes"], inference_max_pulses=config.get("inference_max_pulses"))


def load_task_and_model(uri: str) -> tuple[DirectionTask, nn.Module, dict[str, Any]]:
    """A trained direction model from ``uri`` (OUT/model), checked against this build's features."""
    task, model, config = inference.load_model(uri, TASK, _task, _check(uri))
    return task, model, config


def load_calibration(uri: str) -> dict[str, Any] | None:
    """The κ calibration stored with the model at ``uri`` (``calibration.json``, by 'icecube calibrate'), if any."""
    return storage.read_format_json(storage.join(uri, uncertainty.CALIBRATION), uncertainty.CALIBRATION_FORMAT,
                                    "a calibration file")


def predict_vectors(task: DirectionTask, model: nn.Module, events: pa.Table, batch_size: int,
                    device: torch.device, precision: str = "fp32") -> tuple[np.ndarray, np.ndarray]:
    """(unit directions (N, 3), κ (N)) for featurised events, in mini-batches of ``batch_size`` events."""
    out = inference.batched(model, len(events), batch_size,
                            lambda lo, hi: task.forward(model, task.collate(events.slice(lo, hi - lo), device)),
                            device, precision)
    if out is None:
        return np.zeros((0, 3)), np.zeros(0)
    mu, kappa = models.split_output(out.double())
    return mu.numpy(), kappa.numpy()


def predict_directions(task: DirectionTask, model: nn.Module, events: pa.Table, batch_size: int,
                       device: torch.device) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(azimuth, zenith, κ) for featurised events, in mini-batches of ``batch_size`` events."""
    mu, kappa = predict_vectors(task, model, events, batch_size, device)
    if not len(mu):
        return np.zeros(0), np.zeros(0), np.zeros(0)
    az, zen = direction_to_angles(mu)
    return az, zen, kappa
