"""Fault-injection helpers: stall one unit of work at a chosen point so a test can kill what runs it.

A *kill point* stalls exactly once, after ``after`` calls have passed it (across every process of the
cluster: calls are counted as files in a shared folder), writing the id of the Ray node and the pid that
stalled into ``DIR/stalled``. The test waits for that file and kills the node or the process in the
middle of the call. A stalled call that is not killed within ``seconds`` writes ``DIR/survived``.

Run as a script, this module is a driver that installs a kill point in the IceCube CLI and then runs
the CLI: ``python tests/faults.py DIR inference|publish AFTER -- icecube predict ...``.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

STALL_SECONDS = 120.0


def kill_point(folder: str, after: int = 0, seconds: float = STALL_SECONDS) -> None:
    """Count this call; the first call with at least ``after`` calls before it stalls (and only that one)."""
    Path(folder, f"call-{uuid.uuid4().hex}").touch()
    if sum(1 for p in os.listdir(folder) if p.startswith("call-")) <= after:
        return
    try:
        fd = os.open(os.path.join(folder, "stalled"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    try:
        import ray

        node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
    except Exception:  # not in a Ray process
        node = ""
    os.write(fd, f"{node} {os.getpid()}".encode())
    os.close(fd)
    time.sleep(seconds)
    Path(folder, "survived").touch()


def stalled(folder: str, fn: Callable[..., Any], after: int = 0) -> Callable[..., Any]:
    """``fn`` with a kill point before it."""
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        kill_point(folder, after)
        return fn(*args, **kwargs)
    return wrapped


def stalling_scorer(folder: str, after: int) -> type:
    """IceCube's model actor with a kill point in front of each call."""
    from neutrino_ray.icecube.scoring import DirectionScorer

    class StallingScorer(DirectionScorer):
        def __call__(self, batch: Any) -> Any:
            kill_point(folder, after)
            return super().__call__(batch)

    return StallingScorer


def wait_for_stall(folder: str, timeout: float = 180.0) -> tuple[str, int]:
    """(node id, pid) of the stalled call, once it is stalled."""
    path = Path(folder, "stalled")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_size:
            node, pid = path.read_text().split()
            return node, int(pid)
        time.sleep(0.05)
    raise TimeoutError(f"no call reached the kill point in {folder} within {timeout:.0f} s")


def _install(folder: str, phase: str, after: int) -> None:
    """Put a kill point in LineFit's Ray Data UDF (``inference``) or before each publish move (``publish``)."""
    import ray.cloudpickle

    from neutrino_ray.icecube import scoring
    from neutrino_ray.storage import publish

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/
    if phase == "inference":
        scoring.linefit_block = stalled(folder, scoring.linefit_block, after)  # type: ignore[assignment]
    elif phase == "publish":
        publish._move = stalled(folder, publish._move, after)  # type: ignore[assignment]
    else:
        raise SystemExit(f"unknown phase {phase!r}")


if __name__ == "__main__":
    folder, phase, after, sep, *cli_args = sys.argv[1:]
    assert sep == "--", "usage: faults.py DIR inference|publish AFTER -- CLI ARGS"
    _install(folder, phase, int(after))
    from neutrino_ray.cli import main

    sys.exit(main(cli_args))
