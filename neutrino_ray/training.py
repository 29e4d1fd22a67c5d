"""The one training scaffold: data-parallel torch training on Ray Train, checkpoints, metrics, the model artefact.

A detector plugs in a :class:`Task` (how to build its model, turn an Arrow batch into tensors, the
loss, and validation sums) and two Ray Data datasets, ``train`` and ``val``. The scaffold does the rest
with Ray Train's ``TorchTrainer`` (Train V2): one worker or many, DDP over gloo on CPUs or NCCL on
GPUs, each worker streaming its own shard of the data.

GPUs and NCCL (see docs/cluster.md): every tensor that enters a collective is created on the worker's
device (NCCL refuses host tensors); a training step synchronises the device with the host once, for the
lockstep decision (the loss is summed on the device and read only when logged or checkpointed). Batches
are copied from pinned host memory without blocking. Precision (:func:`neutrino_ray.devices.precision_policy`):
bf16 autocast where the GPU supports it, else fp16 autocast with a gradient scaler, fp32 on request and on CPUs.
With GPU workers asked for and not yet in the cluster, :func:`fit` asks the autoscaler for them and waits,
at most ``resource_wait_minutes``. A seam (``device_hook``) lets a CPU test run the loop on a pretend
device with a process group that enforces NCCL's rules (tests/test_training_nccl.py).

Checkpoints (model, optimiser, schedule, progress, history) go to ``OUT/train/`` through Ray Train's
storage, on local disk or S3, at every epoch end and every ``checkpoint_minutes``. Ray Train restarts
failed workers from the latest one (``max_failures``), and a new run with the same OUT resumes from it:
Ray Train restores its checkpoint list from storage. A resumed epoch starts its pass over the data again.
The time budget ``max_minutes`` bounds the whole run, from the first step to the published model,
validation and checkpoints included, counted across restarts: training stops early enough to leave time
for the last validation and checkpoint (as long as the last one took), and each validation pass streams its
held-out events only until its share of the budget (``VALIDATION_SHARE``) is spent; the events it
covered are recorded with its metrics (``val_events``).

When training ends, the latest checkpoint becomes the model artefact at ``OUT/model/`` (published
atomically; with ``keep="best"`` its weights are those of the checkpoint with the lowest validation loss,
which every checkpoint carries beside its latest ones, as Keras' ``restore_best_weights``): ``model.pt``
(weights), ``config.json`` (the task's config, parameter count, training
summary), ``metrics.json`` (the history) and ``learning_curve.png`` (its files and format:
:mod:`neutrino_ray.artefact`).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from neutrino_ray import artefact, devices, logs, progress, runtime, storage
from neutrino_ray.settings import DATA_TASK_CPUS as DATA_TASK_CPUS  # re-exported
from neutrino_ray.settings import Settings

log = logging.getLogger("neutrino_ray")

RUN_NAME = "train"  # checkpoints under OUT/train/
STATE_FILE = "state.pt"
VALIDATION_SHARE = 0.1  # of the time budget, at most, per validation pass (with --max-minutes)
CHECKPOINT_SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train V2's list of registered checkpoints
CHECKPOINT_POLL_SECONDS = 0.2
CHECKPOINT_WAIT_SECONDS = 60.0  # the controller registers a reported checkpoint when it next polls (every 2 s)
PUBLISH_RESERVE_SECONDS = 10.0  # after the last checkpoint: Ray Train stops its workers, the driver publishes


class Task(Protocol):
    """What a detector plugs into the scaffold. Must pickle (a frozen dataclass at module level does)."""

    @property
    def name(self) -> str: ...  # the artefact's task name, e.g. "icecube-direction"
    @property
    def val_metric(self) -> str: ...  # the validation metric to plot, e.g. "val_mean_angular_error"
    @property
    def validation_keys(self) -> tuple[str, ...]: ...  # sums reduced over workers; "n" is the number of events

    def build_model(self) -> nn.Module: ...
    def collate(self, batch: Any, device: torch.device) -> Any: ...
    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor: ...
    # Sums over the batch, as 0-d tensors on the batch's device (or floats): the scaffold adds them up there.
    def validation_sums(self, model: nn.Module, batch: Any) -> dict[str, torch.Tensor | float]: ...
    def validation_metrics(self, sums: dict[str, float]) -> dict[str, float]: ...
    def config(self) -> dict[str, Any]: ...


def prepare(out: str, **settings: Any) -> Settings:
    """A run's Settings, with Ray started (with its dashboard: Ray Train's controller polls the state API)
    and Ray Data's progress bars off (the training log reports progress)."""
    s = Settings(out=out, **settings)
    runtime.init_ray(dashboard=True)
    import ray

    ray.data.DataContext.get_current().enable_progress_bars = False
    return s


