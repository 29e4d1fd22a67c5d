"""Shared fixtures: one local Ray for the in-process tests."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("NEUTRINO_RAY_PROGRESS", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")


@pytest.fixture(scope="session", autouse=True)
def _local_ray() -> Iterator[None]:
    """Tests that call Ray share one local instance (started lazily by neutrino_ray.runtime)."""
    os.environ.pop("RAY_ADDRESS", None)
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()
