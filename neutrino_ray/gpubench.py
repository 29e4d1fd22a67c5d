"""``neutrino-ray bench gpu``: the GPU check, training half (issue 23).

On one CUDA GPU it trains ``dynedge``, ``transformer-base`` (IceCube) and the NOvA ``medium`` CNN for a fixed
number of steps each, with the scaffold's own training step (:func:`~neutrino_ray.training.train_step`:
precision policy, gradient scaler, gradient clipping) and batches copied from pinned memory without
blocking, and prints per model: events/s (after warm-up steps), peak GPU memory
(``torch.cuda.max_memory_allocated``) and GPU utilisation (``torch.cuda.utilization``, which needs the
``nvidia-ml-py`` package (pynvml); sampled every 0.2 s while the timed steps run).

Its data are simulated before any timing (IceCube: one batch file of events, featurised at each model's
training pulse cap; NOvA: pixel maps), in a temporary folder; nothing is downloaded. Without CUDA it
stops at once with one line. It runs in well under 4 minutes on an L4-class GPU by construction (a few
hundred steps); see docs/development.md for the figures, or for the note that none were measured yet.
"""

from __future__ import annotations

import tempfile
import threading
import time
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from neutrino_ray import training
from neutrino_ray.errors import InputError

MODELS = ("dynedge", "transformer-base", "nova-medium")
BATCH = {"dynedge": 512, "transformer-base": 256, "nova-medium": 256}


def check_cuda() -> torch.device:
    if torch.version.cuda is None or not torch.cuda.is_available():
        why = (f"torch {torch.__version__} is built without CUDA" if torch.version.cuda is None
               else "torch.cuda.is_available() is False (no GPU visible, or no driver)")
        raise InputError(f"bench gpu needs a CUDA GPU: {why}")
    return torch.device("cuda", torch.cuda.current_device())


class _Utilisation:
    """GPU utilisation (%) sampled in a thread while the timed steps run; None without pynvml."""

    def __init__(self, device: torch.device):
        self.device, self.error = device, ""
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                self.samples.append(float(torch.cuda.utilization(self.device)))
            except Exception as e:  # pynvml missing or unsupported: say so, once
                self.error = f"{type(e).__name__}: {e}"
                return

    def __enter__(self) -> _Utilisation:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def mean(self) -> float | None:
        return float(np.mean(self.samples)) if self.samples else None


def _icecube_batches(size: str, tmp: str, n_events: int, batch: int) -> tuple[Any, list[Any]]:
    from neutrino_ray.icecube import data as icdata
    from neutrino_ray.icecube import pipeline
    from neutrino_ray.icecube.architectures import default_max_pulses
    from neutrino_ray.icecube.simwrite import simulate_dataset
    from neutrino_ray.icecube.train import DirectionTask

    data = f"{tmp}/icecube"
    if not icdata.list_batches(data, "test"):
        simulate_dataset(data, n_events, train_batches=0, test_batches=1, seed=23)
    cap = default_max_pulses(size)
    meta = icdata.load_meta(data, "test")
    geometry = icdata.load_geometry(data)
    tasks = list(icdata.iter_split_tasks(data, "test", 2_000, meta=meta))
    events = pa.concat_tables(pipeline.read_featurise(t, geometry, cap) for t in pipeline.task_tables(tasks))
    truth = icdata.split_truth(data, "test").sort_by("event_id")
    events = events.sort_by("event_id")
    rows = np.searchsorted(truth.column("event_id").to_numpy(), events.column("event_id").to_numpy())
    events = events.append_column("azimuth", truth.column("azimuth").take(rows))
    events = events.append_column("zenith", truth.column("zenith").take(rows))
    task = DirectionTask(size, max_pulses=cap)
    return task, [events.slice(lo, batch) for lo in range(0, len(events) - batch + 1, batch)]


def _nova_batches(n_events: int, batch: int) -> tuple[Any, list[Any]]:
    from neutrino_ray.nova import targets
    from neutrino_ray.nova.simulate import simulate_events
    from neutrino_ray.nova.train import NovaTask

    images, fields = simulate_events(29, n_events)
    y, ok = targets.targets("numu-cc", fields)
    x = torch.from_numpy(np.ascontiguousarray(images[ok]))
    t = torch.from_numpy(y[ok])
    return NovaTask("numu-cc", "medium"), [(x[lo:lo + batch], t[lo:lo + batch])
                                           for lo in range(0, len(t) - batch + 1, batch)]


def _time_model(model: str, task: Any, batches: list[Any], device: torch.device, precision: str, steps: int,
                warmup: int) -> dict[str, Any]:
    torch.manual_seed(0)
    net = task.build_model().to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    scaler = training.grad_scaler(precision, device)

    def step(i: int) -> None:
        b = batches[i % len(batches)]
        if model == "nova-medium":
            b = {"x": training.to_device(b[0], device), "y": training.to_device(b[1], device)}
        else:
            b = task.collate(b, device)
        training.train_step(net, task, b, opt, scaler, precision, device, 1.0)

    for i in range(warmup):
        step(i)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    with _Utilisation(device) as util:
        t0 = time.perf_counter()
        for i in range(steps):
            step(i)
        torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
    out = {"events_per_second": steps * BATCH[model] / seconds, "batch": BATCH[model], "steps": steps,
           "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30,
           "utilisation_percent": util.mean, "utilisation_error": util.error, "precision": precision}

    torch.cuda.empty_cache()
    return out


def bench_gpu(steps: int = 100, warmup: int = 10, precision: str = "auto") -> dict[str, dict[str, Any]]:
    device = check_cuda()  # before anything else: without CUDA, nothing is generated
    chosen = training.precision_policy(precision, device)
    name = torch.cuda.get_device_name(device)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        prepared = {}
        t0 = time.perf_counter()
        for model in MODELS:  # all data first: the timing below never includes generation
            if model == "nova-medium":
                prepared[model] = _nova_batches(BATCH[model] * 8, BATCH[model])
            else:
                prepared[model] = _icecube_batches(model, tmp, BATCH[model] * 8, BATCH[model])
        print(f"data generated in {time.perf_counter() - t0:.0f} s; {name}, precision {chosen} (asked: {precision})",
              flush=True)
        for model, (task, batches) in prepared.items():
            results[model] = _time_model(model, task, batches, device, chosen, steps, warmup)
            results[model]["gpu"] = name
    print(f"{'model':<18}{'batch':>6}{'steps':>7}{'events/s':>11}{'peak GiB':>10}{'util %':>8}")
    for model, r in results.items():
        shown = f"{r['utilisation_percent']:.0f}" if r["utilisation_percent"] is not None else "n/a"
        print(f"{model:<18}{r['batch']:>6}{r['steps']:>7}{r['events_per_second']:>11,.0f}"
              f"{r['peak_memory_gib']:>10.2f}{shown:>8}")
    errors = {r["utilisation_error"] for r in results.values() if r["utilisation_error"]}
    if errors:
        print(f"utilisation not measured: {'; '.join(errors)} (install nvidia-ml-py)")
    return results