@dataclass
class TrainingState:
    """Where training stands; saved in every checkpoint."""

    epoch: int = 0
    step: int = 0
    events: int = 0
    seconds: float = 0.0  # wall time in the training loop, across restarts
    step_seconds: float = 0.0  # of which forward/backward/optimiser
    restarts: int = 0
    precision: str = ""  # what the workers trained in (devices.precision_policy)
    first_step_at: float | None = None  # wall clock (time.time()) of the run's first step
    reserve: float = 0.0  # seconds the last validation + checkpoint took: kept free at the end of the budget
    history: list[dict[str, Any]] = field(default_factory=list)


def lr_factor(p: TrainingState, s: Settings, total_steps: int) -> float:
    """Linear warm-up (``warmup_steps`` or ``warmup_fraction`` of the run, whichever is shorter), then
    cosine decay to ``min_lr_fraction``; progress is steps over total steps or time over the budget,
    whichever is further along. The "constant" schedule: 1 throughout."""
    if s.schedule == "constant":
        return 1.0
    done = p.step / max(1, total_steps)
    if s.max_minutes:
        done = max(done, p.seconds / (60 * s.max_minutes))
    done = min(1.0, done)
    if p.step < s.warmup_steps and done < s.warmup_fraction:
        return max((p.step + 1) / s.warmup_steps, done / s.warmup_fraction)
    return s.min_lr_fraction + (1 - s.min_lr_fraction) * 0.5 * (1 + math.cos(math.pi * done))


def make_optimizer(params: Any, s: Settings) -> torch.optim.Optimizer:
    """AdamW with ``weight_decay`` (the default), or plain Adam (the course recipe; no weight decay)."""
    if s.optimizer == "adam":
        return torch.optim.Adam(params, lr=s.lr)
    return torch.optim.AdamW(params, lr=s.lr, weight_decay=s.weight_decay)


def best_entry(history: list[dict[str, Any]]) -> int | None:
    """The index of the history entry with the lowest ``val_loss`` (the first of equal losses: Keras' min_delta
    0), or None when none has a finite one. Early stopping counts from it; ``--keep best`` publishes it."""
    finite = [i for i, h in enumerate(history) if math.isfinite(h.get("val_loss", math.nan))]
    return min(finite, key=lambda i: history[i]["val_loss"]) if finite else None


def early_stop(history: list[dict[str, Any]], patience: int | None, epoch: int) -> bool:
    """True when ``patience`` epochs have ended since the entry with the lowest ``val_loss`` (Keras'
    EarlyStopping on val_loss, min_delta 0). Off when patience is None."""
    best = best_entry(history)
    if patience is None or best is None:
        return False
    return epoch - history[best]["epoch"] >= patience


LOG_SECONDS = float(os.environ.get(progress.INTERVAL_ENV, "30"))  # a status line at least this often


def status_line(p: TrainingState, total_steps: int, budget: float | None, loss: float, lr: float,
                events_per_second: float) -> str:
    """The training progress line: steps done of the planned total, loss, rate, elapsed time and ETA.

    Elapsed is training time since the first step, across restarts; the ETA is the planned steps left at
    the run's step rate, or the time budget left (``budget`` seconds) when that ends the run sooner."""
    elapsed = p.seconds
    left = (total_steps - p.step) * elapsed / p.step if p.step and elapsed > 0 else None
    if budget:
        left = min(left, budget - elapsed) if left is not None else budget - elapsed
    eta = progress.clock(max(left, 0.0)) if left is not None else "?"
    pct = 100.0 * p.step / total_steps if total_steps else 0.0
    return (f"train: step {p.step:,}/{total_steps:,} ({pct:.1f} %), epoch {p.epoch}, loss {loss:.4f}, lr {lr:.2e}, "
            f"{events_per_second:,.0f} events/s, {p.events:,} events, elapsed {progress.clock(elapsed)}, ETA {eta}")


