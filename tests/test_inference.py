"""The one inference layer's pure parts (its Ray Data and artefact paths are tested in test_inference_pipelines.py
and with each detector's predict)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from neutrino_ray import artefact
from neutrino_ray.errors import InputError
from neutrino_ray.inference import cpu_pool_for_tasks


def test_a_cpu_pool_with_fewer_slices_than_actors_gives_the_idle_actors_cpus_to_the_busy_ones() -> None:
    assert cpu_pool_for_tasks(2, 1.0, 1) == (1, 2.0)  # a small split, one task: one actor, both CPUs as threads
    assert cpu_pool_for_tasks(8, 1.0, 3) == (3, 2.0)  # 8 CPUs over 3 tasks: 2 threads each, never more CPUs
    assert cpu_pool_for_tasks(4, 2.0, 1) == (1, 8.0)
    assert cpu_pool_for_tasks(3, 1.0, 2) == (2, 1.0)  # 1.5 CPUs each rounds down to the asked 1
    assert cpu_pool_for_tasks(2, 1.0, 2) == (2, 1.0)  # as many tasks as actors, or more: unchanged
    assert cpu_pool_for_tasks(2, 1.0, 40) == (2, 1.0)
    assert cpu_pool_for_tasks(2, 1.0, 0) == (2, 1.0)


def test_a_model_config_is_read_with_its_format_and_task_checked(tmp_path: Path) -> None:
    """The one reader of a model's config.json (inference and calibrate): one-line errors naming the file."""
    cfg = tmp_path / artefact.CONFIG
    with pytest.raises(InputError, match=r"config.json: no trained model here"):
        artefact.read_config(str(tmp_path), "icecube-direction")
    cfg.write_text("{not json")
    with pytest.raises(InputError, match=r"config.json: not a model config"):
        artefact.read_config(str(tmp_path), "icecube-direction")
    cfg.write_text(json.dumps({"format": "something else", "task": "icecube-direction"}))
    with pytest.raises(InputError, match=r"a 'something else' file, expected 'neutrino-ray torch model v1'"):
        artefact.read_config(str(tmp_path), "icecube-direction")
    cfg.write_text(json.dumps({"format": artefact.FORMAT, "task": "nova-numu-cc", "data": {}}))
    with pytest.raises(InputError, match=r"a model for task 'nova-numu-cc', expected one for 'icecube-direction'"):
        artefact.read_config(str(tmp_path), "icecube-direction")
    assert artefact.read_config(str(tmp_path), ("nova-numu-cc", "nova-mode"))["data"] == {}
