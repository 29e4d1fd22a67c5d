"""``neutrino-ray bench gpu``: the GPU check. Training half (issue 23) below; the inference half (issue 24,
:func:`bench_gpu_inference`) runs the real ``icecube predict --pipeline split`` and ``nova predict`` on simulated
events with GPU actors (CPU actors with ``--device cpu``, the seam the default suite runs) and samples the GPU's
utilisation from the driver (:class:`Utilisation`).

Training half.

On one CUDA GPU it trains ``dynedge``, ``transformer-base`` (IceCube) and the NOvA ``medium`` CNN for a fixed
number of steps each, with the scaffold's own training step (:func:`~neutrino_ray.training.train_step`:
precision policy, gradient scaler, gradient clipping) and batches copied from pinned memory without
blocking, and prints per model: events/s (after warm-up steps), peak GPU memory
(``torch.cuda.max_memory_allocated``) and GPU utilisation (``torch.cuda.utilization``, which needs the
``nvidia-ml-py`` package (pynvml), else ``nvidia-smi``; sampled every 0.2 s while the timed steps run).

Its data are simulated before any timing (IceCube: one batch file of events, featurised at each model's
training pulse cap; NOvA: pixel maps), in a temporary folder; nothing is downloaded. Without CUDA it
stops at once with one line. It runs in well under 4 minutes on an L4-class GPU by construction (a few
hundred steps); see docs/cluster.md for the figures, or for the note that none were measured yet.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import threading
import time
from typing import Any

import numpy as np
import torch

from neutrino_ray import artefact, devices, training
from neutrino_ray.errors import InputError

MODELS = ("dynedge", "transformer-base", "nova-medium")
BATCH = {"dynedge": 512, "transformer-base": 256, "nova-medium": 256}


def check_cuda() -> torch.device:
    if torch.version.cuda is None or not torch.cuda.is_available():
        why = (f"torch {torch.__version__} is built without CUDA" if torch.version.cuda is None
               else "torch.cuda.is_available() is False (no GPU visible, or no driver)")
        raise InputError(f"bench gpu needs a CUDA GPU: {why}")
    return torch.device("cuda", torch.cuda.current_device())


UTILISATION_PERIOD = 0.2  # seconds between utilisation samples


def _nvidia_smi_utilisation(index: int) -> float:
    """GPU ``index``'s utilisation (%) from ``nvidia-smi`` (the fallback where pynvml is not installed). ``index``
    counts the GPUs this process sees; nvidia-smi counts all of them, so it is mapped through
    ``CUDA_VISIBLE_DEVICES`` (indices or UUIDs, both of which ``--id`` takes)."""
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    gpu = visible[index] if index < len(visible) else str(index)
    r = subprocess.run(["nvidia-smi", f"--id={gpu}", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                       capture_output=True, text=True, timeout=5, check=True)
    return float(r.stdout.strip().splitlines()[0])


class Utilisation:
    """GPU utilisation (%) sampled every :data:`UTILISATION_PERIOD` s from a thread of this (the driver's) process
    while the work runs, with each sample's time: ``torch.cuda.utilization`` (NVML through the ``nvidia-ml-py``
    package), else ``nvidia-smi --query-gpu=utilization.gpu``. NVML reports the share of the last sample period
    in which a kernel ran on the GPU, whichever process launched it, so a driver that runs no kernels itself sees
    its Ray actors' work. Without a CUDA device, or where neither source answers, :attr:`unavailable` says why and
    there are no samples: a CPU run never reports a number."""

    def __init__(self, device: torch.device):
        self.device = device
        self.samples: list[tuple[float, float]] = []  # (time.perf_counter(), percent)
        self.unavailable: str | None = None
        self.source = ""
        self._read: Any = None
        if device.type != "cuda":
            self.unavailable = f"no CUDA device: the work ran on {device.type}"
        else:
            index: int | None = device.index  # None: the current device
            if index is None:
                index = torch.cuda.current_device()
            reasons = []
            for source, read in (("torch.cuda.utilization", lambda: float(torch.cuda.utilization(index))),
                                 ("nvidia-smi", lambda: _nvidia_smi_utilisation(index))):
                try:
                    read()
                except Exception as e:  # pynvml missing, no nvidia-smi, unsupported GPU: try the next, then say so
                    reasons.append(f"{source}: {type(e).__name__}: {e}")
                    continue
                self.source, self._read = source, read
                break
            else:
                self.unavailable = "; ".join(reasons)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(UTILISATION_PERIOD):
            try:
                self.samples.append((time.perf_counter(), self._read()))
            except Exception as e:  # a source that stopped answering: keep what was sampled, say why once
                self.unavailable = self.unavailable or f"{self.source} stopped answering: {type(e).__name__}: {e}"
                return

    def __enter__(self) -> Utilisation:
        if self._read is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def window(self, start: float | None = None, end: float | None = None) -> dict[str, Any]:
        """Mean and median utilisation (%) of the samples taken between ``start`` and ``end``
        (``time.perf_counter()``; None: unbounded), their number and source; mean and median are None, and
        ``unavailable`` says why, where there is no sample."""
        got = [p for t, p in self.samples if (start is None or t >= start) and (end is None or t <= end)]
        why = self.unavailable if self.unavailable or got else "no sample in the window (shorter than the period)"
        return {"mean_percent": float(np.mean(got)) if got else None,
                "median_percent": float(np.median(got)) if got else None,
                "samples": len(got), "period_seconds": UTILISATION_PERIOD, "source": self.source or None,
                "unavailable": None if got else why}

    @property
    def mean(self) -> float | None:
        return self.window()["mean_percent"]


def _icecube_batches(size: str, tmp: str, n_events: int, batch: int) -> tuple[Any, list[Any]]:
    from neutrino_ray.icecube import data as icdata
    from neutrino_ray.icecube import pipeline
    from neutrino_ray.icecube.architectures import default_max_pulses
    from neutrino_ray.icecube.metrics import with_true_direction
    from neutrino_ray.icecube.simwrite import simulate_dataset
    from neutrino_ray.icecube.train import DirectionTask

    data = f"{tmp}/icecube"
    if not icdata.list_batches(data, "test"):
        simulate_dataset(data, n_events, train_batches=0, test_batches=1, seed=23)
    cap = default_max_pulses(size)
    geometry = icdata.load_geometry(data)
    plan = pipeline.plan_split(data, "test", 2_000, in_process=True)
    task = DirectionTask(size, max_pulses=cap)
    events = pipeline.read_featurise(pipeline.SplitPlan.table(plan.slices), geometry, cap, task.seeded)
    truth = icdata.split_truth(data, "test")
    events = with_true_direction(events.sort_by("event_id"), truth)
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
    scaler = devices.grad_scaler(precision, device)

    def step(i: int) -> None:
        b = batches[i % len(batches)]
        if model == "nova-medium":
            b = {"x": devices.to_device(b[0], device), "y": devices.to_device(b[1], device)}
        else:
            b = task.collate(b, device)
        training.train_step(net, task, b, opt, scaler, precision, device, 1.0)

    for i in range(warmup):
        step(i)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    with Utilisation(device) as util:
        t0 = time.perf_counter()
        for i in range(steps):
            step(i)
        torch.cuda.synchronize(device)
        seconds = time.perf_counter() - t0
    out = {"events_per_second": steps * BATCH[model] / seconds, "batch": BATCH[model], "steps": steps,
           "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30,
           "utilisation_percent": util.mean, "utilisation_error": util.window()["unavailable"] or "",
           "precision": precision}

    torch.cuda.empty_cache()
    return out


def bench_gpu(steps: int = 100, warmup: int = 10, precision: str = "auto",
              out: str | None = None) -> dict[str, dict[str, Any]]:
    """The training half; with ``out``, its figures also go to ``OUT/bench-gpu-training.json``."""
    device = check_cuda()  # before anything else: without CUDA, nothing is generated
    chosen = devices.precision_policy(precision, device)
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
    if out is not None:
        _write_report(out, TRAINING_REPORT, {"half": "training", "gpu": name, "precision": chosen, "models": results})
    return results


# ---------------------------------------------------------------------------------------------------
# The inference half (issue 24): the real predict commands, timed, with the GPU's utilisation

TRAINING_REPORT = "bench-gpu-training.json"
INFERENCE_REPORT = "bench-gpu-inference.json"
DEVICES = ("cuda", "cpu")
INFERENCE_EVENTS = {"icecube": 200_000, "nova": 50_000}  # the workloads
INFERENCE_MODELS = {"icecube": "transformer-base", "nova": "medium"}
ICECUBE_EVENTS_PER_BATCH = 50_000  # simulated batch files: several, so simulation and writing spread over the CPUs
NOVA_EVENTS_PER_FILE = 5_000
UTILISATION_GOAL = 80.0  # % while scoring transformer-base (issue 24)
TIME_GOAL_SECONDS = 240.0  # the whole inference half on one GPU


def _write_report(out: str, name: str, report: dict[str, Any]) -> str:
    from neutrino_ray import storage

    uri = storage.join(out, name)
    storage.write_bytes(uri, json.dumps({"code_version": storage.code_version(), **report}, indent=2).encode())
    return uri


def random_nova_model(out: str, size: str) -> str:
    """A NOvA model artefact (ν_μ CC) with freshly initialised weights: throughput does not depend on them."""
    from neutrino_ray import storage
    from neutrino_ray.nova.train import NovaTask

    task = NovaTask("numu-cc", size)
    torch.manual_seed(0)
    return artefact.write_model(storage.join(out, f"random-nova-{size}"), task, task.build_model())


def _simulate(tmp: str, icecube_events: int, nova_events: int) -> tuple[str, str, int, int, float]:
    """Both detectors' inputs, simulated in parallel Ray tasks (IceCube: batch files of up to
    :data:`ICECUBE_EVENTS_PER_BATCH` events, each simulated in parts; NOvA: files of up to
    :data:`NOVA_EVENTS_PER_FILE`). Returns the folders, the event counts and the seconds it took."""
    from neutrino_ray.icecube.simwrite import simulate_dataset as simulate_icecube
    from neutrino_ray.nova.simwrite import simulate_dataset as simulate_nova

    t0 = time.perf_counter()
    ic_batches = -(-icecube_events // ICECUBE_EVENTS_PER_BATCH)
    ic_per_batch = -(-icecube_events // ic_batches)
    nova_files = -(-nova_events // NOVA_EVENTS_PER_FILE)
    nova_per_file = -(-nova_events // nova_files)
    simulate_icecube(f"{tmp}/icecube", ic_per_batch, train_batches=0, test_batches=ic_batches, seed=24)
    simulate_nova(f"{tmp}/nova", nova_files, nova_per_file, seed=24)
    return (f"{tmp}/icecube", f"{tmp}/nova", ic_batches * ic_per_batch, nova_files * nova_per_file,
            time.perf_counter() - t0)


def _timed(workload: str, model: str, run: Any, device: torch.device) -> dict[str, Any]:
    """``run()`` (a predict command; returns (events, its manifest, the scoring window's (start, end) offsets
    from the call, or None for the whole call)) with the GPU sampled throughout; events/s and utilisation over
    the scoring window."""
    with Utilisation(device) as util:
        t0 = time.perf_counter()
        events, manifest, window = run()
        wall = time.perf_counter() - t0
    lo, hi = (t0 + window[0], t0 + window[1]) if window is not None else (t0, t0 + wall)
    return {"workload": workload, "model": model, "events": events, "wall_seconds": round(wall, 3),
            "score_seconds": round(hi - lo, 3), "events_per_second": events / (hi - lo),
            "end_to_end_events_per_second": events / wall, "utilisation": util.window(lo, hi),
            "utilisation_whole_run": util.window(t0, t0 + wall),
            # every sample, seconds from the command's start: the ramp (actor start, model load) shows here
            "utilisation_samples": [[round(t - t0, 2), p] for t, p in util.samples],
            "manifest": {k: manifest.get(k) for k in ("stage_seconds", "max_pulses", "batch_size", "actors",
                                                     "cpus_per_actor", "gpus_per_actor", "n_parameters")
                         if k in manifest}}


def bench_gpu_inference(out: str, device: str = "cuda", icecube_events: int = INFERENCE_EVENTS["icecube"],
                        nova_events: int = INFERENCE_EVENTS["nova"], icecube_model: str = INFERENCE_MODELS["icecube"],
                        nova_model: str = INFERENCE_MODELS["nova"], cpus_per_actor: float = 1.0) -> dict[str, Any]:
    """The inference half: simulate ``icecube_events`` IceCube test events and ``nova_events`` NOvA events, then
    score them with models of freshly initialised weights through the real commands: ``icecube predict
    --pipeline split`` (read + featurise as Ray Data CPU tasks feeding one scoring actor) and ``nova predict``
    (one scoring actor reading its slices), each actor holding the GPU (``device`` cuda) or CPUs only (``device``
    cpu: the same code with other resources, the seam the default suite runs). Prints and writes
    ``OUT/bench-gpu-inference.json``: per workload events/s over the scoring window (IceCube: the predict's
    ``score`` stage, actor start and model load included; NOvA: the whole command) and end to end, and the GPU
    utilisation sampled in this process over that window (mean, median; 'unavailable' and why on a CPU)."""
    from neutrino_ray import runtime
    from neutrino_ray.icecube import predict as icpredict
    from neutrino_ray.icecube.bench import random_model
    from neutrino_ray.icecube.options import ScoringOptions
    from neutrino_ray.nova import predict as novapredict

    if device not in DEVICES:
        raise InputError(f"--device {device!r}: expected one of {', '.join(DEVICES)}")
    dev = check_cuda() if device == "cuda" else torch.device("cpu")  # before any work
    gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" else None
    gpus = 1.0 if dev.type == "cuda" else 0.0
    started = time.perf_counter()
    resources = runtime.init_ray()
    with tempfile.TemporaryDirectory() as tmp:
        ic_data, nova_data, ic_n, nova_n, sim_s = _simulate(tmp, icecube_events, nova_events)
        print(f"simulated {ic_n:,} IceCube and {nova_n:,} NOvA events in {sim_s:.0f} s on "
              f"{runtime.cpu_count()} CPUs; scoring on {gpu or 'CPU'} with random weights (throughput only: "
              "the weights do not change the work)", flush=True)
        ic_uri, nova_uri = random_model(tmp, icecube_model), random_nova_model(tmp, nova_model)

        def icecube() -> tuple[int, dict[str, Any], tuple[float, float]]:
            scoring = ScoringOptions(model=ic_uri, pipeline="split", actors=1, cpus_per_actor=cpus_per_actor,
                                        gpus_per_actor=gpus, resource_wait_minutes=1.0)
            m = icpredict.predict(ic_data, "test", f"{tmp}/icecube-out", scoring, fmt="parquet")
            st = m["stage_seconds"]
            return m["events"], m, (st["prepare"], st["prepare"] + st["score"])

        def nova() -> tuple[int, dict[str, Any], None]:
            scoring = novapredict.Scoring(model=nova_uri, actors=1, cpus_per_actor=cpus_per_actor,
                                          gpus_per_actor=gpus, resource_wait_minutes=1.0,
                                          batch_size=BATCH["nova-medium"])  # the GPU's batch, not the CPU default
            m = novapredict.predict(nova_data, f"{tmp}/nova-out", scoring)
            return m["events"], m, None

        report: dict[str, Any] = {
            "half": "inference", "complete": False, "device": dev.type, "gpu": gpu, "random_weights": True,
            "precision": devices.precision_policy("auto", dev), "ray_resources": resources,
            "simulate_seconds": round(sim_s, 3), "time_goal_seconds": TIME_GOAL_SECONDS,
            "utilisation_goal_percent": UTILISATION_GOAL, "workloads": {}}
        results = report["workloads"]
        results["icecube"] = _timed("icecube predict --pipeline split", icecube_model, icecube, dev)
        _write_report(out, INFERENCE_REPORT, report)  # a run stopped by a timeout keeps what it measured
        results["nova"] = _timed("nova predict", nova_model, nova, dev)
    total = time.perf_counter() - started
    ic_util = results["icecube"]["utilisation"]["mean_percent"]
    goal = ("not measured: " + str(results["icecube"]["utilisation"]["unavailable"]) if ic_util is None
            else f"{'met' if ic_util >= UTILISATION_GOAL else 'missed'} ({ic_util:.0f} %)")
    report.update(complete=True, total_seconds=round(total, 3),
                  utilisation_goal=goal if icecube_model == "transformer-base"
                  else "not applicable (not transformer-base)")
    uri = _write_report(out, INFERENCE_REPORT, report)
    print(f"{'workload':<34}{'model':<18}{'events':>9}{'score s':>9}{'events/s':>10}{'e2e ev/s':>10}"
          f"{'util mean':>11}{'median':>8}")
    for r in results.values():
        u = r["utilisation"]
        mean, med = (("n/a", "n/a") if u["mean_percent"] is None
                     else (f"{u['mean_percent']:.0f} %", f"{u['median_percent']:.0f} %"))
        print(f"{r['workload']:<34}{r['model']:<18}{r['events']:>9,}{r['score_seconds']:>9.1f}"
              f"{r['events_per_second']:>10,.0f}{r['end_to_end_events_per_second']:>10,.0f}{mean:>11}{med:>8}")
    unavailable = {r["utilisation"]["unavailable"] for r in results.values() if r["utilisation"]["unavailable"]}
    if unavailable:
        print(f"utilisation unavailable: {'; '.join(sorted(unavailable))}")
    print(f"{gpu or 'no GPU (CPU actors)'}, precision {report['precision']}; utilisation goal >= "
          f"{UTILISATION_GOAL:.0f} % for transformer-base: {report['utilisation_goal']}; total {total:.0f} s "
          f"(goal < {TIME_GOAL_SECONDS:.0f} s on one GPU) → {uri}")
    return report
