"""Throughput benchmark: read, featurise, the LineFit variants (one core each) and end-to-end predict (Ray)."""

from __future__ import annotations

import contextlib
import math
import os
import resource
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import ray

from neutrino_ray import runtime, storage
from neutrino_ray.errors import InputError
from neutrino_ray.icecube import data as icdata
from neutrino_ray.icecube import pipeline
from neutrino_ray.icecube.features import DEFAULT_MAX_PULSES, featurise
from neutrino_ray.icecube.linefit import KAGGLE_CHARGE_CAP, VARIANTS
from neutrino_ray.icecube.metrics import with_true_direction
from neutrino_ray.icecube.options import LINEFIT_EVENTS_PER_TASK, ScoringOptions
from neutrino_ray.icecube.predict import predict
from neutrino_ray.icecube.scoring import linefit_events
from neutrino_ray.icecube.simwrite import simulate_dataset

MAX_EVENTS_PER_BATCH = 200_000  # the Kaggle batch size


def _dataset(events: int, data: str, seed: int) -> None:
    n_batches = math.ceil(events / MAX_EVENTS_PER_BATCH)
    per_batch = math.ceil(events / n_batches)
    try:
        m = storage.read_manifest(data)
        if (m.get("kind"), m.get("events_per_batch"), m.get("test_batches"), m.get("seed")) == (
                "icecube-simulate", per_batch, n_batches, seed):
            print(f"reusing {data} ({per_batch * n_batches} test events)")
            return
    except (FileNotFoundError, storage.StorageError, ValueError):
        pass
    simulate_dataset(data, per_batch, train_batches=0, test_batches=n_batches, seed=seed)


@contextlib.contextmanager
def _one_arrow_thread() -> Iterator[None]:
    """One core, really: no Arrow decode or I/O threads (as in one Ray Data task on one CPU)."""
    threads = pa.cpu_count(), pa.io_thread_count()
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    try:
        yield
    finally:
        pa.set_cpu_count(threads[0])
        pa.set_io_thread_count(threads[1])


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


RAY_AGENTS = ("ray::DashboardA", "ray::RuntimeEnv")  # the raylet's own helpers (Linux names: 15 characters)


def _ray_workers_peak_rss_mib(parent: int | None = None) -> float:
    """Largest peak RSS (Linux VmHWM) among the workers of the Ray that this process (or ``parent``) started:
    the raylet's children, its agents left out. Not every Ray worker on the machine: on a machine shared with
    other jobs that counted their workers too (another engineer's Ray Train workers). VmHWM also counts the
    object store's shared pages that a worker has touched."""
    procs: dict[int, tuple[int, str, int]] = {}  # pid → (parent pid, name, VmHWM in kB)
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
        except OSError:
            continue
        procs[int(status.parent.name)] = (int(fields.get("PPid", "0")), fields.get("Name", "").strip(),
                                          int(fields.get("VmHWM", "0 kB").split()[0]))
    driver = os.getpid() if parent is None else parent
    raylets = {pid for pid, (ppid, name, _) in procs.items() if ppid == driver and name == "raylet"}
    return max((hwm / 1024 for ppid, name, hwm in procs.values() if ppid in raylets and name not in RAY_AGENTS),
               default=0.0)


