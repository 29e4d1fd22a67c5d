"""The one Ray runtime helper: connect to ``RAY_ADDRESS`` when set, else start a local Ray."""

from __future__ import annotations

import logging
import os
from typing import Any

import ray

from neutrino_ray import logs

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


def actor_pool_size(actors: int | None, cpus_per_actor: float, gpus_per_actor: float) -> int:
    """Actors for an inference pool: as asked, else one per GPU share (GPU actors) or per CPU share."""
    if actors:
        return actors
    resources = ray.cluster_resources()
    if gpus_per_actor > 0:
        return max(1, int(resources.get("GPU", 0) // gpus_per_actor))
    return max(1, int(resources.get("CPU", 1) // cpus_per_actor))