def _say(msg: str) -> None:
    """One line to the job log (Ray Train's patched print would log it twice); nothing at ``-q``."""
    if logs.level() == logs.QUIET:
        return
    sys.stderr.write(f"[train {time.strftime('%H:%M:%S')}] {msg}\n")
    sys.stderr.flush()


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over the workers, in place. NCCL reduces device tensors only: every caller creates ``t`` on
    the worker's device."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t


def train_step(model: nn.Module, task: Task, batch: Any, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
               precision: str, device: torch.device, grad_clip: float) -> torch.Tensor:
    """One optimiser step; returns the loss, detached, on the device (no host synchronisation here, except
    the fp16 scaler's own check for infinite gradients)."""
    with devices.autocast(precision, device):
        loss = task.loss(model, batch)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if grad_clip:
        scaler.unscale_(opt)  # clip the true gradients, not the scaled ones
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(opt)  # skips the step when the fp16 gradients overflowed
    scaler.update()
    return loss.detach()


def _validate(model: nn.Module, task: Task, shard: Any, s: Settings, device: torch.device, precision: str,
              deadline: float | None) -> dict[str, float]:
    """Validation sums over this worker's shard, summed on the device, reduced over all workers, turned into
    metrics. With a ``deadline`` (time.monotonic()), the workers stop together once rank 0 passes it: a
    per-batch lockstep like training's."""
    import ray.train

    rank = ray.train.get_context().get_world_rank()
    model.eval()
    keys = task.validation_keys
    acc = torch.zeros(len(keys), dtype=torch.float64, device=device)
    batches = iter(shard.iter_batches(batch_size=s.batch_size, batch_format="pyarrow", prefetch_batches=2))
    with torch.no_grad():
        while True:
            batch = next(batches, None)
            if deadline is not None:
                late = rank == 0 and time.monotonic() > deadline
                more, stop = _all_reduce(torch.tensor([batch is not None, late], dtype=torch.int64,
                                                      device=device)).cpu().tolist()
                if more == 0 or stop > 0:
                    break
            if batch is None:
                if deadline is None:
                    break
                continue  # others still have batches
            with devices.autocast(precision, device):
                sums = task.validation_sums(model, task.collate(batch, device))
            acc += torch.stack([torch.as_tensor(sums[k], device=device).to(torch.float64) for k in keys])
    model.train()
    total = _all_reduce(acc).cpu().tolist()
    return task.validation_metrics(dict(zip(keys, total)))


def _host(state: Any) -> Any:
    """A state dict with its tensors copied to the host: checkpoints load anywhere (map_location or not)."""
    from torch.utils._pytree import tree_map

    return tree_map(lambda t: t.cpu() if isinstance(t, torch.Tensor) else t, state)


def _hooked_device(hook: str) -> torch.device:
    """The device a ``device_hook`` ("module:function") names: the seam that runs the loop on a pretend
    device in CPU tests."""
    import importlib

    module, fn = hook.split(":")
    return torch.device(getattr(importlib.import_module(module), fn)())


def registered_checkpoint(out: str) -> dict[str, Any] | None:
    """The metrics of the latest checkpoint Ray Train has registered for the run under ``out`` (from its
    checkpoint manager's snapshot, ``OUT/train/checkpoint_manager_snapshot.json``, which a resumed run reads),
    or None while it has registered none."""
    try:
        doc = json.loads(storage.read_bytes(storage.join(out, RUN_NAME, CHECKPOINT_SNAPSHOT)))
    except (FileNotFoundError, ValueError):
        return None
    latest = doc.get("latest_checkpoint_result")
    return dict(latest["metrics"]) if latest else None


