"""The one inference layer's pure parts (its Ray Data and artefact paths are tested in test_inference_pipelines.py
and with each detector's predict)."""

from __future__ import annotations

from neutrino_ray.inference import cpu_pool_for_tasks


def test_a_cpu_pool_with_fewer_slices_than_actors_gives_the_idle_actors_cpus_to_the_busy_ones() -> None:
    assert cpu_pool_for_tasks(2, 1.0, 1) == (1, 2.0)  # a small split, one task: one actor, both CPUs as threads
    assert cpu_pool_for_tasks(8, 1.0, 3) == (3, 2.0)  # 8 CPUs over 3 tasks: 2 threads each, never more CPUs
    assert cpu_pool_for_tasks(4, 2.0, 1) == (1, 8.0)
    assert cpu_pool_for_tasks(3, 1.0, 2) == (2, 1.0)  # 1.5 CPUs each rounds down to the asked 1
    assert cpu_pool_for_tasks(2, 1.0, 2) == (2, 1.0)  # as many tasks as actors, or more: unchanged
    assert cpu_pool_for_tasks(2, 1.0, 40) == (2, 1.0)
    assert cpu_pool_for_tasks(2, 1.0, 0) == (2, 1.0)