def bench(events: int, data: str, seed: int = 11) -> dict[str, float]:
    """Print a table of events/s per stage and peak memory; return the figures."""
    t0 = time.perf_counter()
    _dataset(events, data, seed)
    gen_s = time.perf_counter() - t0
    ray.shutdown()  # fresh workers below, so their peak memory is the predict job's
    plan = pipeline.plan_split(data, "test", LINEFIT_EVENTS_PER_TASK, in_process=True)
    geometry = icdata.load_geometry(data)
    n = plan.events
    t_read = t_feat = 0.0
    t_fit = dict.fromkeys(VARIANTS, 0.0)
    n_pulses = 0
    with _one_arrow_thread():
        for s in plan.slices:  # in this process, one core: stage costs without Ray
            a = time.perf_counter()
            ev = icdata.read_slice(s, len(geometry))
            b = time.perf_counter()
            featurise(ev, geometry, DEFAULT_MAX_PULSES)
            c = time.perf_counter()
            t_read, t_feat = t_read + b - a, t_feat + c - b
            for variant in VARIANTS:
                c = time.perf_counter()
                linefit_events(ev, geometry, variant, KAGGLE_CHARGE_CAP)
                t_fit[variant] += time.perf_counter() - c
            n_pulses += int(pa.compute.sum(pa.compute.list_value_length(ev.column("time"))).as_py())
    single_rss = _peak_rss_mib()
    runtime.init_ray()  # Ray start is not part of the job's throughput
    with tempfile.TemporaryDirectory() as tmp:
        m = predict(data, "test", tmp)
    e2e = m["events"] / m["wall_seconds"]
    figures: dict[str, float] = {
        "events": n, "pulses": n_pulses,
        "read_events_per_s": n / t_read, "read_pulses_per_s": n_pulses / t_read,
        "featurise_events_per_s": n / t_feat,
        **{f"{v.replace('-', '_')}_events_per_s": n / t_fit[v] for v in VARIANTS},
        "predict_end_to_end_events_per_s": e2e, "predict_inference_events_per_s": m["inference_events_per_second"],
        "driver_peak_rss_mib": max(single_rss, _peak_rss_mib()),
        "ray_worker_peak_rss_mib": _ray_workers_peak_rss_mib(),
    }
    print(f"\nneutrino-ray bench icecube: {n} test events, {n_pulses} pulses "
          f"(mean {n_pulses / n:.0f}/event), data {data} (prepared in {gen_s:.0f} s)")
    print(f"{'stage':<36}{'events/s':>12}  notes")
    print(f"{'read (parquet decode + checks)':<36}{figures['read_events_per_s']:>12,.0f}  "
          f"{figures['read_pulses_per_s'] / 1e6:.1f} M pulses/s, 1 core")
    print(f"{'featurise (cap ' + str(DEFAULT_MAX_PULSES) + ', geometry join)':<36}"
          f"{figures['featurise_events_per_s']:>12,.0f}  1 core")
    for v in VARIANTS:
        print(f"{v + ' (pulse selection + fit)':<36}{figures[v.replace('-', '_') + '_events_per_s']:>12,.0f}  1 core")
    print(f"{'predict end to end (Ray Data, linefit)':<36}{e2e:>12,.0f}  {runtime.cpu_count()} CPUs, parquet → "
          f"submission.csv in {m['wall_seconds']:.1f} s (Ray already up)")
    print(f"peak RSS: driver {figures['driver_peak_rss_mib']:.0f} MiB, largest Ray worker "
          f"{figures['ray_worker_peak_rss_mib']:.0f} MiB")
    return figures


def random_model(out: str, size: str) -> str:
    """A model artefact with freshly initialised weights: throughput does not depend on the weights."""
    from neutrino_ray import artefact
    from neutrino_ray.icecube.architectures import TRANSFORMER_INFERENCE_MAX_PULSES, default_max_pulses, is_transformer
    from neutrino_ray.icecube.train import DirectionTask

    task = DirectionTask(size, max_pulses=default_max_pulses(size),
                         inference_max_pulses=TRANSFORMER_INFERENCE_MAX_PULSES if is_transformer(size) else None)
    return artefact.write_model(storage.join(out, f"random-{size}"), task, task.build_model())


# The published peer of each size; its figures, measured once on the same machine class (GraphNeT is not a
# dependency, so bench cannot measure it), are in docs/icecube.md's throughput tables.
PEERS = {
    "dynedge": "GraphNeT DynEdge (1.35M parameters, torch-cluster k-NN)",
    "transformer-small": "GraphNeT DeepIce hidden 192, depth 8 (6,892,512 parameters)",
    "transformer-base": "GraphNeT DeepIce default (30,170,976 parameters)",
}


def cpus_per_gpu(gpu_events_per_s: float, read_featurise_events_per_s_per_cpu: float) -> float:
    """CPUs of read + featurise that keep one GPU training worker fed at ``gpu_events_per_s``."""
    return gpu_events_per_s / read_featurise_events_per_s_per_cpu