def wait_for_registered_checkpoint(out: str, step: int | None, timeout: float) -> bool:
    """Poll until Ray Train has registered a checkpoint (the one reported at ``step``, when given); False after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = registered_checkpoint(out)
        if got is not None and (step is None or got.get("step") == step):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(CHECKPOINT_POLL_SECONDS)


@dataclass(frozen=True)
class FaultInjection:
    """A test hook: the last worker's process is SIGKILLed once (``marker`` records that it was), at step
    ``after_steps``, once Ray Train has registered the checkpoint reported before it, so that the restart starts
    from that checkpoint. Passed to the workers beside the Settings; never stored with a checkpoint or model."""

    after_steps: int
    marker: str

    def due(self, step: int, rank: int, world: int) -> bool:
        return step == self.after_steps and rank == world - 1 and not os.path.exists(self.marker)

    def fire(self, out: str, last_reported_step: int | None, rank: int) -> None:
        Path(self.marker).write_text("injected")
        if last_reported_step is not None and not wait_for_registered_checkpoint(out, last_reported_step,
                                                                                 CHECKPOINT_WAIT_SECONDS):
            _say(f"injected fault: Ray Train registered no checkpoint of step {last_reported_step} within "
                 f"{CHECKPOINT_WAIT_SECONDS:g} s")
        _say(f"injected fault: killing training worker {rank} (pid {os.getpid()}) at step {self.after_steps}")
        os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer or a lost node would


_fault: FaultInjection | None = None


@contextlib.contextmanager
def inject_fault(after_steps: int, marker: str) -> Iterator[FaultInjection]:
    """Tests: the runs :func:`fit` starts inside this block kill their last worker once (:class:`FaultInjection`)."""
    global _fault
    _fault = FaultInjection(after_steps, marker)
    try:
        yield _fault
    finally:
        _fault = None


def worker_loop(cfg: dict[str, Any]) -> None:
    """Ray Train's per-worker function."""
    import ray.train
    import ray.train.torch

    task: Task = cfg["task"]
    s: Settings = cfg["settings"]
    fault: FaultInjection | None = cfg.get("fault")
    total_steps: int = cfg["total_steps"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = _hooked_device(cfg["device_hook"]) if cfg.get("device_hook") else ray.train.torch.get_device()
    if device.type == "cpu":
        # Whole CPUs only: a thread on a fractional share spins against Ray Data's decode tasks (figures:
        # docs/nova.md, "Training throughput").
        torch.set_num_threads(max(1, int(cfg["cpus_per_worker"])))
    precision = devices.precision_policy(s.precision, device)
    torch.manual_seed(s.seed)
    model = task.build_model()
    ema = copy.deepcopy(model) if s.ema_decay else None
    p, opt_state, scaler_state = TrainingState(), None, None
    best: dict[str, torch.Tensor] | None = None  # with --keep best: the weights of the lowest-val_loss checkpoint
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            saved = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=False)
        model.load_state_dict(saved["model"])
        if ema is not None:
            ema.load_state_dict(saved.get("ema") or saved["model"])
        opt_state, scaler_state, best = saved["optimizer"], saved.get("scaler"), saved.get("best")
        p = TrainingState(**saved["progress"])
        p.restarts += 1
        if rank == 0:
            _say(f"resuming from checkpoint: epoch {p.epoch}, step {p.step}, {p.events} events, "
                 f"{p.seconds / 60:.1f} min trained")
    p.precision = precision
    # Moves to the device; DDP when world > 1.
    model = ray.train.torch.prepare_model(model, move_to_device=device)
    core: nn.Module = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    opt = make_optimizer(model.parameters(), s)
    if opt_state is not None:
        opt.load_state_dict(opt_state)
    scaler = devices.grad_scaler(precision, device)
    if scaler_state:
        scaler.load_state_dict(scaler_state)
    if ema is not None:
        ema.to(device).eval().requires_grad_(False)

    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    budget = 60 * s.max_minutes if s.max_minutes else None
    val_events_per_worker = cfg.get("val_events", 0) / world
    clock = time.monotonic()

    def tick() -> float:
        """Count the wall time since the last tick into the run's time: all of it from this run's first step
        (the budget's definition: first step to published model; not the start-up before it)."""
        nonlocal clock
        now = time.monotonic()
        if trained_this_run:
            p.seconds += now - clock
        clock = now
        return now

    def reserve() -> float:
        """Seconds to keep free at the end of the budget: the last validation + checkpoint as measured, else
        an estimate (forward at half the training step's time per event, within validation's share)."""
        if p.reserve:
            return p.reserve + PUBLISH_RESERVE_SECONDS
        per_event = p.step_seconds / max(1.0, p.events / world)
        val = min(VALIDATION_SHARE * (budget or 0.0), 0.5 * per_event * val_events_per_worker)
        return val + 2 * PUBLISH_RESERVE_SECONDS  # the first checkpoint write, then the publication

    def save_point(train_loss: float, events_per_second: float) -> None:
        """Validate, record, and report a checkpoint (every worker reports; rank 0 writes the files)."""
        nonlocal best
        start = tick()
        deadline = start + VALIDATION_SHARE * budget if budget else None
        val = _validate(ema if ema is not None else core, task, val_shard, s, device, precision, deadline)
        tick()
        entry = {"epoch": p.epoch, "step": p.step, "events": p.events, "minutes": round(p.seconds / 60, 3),
                 "train_loss": train_loss, "train_events_per_second": round(events_per_second, 1),
                 "lr": opt.param_groups[0]["lr"], **val}
        p.history.append(entry)
        if s.keep == "best" and best_entry(p.history) == len(p.history) - 1:
            kept = ema if ema is not None else core  # the weights validation just scored
            best = {k: v.detach().to("cpu", copy=True) for k, v in kept.state_dict().items()}
        if rank == 0:
            _say("checkpoint: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                            for k, v in entry.items()))
        with tempfile.TemporaryDirectory() as d:
            ckpt = None
            if rank == 0:
                torch.save({"model": _host(core.state_dict()), "optimizer": _host(opt.state_dict()),
                            "progress": asdict(p), "ema": None if ema is None else _host(ema.state_dict()),
                            "best": best,
                            "scaler": scaler.state_dict(),
                            "scheduler": {"kind": s.schedule, "total_steps": total_steps,
                                          "warmup_steps": s.warmup_steps,
                                          "warmup_fraction": s.warmup_fraction, "min_lr_fraction": s.min_lr_fraction},
                            "task": task.config(), "settings": asdict(s)}, Path(d) / STATE_FILE)
                ckpt = ray.train.Checkpoint.from_directory(d)
            ray.train.report(entry, checkpoint=ckpt)
        p.reserve = tick() - start  # the next save point will take about as long

    model.train()
    last_save = last_log = time.monotonic()
    trained_this_run = False
    # A budget is checked from the run's first step on: a budget smaller than the fixed costs (the last
    # validation, checkpoint and publication) still trains one step and publishes, rather than nothing.
    stop = p.epoch >= s.epochs or bool(budget and p.step and p.seconds + reserve() >= budget) \
        or early_stop(p.history, s.patience, p.epoch)
    while not stop:
        batches = iter(train_shard.iter_batches(batch_size=s.batch_size, batch_format="pyarrow", prefetch_batches=2,
                                                local_shuffle_buffer_size=s.shuffle_buffer or None,
                                                local_shuffle_seed=s.seed + 1000 * p.epoch + rank))
        loss_sum = torch.zeros((), device=device)  # summed on the device; read when logged or saved
        loss_n, win_events, win_seconds = 0, 0, 0.0
        while True:
            batch = next(batches, None)
            now = tick()
            over = bool(budget and p.step and p.seconds + reserve() >= budget)
            due = now - last_save >= 60 * s.checkpoint_minutes
            # One small all-reduce per step keeps workers in lockstep: all stop, save or end the epoch together.
            # Its result is the step's one device-to-host synchronisation.
            ended, stopping, saving, rows = _all_reduce(torch.tensor(
                [batch is None, rank == 0 and over, rank == 0 and due, 0 if batch is None else batch.num_rows],
                dtype=torch.int64, device=device)).cpu().tolist()
            if ended > 0:
                break
            if stopping > 0:
                stop = True
                break
            if saving > 0 and loss_n:
                save_point(float(loss_sum) / loss_n, win_events / max(win_seconds, 1e-9))
                loss_sum.zero_()
                loss_n, win_events, win_seconds = 0, 0, 0.0
                now = last_save = time.monotonic()
            t0 = time.monotonic()
            if not trained_this_run:
                clock = t0  # the budget counts from the first step
                if p.first_step_at is None:
                    p.first_step_at = time.time()
            for g in opt.param_groups:
                g["lr"] = s.lr * lr_factor(p, s, total_steps)
            loss_sum += train_step(model, task, task.collate(batch, device), opt, scaler, precision, device,
                                   s.grad_clip)
            if ema is not None:
                update_ema(ema, core, s.ema_decay or 0.0, p.step)
            p.step += 1
            p.events += rows
            dt = time.monotonic() - t0
            p.step_seconds += dt
            win_events += rows
            win_seconds += time.monotonic() - now
            loss_n += 1
            trained_this_run = True
            if rank == 0 and (p.step % s.log_every_steps == 0 or time.monotonic() - last_log > LOG_SECONDS):
                last_log = time.monotonic()
                _say(status_line(p, total_steps, budget, float(loss_sum) / loss_n, opt.param_groups[0]["lr"],
                                 win_events / max(win_seconds, 1e-9)))
            if fault is not None and fault.due(p.step, rank, world):
                fault.fire(s.out, p.history[-1]["step"] if p.history else None, rank)
        if not stop:
            p.epoch += 1
            stop = p.epoch >= s.epochs
        if trained_this_run:
            save_point(float(loss_sum) / loss_n if loss_n else float("nan"), win_events / max(win_seconds, 1e-9))
            last_save = time.monotonic()
            if not stop and early_stop(p.history, s.patience, p.epoch):  # same history on every worker
                if rank == 0:
                    _say(f"early stopping: no lower val_loss in the last {s.patience} epochs")
                stop = True


def update_ema(ema: nn.Module, model: nn.Module, decay: float, step: int) -> None:
    """ema ← d·ema + (1 − d)·model with d = min(decay, (1 + step) / (10 + step)): early steps are not
    dominated by the random initialisation."""
    d = min(decay, (1 + step) / (10 + step))
    with torch.no_grad():
        for e, w in zip(ema.parameters(), model.parameters(), strict=True):
            e.lerp_(w.detach(), 1 - d)
        for eb, wb in zip(ema.buffers(), model.buffers(), strict=True):
            eb.copy_(wb)


@dataclass
class TrainResult:
    manifest: dict[str, Any]
    history: list[dict[str, Any]]
    config: dict[str, Any]


def fit(task: Task, s: Settings, train: Any, val: Any, n_train_events: int,
        command: list[str] | None = None, inputs: list[str] | None = None,
        data_summary: dict[str, Any] | None = None, n_val_events: int = 0) -> TrainResult:
    """Train with Ray Train and publish ``OUT/model/``; resumes from ``OUT/train/`` when it holds checkpoints.

    With GPU workers, waits (at most ``resource_wait_minutes``) for the cluster to hold them, asking the
    autoscaler, and checks that CUDA sees each one (:func:`~neutrino_ray.runtime.wait_for_gpus`).
    ``data_summary`` (what was selected, skipped, balanced) is stored in ``config.json`` as ``data``;
    ``n_val_events`` sizes the time reserved for validation before a first one was measured."""
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    started = time.time()
    resources = runtime.init_ray(dashboard=True)
    use_gpu = s.gpus_per_worker > 0
    cpus = 1.0 if use_gpu and s.cpus_per_worker is None else s.cpus(resources.get("CPU", 1))
    if use_gpu:
        runtime.wait_for_gpus(s.workers, s.gpus_per_worker, cpus, s.resource_wait_minutes,
                              f"--workers {s.workers} x --gpus-per-worker {s.gpus_per_worker:g}")
    per_worker: dict[str, float] = {"CPU": cpus}
    if use_gpu:
        per_worker["GPU"] = s.gpus_per_worker
    total_steps = s.epochs * math.ceil(n_train_events / (s.batch_size * s.workers))
    fs, path = storage.arrow_filesystem(s.out)
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config={"task": task, "settings": s, "total_steps": total_steps, "cpus_per_worker": cpus,
                           "val_events": n_val_events, "device_hook": s.device_hook, "fault": _fault},
        scaling_config=ScalingConfig(num_workers=s.workers, use_gpu=use_gpu, resources_per_worker=per_worker),
        torch_config=TorchConfig(backend=s.backend or ("nccl" if use_gpu else "gloo")),
        run_config=RunConfig(name=RUN_NAME, storage_path=path, storage_filesystem=fs,
                             failure_config=FailureConfig(max_failures=s.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
        datasets={"train": train, "val": val},
        # One worker reads the whole datasets itself: no split coordinator (it busy-polls a CPU core).
        dataset_config=DataConfig(datasets_to_split="all" if s.workers > 1 else []),
    )
    log.info("training %s on %d worker(s) (%s per worker), %d training events, up to %d epochs%s; checkpoints in %s",
             task.name, s.workers, ", ".join(f"{v:g} {k}" for k, v in per_worker.items()), n_train_events, s.epochs,
             f" or {s.max_minutes:g} min" if s.max_minutes else "", storage.join(s.out, RUN_NAME))
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"{s.out}: training finished without a checkpoint; nothing was published")
    with result.checkpoint.as_directory() as d:
        saved = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=False)
    return publish(task, s, saved, command=command, inputs=inputs, started=started, cpus_per_worker=cpus,
                   data_summary=data_summary)


