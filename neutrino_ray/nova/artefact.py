"""A trained NOvA model: load it through the one inference layer, checked against this build's inputs."""

from __future__ import annotations

from typing import Any

from torch import nn

from neutrino_ray import inference
from neutrino_ray.errors import InputError
from neutrino_ray.nova import targets
from neutrino_ray.nova.train import TASK_PREFIX, NovaTask, input_spec


def load_task_and_model(uri: str) -> tuple[NovaTask, nn.Module, dict[str, Any]]:
    """A trained NOvA model from ``uri`` (OUT/model of 'nova train'), checked against this build's inputs."""
    def check(config: dict[str, Any]) -> None:
        if config.get("inputs") != input_spec():
            raise InputError(f"{uri}: model was trained on other inputs ({config.get('inputs')}); this build feeds "
                             f"{input_spec()}")

    def build(config: dict[str, Any]) -> NovaTask:
        weights = config.get("class_weights")
        return NovaTask(target=config["target"], model=config["model"], sizes=config.get("sizes"),
                        class_weights=tuple(weights) if weights else None)

    task, model, config = inference.load_model(uri, tuple(TASK_PREFIX + t for t in targets.TASKS), build, check)
    return task, model, config