def bench_gnn(sizes: list[str], events: int, data: str, seed: int = 12) -> dict[str, dict[str, float]]:
    """Per architecture: forward and training-step events/s in this process (all cores), and end-to-end
    predict events/s (Ray Data actor pool, parquet → published submission.csv) with the largest actor's
    peak RSS, on ``events`` test events; transformers at pulse caps 192 (training) and 768 (inference)."""
    import torch

    from neutrino_ray.icecube.architectures import TRANSFORMER_INFERENCE_MAX_PULSES, default_max_pulses, is_transformer
    from neutrino_ray.icecube.artefact import predict_directions
    from neutrino_ray.icecube.models import direction_loss
    from neutrino_ray.icecube.train import DirectionTask

    _dataset(events, data, seed)
    plan = pipeline.plan_split(data, "test", LINEFIT_EVENTS_PER_TASK, in_process=True)
    geometry = icdata.load_geometry(data)
    truth = icdata.split_truth(data, "test")
    cpu = torch.device("cpu")
    results: dict[str, dict[str, float]] = {}
    for size in sizes:
        cap = default_max_pulses(size)
        task = DirectionTask(size, max_pulses=cap)
        with _one_arrow_thread():  # as one Ray Data task of the training input
            t0 = time.perf_counter()
            featurised = pipeline.read_featurise(pipeline.SplitPlan.table(plan.slices), geometry, cap, task.seeded)
            read_featurise = len(featurised) / (time.perf_counter() - t0)
        big = size in ("dynedge", "transformer-small", "transformer-base")
        n_fwd, n_train = min(len(featurised), 1024 if big else 2048), min(len(featurised), 256 if big else 512)
        labelled = featurised.slice(0, n_train).sort_by("event_id")
        labelled = with_true_direction(labelled, truth)
        torch.manual_seed(0)
        model = task.build_model()
        predict_directions(task, model, featurised.slice(0, 64), 256, cpu)  # warm-up
        t0 = time.perf_counter()
        predict_directions(task, model, featurised.slice(0, n_fwd), 256, cpu)
        forward = n_fwd / (time.perf_counter() - t0)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        t0 = time.perf_counter()
        for lo in range(0, n_train, 128):
            b = task.collate(labelled.slice(lo, 128), cpu)
            loss = direction_loss(task.forward(model, b), b.y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        train_rate = n_train / (time.perf_counter() - t0)
        r = {"n_parameters": float(sum(p.numel() for p in model.parameters())), "mean_pulses_at_cap": float(
            np.mean(featurised.column("n_selected").to_numpy())), "forward_events_per_s": forward,
             "train_events_per_s": train_rate, "read_featurise_events_per_s_per_cpu": read_featurise}
        caps = [cap, TRANSFORMER_INFERENCE_MAX_PULSES] if is_transformer(size) else [cap]
        with tempfile.TemporaryDirectory() as tmp:
            uri = random_model(tmp, size)
            for c in caps:
                ray.shutdown()  # fresh actors: their peak memory is this run's
                runtime.init_ray()
                m = predict(data, "test", storage.join(tmp, f"pred-{c}"), ScoringOptions(model=uri, max_pulses=c))
                r[f"predict_end_to_end_events_per_s_cap{c}"] = m["events"] / m["wall_seconds"]
                r[f"actor_peak_rss_mib_cap{c}"] = _ray_workers_peak_rss_mib()
        results[size] = r
    print(f"\nmodel stages: {plan.events} test events from {data}, {torch.get_num_threads()} torch threads in-process "
          f"(forward: 256 events per packed batch; training: 128); predict on {runtime.cpu_count()} CPUs (one "
          "1-CPU actor each, Ray up), peak RSS of the largest actor")
    print(f"{'model':<19}{'parameters':>12}{'forward ev/s':>14}{'train ev/s':>12}{'cap':>6}{'predict e2e ev/s':>18}"
          f"{'actor peak MiB':>16}")
    for size, r in results.items():
        caps = sorted(int(k.rsplit("cap", 1)[1]) for k in r if k.startswith("predict_end_to_end"))
        for i, c in enumerate(caps):
            head = (f"{size:<19}{r['n_parameters']:>12,.0f}{r['forward_events_per_s']:>14,.1f}"
                    f"{r['train_events_per_s']:>12,.1f}") if i == 0 else " " * 57
            print(f"{head}{c:>6}{r[f'predict_end_to_end_events_per_s_cap{c}']:>18,.1f}"
                  f"{r[f'actor_peak_rss_mib_cap{c}']:>16,.0f}")
    print("training input, read + featurise at the training cap, 1 core (what one Ray Data task of the training "
          "dataset does): CPUs per GPU worker = the GPU's training events/s / this rate")
    for size, r in results.items():
        rate = r["read_featurise_events_per_s_per_cpu"]
        print(f"  {size:<19}cap {default_max_pulses(size):>4}: {rate:>9,.0f} events/s per CPU; a GPU training at "
              f"2,000 / 10,000 events/s needs {cpus_per_gpu(2_000, rate):.1f} / {cpus_per_gpu(10_000, rate):.1f} CPUs")
    for size in results:
        if size in PEERS:
            print(f"peer for {size}: {PEERS[size]}; its events/s on the same machine class: docs/icecube.md")
    return results


# ---------------------------------------------------------------------------------------------------
# Scale: plan and score a whole train split of many batch files (driver memory against split size)

SCALE_PULSES_PER_EVENT = 3  # a cheap layout: the driver's costs scale with events and files, not pulses


def write_scale_layout(root: Path, batches: int, events_per_batch: int, seed: int = 0,
                       meta_row_group: int | None = None) -> None:
    """A cheap synthetic train split in the Kaggle layout: ``batches`` files of ``events_per_batch``
    events with three pulses each, a valid ``train_meta.parquet`` (one row group per batch, or row groups of
    ``meta_row_group`` rows across batches, as a meta rewritten by pandas or Spark has; true directions) and
    the geometry. Reused when ``root/scale.json`` says it was written the same way."""
    import json

    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from neutrino_ray.icecube.geometry import icecube86
    from neutrino_ray.icecube.simwrite import PULSE_SCHEMA, ROW_GROUP_ROWS

    spec = {"batches": batches, "events_per_batch": events_per_batch, "pulses": SCALE_PULSES_PER_EVENT, "seed": seed,
            **({"meta_row_group": meta_row_group} if meta_row_group else {})}
    marker = root / "scale.json"
    if marker.exists() and json.loads(marker.read_text()) == spec:
        return
    (root / "train").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    k, n = SCALE_PULSES_PER_EVENT, events_per_batch
    meta_schema = pa.schema([("batch_id", pa.int64()), ("event_id", pa.int64()), ("first_pulse_index", pa.int64()),
                             ("last_pulse_index", pa.int64()), ("azimuth", pa.float64()), ("zenith", pa.float64())])
    pending: list[pa.Table] = []  # meta rows not yet written (meta_row_group: up to one row group's worth)
    with pq.ParquetWriter(root / "train_meta.parquet", meta_schema) as meta_writer:
        for b in range(1, batches + 1):  # one batch file at a time: memory of one batch
            ids = (b - 1) * 2 * n + 2 * np.arange(n, dtype=np.int64) + 1
            pulses = pa.table({
                "sensor_id": rng.integers(0, 5160, n * k).astype(np.int16),
                "time": (6000 + np.tile(np.arange(k) * 300, n) + rng.integers(0, 100, n * k)).astype(np.int64),
                "charge": 0.025 + rng.exponential(1.0, n * k),
                "auxiliary": rng.random(n * k) < 0.5,
                "event_id": np.repeat(ids, k),  # last, as the Kaggle files (the pandas index)
            }).cast(PULSE_SCHEMA)
            pq.write_table(pulses, root / "train" / f"batch_{b}.parquet", row_group_size=ROW_GROUP_ROWS)
            first = np.arange(n, dtype=np.int64) * k
            rows = pa.table({
                "batch_id": np.full(n, b, dtype=np.int64), "event_id": ids, "first_pulse_index": first,
                "last_pulse_index": first + k - 1, "azimuth": rng.uniform(0, 2 * np.pi, n),
                "zenith": np.arccos(rng.uniform(-1, 1, n))}, schema=meta_schema)
            if not meta_row_group:
                meta_writer.write_table(rows, row_group_size=n)
                continue
            pending.append(rows)
            held = pa.concat_tables(pending)
            whole = len(held) // meta_row_group * meta_row_group
            if whole:
                meta_writer.write_table(held.slice(0, whole), row_group_size=meta_row_group)
            pending = [held.slice(whole)]
        if pending and sum(len(t) for t in pending):
            meta_writer.write_table(pa.concat_tables(pending), row_group_size=meta_row_group)
    pacsv.write_csv(icecube86().to_table(), root / "sensor_geometry.csv")
    marker.write_text(json.dumps(spec))


def _scale_run(data: str, out: str) -> dict[str, float]:
    """In a fresh process: plan the train split, then score it with LineFit end to end; peak memories."""

    runtime.init_ray()
    t0 = time.perf_counter()
    plan = pipeline.plan_split(data, "train", LINEFIT_EVENTS_PER_TASK)  # what predict plans
    plan_s = time.perf_counter() - t0
    plan_rss = _peak_rss_mib()
    n = plan.events
    del plan
    m = predict(data, "train", out, ScoringOptions(uncertainty_events=0), fmt="csv")  # the Kaggle CSV: the dearer path
    return {"events": n, "plan_seconds": plan_s, "plan_peak_rss_mib": plan_rss,
            "predict_wall_seconds": m["wall_seconds"], "events_per_s": n / m["wall_seconds"],
            "driver_peak_rss_mib": _peak_rss_mib(), "ray_worker_peak_rss_mib": _ray_workers_peak_rss_mib()}


def _scale_analysis(command: str, data: str, pred: str, out: str) -> dict[str, float]:
    """In a fresh process (so the peak is this command's own): ``evaluate`` the scored train split, or
    ``compare`` it against itself (two models' worth of work); wall time and the driver's peak RSS."""
    from neutrino_ray.icecube.compare import compare
    from neutrino_ray.icecube.evaluate import evaluate

    t0 = time.perf_counter()
    if command == "evaluate":
        evaluate(data, "train", pred, f"{out}/eval")
    else:
        compare(data, "train", [pred, pred], ["a", "b"], f"{out}/cmp")
    return {f"{command}_seconds": time.perf_counter() - t0, f"{command}_peak_rss_mib": _peak_rss_mib()}


def _in_fresh_process(fn: Any, *args: Any) -> dict[str, float]:
    import multiprocessing

    pool = multiprocessing.get_context("spawn").Pool(1)
    try:
        return dict(pool.apply(fn, args))
    finally:
        pool.close()  # let the child exit on its own (its Ray shuts down cleanly)
        pool.join()


SCALE_ANALYSIS = ("evaluate", "compare")


def scale_analysis_commands(text: str) -> tuple[str, ...]:
    """``--scale-analysis``'s comma-separated commands, each one of :data:`SCALE_ANALYSIS`."""
    commands = tuple(c.strip() for c in text.split(",") if c.strip())
    unknown = [c for c in commands if c not in SCALE_ANALYSIS]
    if unknown:
        raise InputError(f"--scale-analysis {text}: unknown {unknown} (choose from {', '.join(SCALE_ANALYSIS)})")
    return commands


def bench_scale(batches: list[int], root: str, events_per_batch: int = MAX_EVENTS_PER_BATCH,
                meta_row_group: int | None = None, analysis: tuple[str, ...] = ()) -> list[dict[str, float]]:
    """For each number of batch files: write the cheap layout (``meta_row_group``: its meta in row groups
    of that many rows), then plan and score it in a fresh process (so each driver peak is that run's own),
    and run each ``analysis`` command (``evaluate``, ``compare``) on its ``predictions.parquet`` in a fresh
    process each; print and return the figures."""
    import shutil

    rows = []
    for b in batches:
        name = f"scale-{b}x{events_per_batch}" + (f"-rg{meta_row_group}" if meta_row_group else "")
        data = Path(root) / name
        t0 = time.perf_counter()
        write_scale_layout(data, b, events_per_batch, meta_row_group=meta_row_group)
        write_s = time.perf_counter() - t0
        out = Path(root) / f"{name}-pred"
        shutil.rmtree(out, ignore_errors=True)
        fig = _in_fresh_process(_scale_run, str(data), str(out))
        # predictions.parquet, not submission.csv: a CSV is scanned whole for each event-id range
        for command in analysis:
            fig.update(_in_fresh_process(_scale_analysis, command, str(data), str(out / "predictions.parquet"),
                                         str(out / "an")))
            print(f"{b:>5} files: {command} {fig[f'{command}_seconds']:.0f} s (driver peak "
                  f"{fig[f'{command}_peak_rss_mib']:,.0f} MiB)", flush=True)
        shutil.rmtree(out, ignore_errors=True)
        rows.append({"batch_files": b, "write_seconds": write_s, **fig})
        print(f"{b:>5} files, {fig['events']:>12,.0f} events: plan {fig['plan_seconds']:7.1f} s "
              f"(driver {fig['plan_peak_rss_mib']:,.0f} MiB after planning); LineFit end to end "
              f"{fig['events_per_s']:,.0f} events/s in {fig['predict_wall_seconds']:.0f} s; peak RSS driver "
              f"{fig['driver_peak_rss_mib']:,.0f} MiB, largest Ray worker {fig['ray_worker_peak_rss_mib']:,.0f} MiB",
              flush=True)
    return rows
