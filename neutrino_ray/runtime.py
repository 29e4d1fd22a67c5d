"""The one Ray runtime helper: connect to ``RAY_ADDRESS`` when set, else start a local Ray."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import ray

from neutrino_ray import logs
from neutrino_ray.errors import InputError

log = logging.getLogger("neutrino_ray")


def init_ray(num_cpus: int | None = None, dashboard: bool = False, **kwargs: Any) -> dict[str, Any]:
    """Connect to the cluster named by ``RAY_ADDRESS`` or start a new local one; idempotent.

    Workers of a local Ray inherit this process's environment (S3 endpoint and credentials); a
    cluster's workers read theirs from their own pods, so no secret travels in a task.
    ``dashboard`` starts a local Ray with its dashboard, which hosts the state API that Ray Train's
    controller polls. Returns the cluster resources so callers can size their work.
    """
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, log_to_driver=True, **kwargs)
        else:
            # "local": a new Ray of this process's own, never another Ray found running on this machine.
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=dashboard, log_to_driver=True, **kwargs)
        ctx = ray.data.DataContext.get_current()
        # Ray Data's own bars at -v only: by default our progress lines say the same with a total and an ETA.
        ctx.enable_progress_bars = logs.level() == logs.VERBOSE
        logs.quiet_ray()  # ray.init resets Ray's loggers to INFO
        ctx.print_on_execution_start = False
    return dict(ray.cluster_resources())


def cpu_count() -> int:
    """CPUs in the Ray cluster (at least 1)."""
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def actor_pool_size(actors: int | None, cpus_per_actor: float, gpus_per_actor: float,
                    resource_wait_minutes: float = 0.0) -> int:
    """Actors for an inference pool: as asked, else one per GPU share (GPU actors) or per CPU share.

    GPU actors wait for their GPUs first (at least one actor's without ``actors``), at most
    ``resource_wait_minutes`` (0: refuse at once when the cluster lacks them); see :func:`wait_for_gpus`."""
    if gpus_per_actor > 0:
        wait_for_gpus(actors or 1, gpus_per_actor, cpus_per_actor, resource_wait_minutes,
                      f"--actors {actors} x --gpus-per-actor {gpus_per_actor:g}" if actors
                      else f"--gpus-per-actor {gpus_per_actor:g}")
    if actors:
        return actors
    resources = ray.cluster_resources()
    if gpus_per_actor > 0:
        return max(1, int(resources.get("GPU", 0) // gpus_per_actor))
    return max(1, int(resources.get("CPU", 1) // cpus_per_actor))


POLL_SECONDS = 1.0


def _gpus(resources: dict[str, Any]) -> float:
    return float(resources.get("GPU", 0))


def wait_for_gpus(bundles: int, gpus: float, cpus: float, minutes: float, what: str) -> None:
    """Wait until the cluster can hold ``bundles`` x (``gpus`` GPUs, ``cpus`` CPUs) at once, at most ``minutes``,
    then check that CUDA sees the GPUs Ray hands out; a one-line :class:`InputError` otherwise.

    The wait is a placement group of those bundles: a pending resource demand, which is what the Ray
    autoscaler (KubeRay's included) scales a GPU worker group up for. It is removed once placed, before
    the work asks for the same resources. In each bundle a probe task checks ``torch.cuda`` against the GPU
    ids Ray assigned: a node that declares GPUs CUDA cannot see (a CPU torch build, a missing driver, a
    wrong ``num-gpus``) stops the run here with its address, before NCCL or a model fails on it.
    ``minutes`` 0 refuses at once when the cluster has too few GPUs."""
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    need = bundles * gpus
    if minutes <= 0 and _gpus(ray.cluster_resources()) < need:
        raise InputError(f"{what} need {need:g} GPUs; the cluster has {_gpus(ray.cluster_resources()):g} "
                         "(--resource-wait-minutes 0: not waiting for the autoscaler)")
    pg = placement_group([{"GPU": gpus, "CPU": cpus}] * bundles)
    try:
        start = time.monotonic()
        ready: list[Any] = []
        deadline = start + 60 * minutes
        while not ready:
            ready, _ = ray.wait([pg.ready()], timeout=max(0.0, min(POLL_SECONDS * 10, deadline - time.monotonic())))
            if not ready and time.monotonic() >= deadline:
                raise InputError(f"{what} need {need:g} GPUs (with {cpus:g} CPUs each of {bundles}); after waiting "
                                 f"{minutes:g} min for the autoscaler the cluster has "
                                 f"{_gpus(ray.cluster_resources()):g} GPUs")
        waited = time.monotonic() - start
        if waited > 1:
            log.info("%s: the cluster has the GPUs after %.0f s", what, waited)
        probes = [_cuda_probe.options(num_cpus=0, num_gpus=gpus, scheduling_strategy=PlacementGroupSchedulingStrategy(
            pg, placement_group_bundle_index=i)).remote() for i in range(bundles)]
        for r in ray.get(probes):
            if r["problem"]:
                raise InputError(f"the worker on node {r['node']} ({r['node_id']}) was given GPU {r['gpu_ids']} "
                                 f"(CUDA_VISIBLE_DEVICES={r['visible']!r}) that CUDA cannot see: {r['problem']}")
    finally:
        remove_placement_group(pg)


@ray.remote(max_retries=0)
def _cuda_probe() -> dict[str, Any]:
    """What CUDA sees of the GPUs Ray assigned to this task."""
    import torch

    ids = ray.get_gpu_ids()
    problem = ""
    if torch.version.cuda is None:
        problem = f"torch {torch.__version__} is built without CUDA"
    elif not torch.cuda.is_available() or torch.cuda.device_count() < max(1, len(ids)):
        problem = f"torch.cuda sees {torch.cuda.device_count()} device(s)"
    return {"node": ray.util.get_node_ip_address(), "node_id": ray.get_runtime_context().get_node_id(),
            "gpu_ids": [str(i) for i in ids], "visible": os.environ.get("CUDA_VISIBLE_DEVICES"), "problem": problem}