def publish(task: Task, s: Settings, saved: dict[str, Any], command: list[str] | None, inputs: list[str] | None,
            started: float, cpus_per_worker: float, data_summary: dict[str, Any] | None = None) -> TrainResult:
    """The final checkpoint → ``OUT/model/`` (weights, config, metrics, learning curve), atomically."""
    model = task.build_model()
    p = TrainingState(**saved["progress"])
    last = p.history[-1] if p.history else {}
    published, kept = last, "last"
    best = best_entry(p.history)
    if s.keep == "best" and saved.get("best") is not None and best is not None:
        model.load_state_dict(saved["best"])
        published, kept = p.history[best], "best"
    else:
        model.load_state_dict(saved.get("ema") or saved["model"])  # the EMA weights when training kept them
    config = {
        **artefact.artefact_config(task, model),
        "training": {"epochs": p.epoch, "steps": p.step, "events": p.events, "minutes": round(p.seconds / 60, 2),
                     "events_per_second": round(p.events / p.step_seconds, 1) if p.step_seconds else None,
                     "restarts": p.restarts, "workers": s.workers, "cpus_per_worker": cpus_per_worker,
                     "gpus_per_worker": s.gpus_per_worker, "precision": p.precision or "fp32",
                     "first_step_at": p.first_step_at, "settings": asdict(s),
                     "final_validation": {k: v for k, v in last.items() if k.startswith("val_")},
                     # which checkpoint's weights were published (--keep), and their validation
                     "published": {"keep": kept, "epoch": published.get("epoch"), "step": published.get("step")},
                     "published_validation": {k: v for k, v in published.items() if k.startswith("val_")}},
    }
    if data_summary is not None:
        config["data"] = data_summary
    with storage.Output(storage.join(s.out, artefact.MODEL_DIR), command=command, inputs=inputs,
                        started=started) as out:
        out.write(artefact.WEIGHTS, artefact.weights_bytes(model))
        out.write(artefact.CONFIG, json.dumps(config, indent=2).encode())
        out.write(artefact.METRICS, json.dumps(p.history, indent=2).encode())
        out.write(artefact.CURVE, artefact.learning_curve(p.history, task.val_metric, task.name))
        manifest = out.commit(kind="train", task=task.name, events=p.events, epochs=p.epoch,
                              events_per_second=config["training"]["events_per_second"],
                              precision=config["training"]["precision"],
                              n_parameters=config["n_parameters"], **config["training"]["published_validation"])
    return TrainResult(manifest, p.history, config)
