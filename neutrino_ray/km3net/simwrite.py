"""Write simulated KM3NeT feature files (``OUT/km3net_{i}.h5``), one Ray task per file, published atomically."""

from __future__ import annotations

import io
import logging
import math
import time
from typing import Any

import ray

from neutrino_ray import progress, runtime, storage
from neutrino_ray.errors import InputError

log = logging.getLogger("neutrino_ray")


@ray.remote
def _simulate_file(staged_uri: str, seed: int, n_events: int, first_event_id: int) -> int:
    from neutrino_ray.km3net.simulate import simulate_events, write_h5

    table = simulate_events(seed, n_events, first_event_id)
    buf = io.BytesIO()
    write_h5(buf, table)
    storage.write_bytes(staged_uri, buf.getvalue())
    return len(table)


def simulate_dataset(out: str, events: int, files: int, seed: int, command: list[str] | None = None) -> dict[str, Any]:
    """``events`` simulated events split over ``files`` HDF5 files under ``out``."""
    if events < 1 or files < 1 or files > events:
        raise InputError("need events >= files >= 1")
    runtime.init_ray()
    started = time.time()
    per_file = math.ceil(events / files)
    with storage.Output(out, command=command, started=started) as output:
        refs, sizes = [], []
        for i in range(files):
            n = min(per_file, events - i * per_file)
            name = f"km3net_{i + 1}.h5"
            refs.append((name, _simulate_file.remote(output.staged(name), seed * 1_000_003 + i, n, i * per_file)))
            sizes.append(n)
        counts = progress.ray_get([ref for _, ref in refs], "simulate km3net", sizes)
        rows = {name: n for (name, _), n in zip(refs, counts, strict=True)}
        manifest = output.commit(kind="km3net-simulate", seed=seed, rows=rows, events=sum(rows.values()))
    log.info("simulated %d KM3NeT events in %d files into %s", manifest["events"], files, out)
    return manifest
