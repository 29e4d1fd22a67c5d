"""``neutrino-ray bench nova``: issue 27's two NOvA throughput figures, measured here and never asserted in a test.

- The simulator: events per CPU-second of :func:`~neutrino_ray.nova.simulate.simulate_events` in this process
  (CPU time, so that other processes' load is not counted against it, though a loaded machine still slows it),
  the median of ``repeats`` runs after a warm-up. Goal: >= 1,000 events per core.
- ``nova predict`` end to end (scan, read and decode the HDF5 slices, score on the actor pool, write the parts
  and the parquet) with a model of random weights (throughput does not depend on them) on the machine's CPUs,
  Ray already started: events per wall second. Goal for ``small``: >= 1,000 events/s on 2 cores.

Each figure is printed with the load average (``os.getloadavg``): on a shared machine only side-by-side ratios
are comparable. The test data are simulated once under ``data`` and reused while their manifest matches.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from typing import Any

from neutrino_ray import runtime, storage

SIMULATOR_GOAL = 1_000.0  # simulated events per CPU-second (issue 27)
PREDICT_GOAL = 1_000.0  # events/s end to end for `small` on 2 cores (issue 27)
EVENTS_PER_FILE = 10_000


def _load() -> str:
    return "load average " + ", ".join(f"{x:.1f}" for x in os.getloadavg())


def bench_simulator(events: int, repeats: int, seed: int = 11) -> dict[str, Any]:
    """Simulated events per CPU-second: ``repeats`` runs of ``events`` events (seeds seed, seed + 1, ...)."""
    from neutrino_ray.nova.simulate import simulate_events

    simulate_events(seed, 100)  # warm-up: imports and first-call costs
    rates = []
    for r in range(repeats):
        c0 = time.process_time()
        simulate_events(seed + r, events)
        rates.append(events / max(time.process_time() - c0, 1e-9))
    return {"events": events, "repeats": repeats, "events_per_cpu_second": [round(x, 1) for x in rates],
            "median": round(statistics.median(rates), 1), "goal": SIMULATOR_GOAL, "load": _load()}


def _dataset(data: str, events: int, seed: int) -> None:
    from neutrino_ray.nova.simwrite import simulate_dataset

    files = -(-events // EVENTS_PER_FILE)
    per_file = -(-events // files)
    try:
        m = storage.read_manifest(data)
        if (m.get("kind"), m.get("events"), m.get("seed")) == ("nova-simulate", files * per_file, seed):
            print(f"reusing {data} ({files * per_file:,} events)")
            return
    except (FileNotFoundError, storage.StorageError, ValueError):
        pass
    simulate_dataset(data, files, per_file, seed=seed)


def bench_predict(events: int, data: str, model: str, seed: int = 24) -> dict[str, Any]:
    """``nova predict`` of ``events`` simulated events with a ``model`` of random weights: events per wall second."""
    from neutrino_ray.gpubench import random_nova_model
    from neutrino_ray.nova.predict import Scoring, predict

    _dataset(data, events, seed)
    runtime.init_ray()  # Ray already started: its start-up (tens of seconds on a loaded 2-core machine) is not timed
    with tempfile.TemporaryDirectory(prefix="bench-nova-") as tmp:
        uri = random_nova_model(tmp, model)
        t0 = time.perf_counter()
        m = predict(data, f"{tmp}/out", Scoring(model=uri))
        wall = time.perf_counter() - t0
    return {"model": model, "events": m["events"], "wall_seconds": round(wall, 2),
            "events_per_second": round(m["events"] / wall, 1), "goal": PREDICT_GOAL if model == "small" else None,
            "load": _load()}


def bench_nova(events: int, sim_events: int, repeats: int, data: str, models: list[str]) -> dict[str, Any]:
    """Both figures, printed as they come; returns them."""
    sim = bench_simulator(sim_events, repeats)
    print(f"simulator: {sim['median']:,.0f} events per CPU-second (median of {repeats} runs of {sim_events:,}: "
          f"{', '.join(f'{x:,.0f}' for x in sim['events_per_cpu_second'])}; goal >= {SIMULATOR_GOAL:,.0f}); "
          f"{sim['load']}")
    out: dict[str, Any] = {"simulator": sim, "predict": []}
    for model in models:
        p = bench_predict(events, data, model)
        out["predict"].append(p)
        goal = f"; goal >= {PREDICT_GOAL:,.0f}" if p["goal"] else ""
        print(f"nova predict {model}: {p['events']:,} events in {p['wall_seconds']:.1f} s, "
              f"{p['events_per_second']:,.0f} events/s end to end on {os.cpu_count()} CPUs{goal}; {p['load']}")
    return out
