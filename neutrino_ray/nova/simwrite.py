"""Write simulated NOvA files (``OUT/neutrino{i}.h5``, i = 1..F), one Ray task per file, published atomically."""

from __future__ import annotations

import io
import logging
import time
from typing import Any

import ray

from neutrino_ray import progress, runtime, storage
from neutrino_ray.errors import InputError

log = logging.getLogger("neutrino_ray")


@ray.remote
def _simulate_file(staged_uri: str, seed: int, n_events: int, first_index: int, run: int, mix: Any) -> int:
    from neutrino_ray.nova.format import write_h5
    from neutrino_ray.nova.simulate import simulate_events

    maps, fields = simulate_events(seed, n_events, mix, first_index=first_index, run=run)
    buf = io.BytesIO()
    write_h5(buf, maps, fields)
    storage.write_bytes(staged_uri, buf.getvalue())
    return n_events


def simulate_dataset(out: str, files: int, events_per_file: int, seed: int, mix: str | None = None,
                     command: list[str] | None = None) -> dict[str, Any]:
    """``files`` files of ``events_per_file`` simulated events each under ``out``."""
    from neutrino_ray.nova.simulate import Mix

    if files < 1 or events_per_file < 1:
        raise InputError("need --files >= 1 and --events-per-file >= 1")
    try:
        parsed = Mix.parse(mix) if mix else Mix()
    except ValueError as e:
        raise InputError(f"--mix: {e}") from e
    runtime.init_ray()
    started = time.time()
    with storage.Output(out, command=command, started=started) as output:
        refs = []
        for i in range(1, files + 1):
            name = f"neutrino{i}.h5"
            refs.append((name, _simulate_file.remote(output.staged(name), seed * 1_000_003 + i, events_per_file,
                                                     (i - 1) * events_per_file, 10_000 + i, parsed)))
        counts = progress.ray_get([ref for _, ref in refs], "simulate nova", [events_per_file] * len(refs))
        rows = {name: n for (name, _), n in zip(refs, counts, strict=True)}
        manifest = output.commit(kind="nova-simulate", seed=seed, mix=str(parsed), rows=rows,
                                 events=sum(rows.values()))
    log.info("simulated %d NOvA events in %d files into %s", manifest["events"], files, out)
    return manifest
