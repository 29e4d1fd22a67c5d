"""Training NOvA pixel-map models: the tasks plugged into the shared scaffold, and the data they stream.

Planning reads every file's fields (not its pixels) on the driver: it drops events outside the task
(counted), holds out the last ``val_events`` in-task events in file order as the validation set, and
balances the training classes by undersampling (every class cut to the rarest one's count, seeded)
or by class weights in the loss. The chosen rows then stream through the HDF5 datasource to the
Ray Train workers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from torch import nn

from neutrino_ray import devices, training
from neutrino_ray.errors import InputError
from neutrino_ray.nova import data, models, targets
from neutrino_ray.nova import format as fmt

log = logging.getLogger("neutrino_ray")

TASK_PREFIX = "nova-"
BALANCES = ("undersample", "weights", "none")
DEFAULT_EVENTS_PER_TASK = 500  # training read tasks: small blocks shuffle well


def input_spec() -> dict[str, Any]:
    """What the models' inputs mean; a model trained on other inputs is refused at load time."""
    return {"layout": f"{fmt.IMAGE} (view, plane, cell) = ({fmt.VIEWS}, {fmt.PLANES}, {fmt.CELLS}) uint8",
            "scale": f"log1p(count) / log1p({models.MAX_COUNT:g})"}


@dataclass(frozen=True)
class NovaTask:
    """One of the NOvA tasks (see :mod:`~neutrino_ray.nova.targets`) with a model for it."""

    target: str = "numu-cc"
    model: str = "small"
    sizes: dict[str, Any] | None = None  # CNN layer sizes when loaded from an artefact
    class_weights: tuple[float, ...] | None = None

    @property
    def name(self) -> str:
        return TASK_PREFIX + self.target

    @property
    def classes(self) -> tuple[str, ...]:
        return targets.CLASSES.get(self.target, ())

    @property
    def val_metric(self) -> str:
        return "val_balanced_accuracy" if self.classes else "val_rms"

    @property
    def validation_keys(self) -> tuple[str, ...]:
        if self.classes:
            k = range(len(self.classes))
            return ("n", "loss_sum", *(f"correct_{i}" for i in k), *(f"count_{i}" for i in k))
        return ("n", "loss_sum", "r_sum", "r2_sum")

    @property
    def n_out(self) -> int:
        return len(self.classes) or 1

    def model_sizes(self) -> dict[str, Any] | None:
        if self.model not in models.SIZES:  # the models with one fixed shape
            return None
        return self.sizes or models.SIZES[self.model].to_dict()

    def build_model(self) -> nn.Module:
        return models.build(self.model, self.n_out, self.model_sizes())

    def collate(self, batch: pa.Table, device: torch.device) -> dict[str, torch.Tensor]:
        """Event rows → pixel maps (uint8) and, for rows with truth in the task, targets."""
        x = torch.from_numpy(data.images(batch).copy())  # Arrow buffers are read-only
        fields = {name: batch.column(name).to_numpy() for name in ("interaction", "nuenergy", "lepenergy")}
        y, ok = targets.targets(self.target, fields)
        if not ok.all():
            raise InputError(f"file {batch.column('file')[0]}: events outside task {self.target!r} reached "
                             f"training (row {int(batch.column('index')[int(np.argmin(ok))].as_py())})")
        t = torch.from_numpy(y) if self.classes else torch.from_numpy(y.astype(np.float32))
        return {"x": devices.to_device(x, device), "y": devices.to_device(t, device)}

    def forward(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return model(x).float()

    def values(self, out: torch.Tensor) -> torch.Tensor:
        """Network output → class probabilities, energy (GeV) or y."""
        if self.classes:
            return out.softmax(dim=1)
        if self.target == "energy":
            return out[:, 0].clamp(-10, 10).exp()  # the network predicts log(E / GeV)
        return torch.sigmoid(out[:, 0])

    def _loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.classes:
            w = torch.tensor(self.class_weights, device=out.device) if self.class_weights else None
            return F.cross_entropy(out, y, weight=w)
        if self.target == "energy":
            return F.smooth_l1_loss(out[:, 0], torch.log(y), beta=0.1)
        return F.smooth_l1_loss(torch.sigmoid(out[:, 0]), y, beta=0.05)

    def loss(self, model: nn.Module, b: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._loss(self.forward(model, b["x"]), b["y"])

    def validation_sums(self, model: nn.Module, b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor | float]:
        """Sums over the batch as tensors on its device (the scaffold adds them up there: no host sync)."""
        out = self.forward(model, b["x"])
        y = b["y"]
        sums: dict[str, torch.Tensor | float] = {"n": float(len(y)), "loss_sum": self._loss(out, y) * len(y)}
        if self.classes:
            pred = out.argmax(dim=1)
            for i in range(len(self.classes)):
                sums[f"count_{i}"] = (y == i).sum()
                sums[f"correct_{i}"] = ((y == i) & (pred == i)).sum()
        else:
            v = self.values(out).double()
            r = (v - y) / y if self.target == "energy" else v - y
            sums.update(r_sum=r.sum(), r2_sum=(r * r).sum())
        return sums

    def validation_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        n = max(sums["n"], 1.0)
        m = {"val_events": int(sums["n"]), "val_loss": sums["loss_sum"] / n}
        if self.classes:
            k = range(len(self.classes))
            recalls = [sums[f"correct_{i}"] / sums[f"count_{i}"] for i in k if sums[f"count_{i}"] > 0]
            m["val_accuracy"] = sum(sums[f"correct_{i}"] for i in k) / n
            m["val_balanced_accuracy"] = float(np.mean(recalls)) if recalls else float("nan")
        else:
            bias = sums["r_sum"] / n
            m.update(val_bias=bias, val_rms=float(np.sqrt(max(sums["r2_sum"] / n, 0.0))))
        return m

    def config(self) -> dict[str, Any]:
        return {"target": self.target, "model": self.model, "sizes": self.model_sizes(),
                "classes": list(self.classes) or None,
                "regression": targets.REGRESSION.get(self.target),
                "class_weights": list(self.class_weights) if self.class_weights else None, "inputs": input_spec()}


@dataclass
class Plan:
    """Which rows of which files train and validate, and what was left out."""

    train: list[np.ndarray]  # per file, rows
    val: list[np.ndarray]
    class_counts: dict[str, int]  # in-task training events per class (or "events"), before balancing
    train_counts: dict[str, int]  # after balancing
    out_of_task: int
    class_weights: tuple[float, ...] | None

    @property
    def n_train(self) -> int:
        return sum(len(r) for r in self.train)

    @property
    def n_val(self) -> int:
        return sum(len(r) for r in self.val)

    def summary(self) -> dict[str, Any]:
        return {"train_events": self.n_train, "val_events": self.n_val, "class_counts": self.class_counts,
                "train_counts": self.train_counts, "out_of_task_events": self.out_of_task,
                "class_weights": list(self.class_weights) if self.class_weights else None}


def plan(files: list[data.FileMeta], target: str, balance: str, val_events: int, seed: int,
         where: str) -> Plan:
    """Select training and validation rows: in-task events, the validation tail, balanced training classes."""
    per_file = [targets.targets(target, m.fields) for m in files]
    file_of = np.concatenate([np.full(m.n_events, i) for i, m in enumerate(files)])
    row_of = np.concatenate([np.arange(m.n_events) for m in files])
    y = np.concatenate([t for t, _ in per_file])
    ok = np.concatenate([k for _, k in per_file])
    idx = np.flatnonzero(ok)  # in-task events, in file order
    if val_events >= len(idx):
        raise InputError(f"{where}: --val-events {val_events} leaves no training events ({len(idx)} events in task "
                         f"{target!r}, {int((~ok).sum())} outside it)")
    train_idx, val_idx = idx[:len(idx) - val_events], idx[len(idx) - val_events:]
    classes = targets.CLASSES.get(target, ())
    weights = None
    if classes:
        counts = np.bincount(y[train_idx].astype(np.int64), minlength=len(classes))
        class_counts = {c: int(n) for c, n in zip(classes, counts)}
        empty = [c for c, n in class_counts.items() if n == 0]
        if empty:
            raise InputError(f"{where}: no training events of class {empty} for task {target!r} ({class_counts})")
        if balance == "undersample":
            rng = np.random.default_rng(seed)
            keep = [rng.choice(train_idx[y[train_idx] == i], counts.min(), replace=False) for i in range(len(classes))]
            train_idx = np.sort(np.concatenate(keep))
        elif balance == "weights":
            weights = tuple(float(w) for w in counts.sum() / (len(classes) * counts))
        train_counts = {c: int(n) for c, n in zip(classes, np.bincount(y[train_idx].astype(np.int64),
                                                                         minlength=len(classes)))}
    else:
        if balance != "none":
            raise InputError(f"--balance {balance} applies to classification tasks; {target!r} is a regression "
                             f"(use --balance none)")
        class_counts = train_counts = {"events": len(train_idx)}

    def rows(sel: np.ndarray) -> list[np.ndarray]:
        return [row_of[sel[file_of[sel] == i]] for i in range(len(files))]

    return Plan(rows(train_idx), rows(val_idx), class_counts, train_counts, int((~ok).sum()), weights)


def train(data_uri: str, out: str, target: str = "numu-cc", model: str = "small", *, balance: str | None = None,
          batch_size: int = 64, lr: float = 2e-3, val_events: int = 2_000,
          events_per_task: int = DEFAULT_EVENTS_PER_TASK, skip_bad: bool = False, command: list[str] | None = None,
          **settings: Any) -> training.TrainResult:
    """Train a model for one task on every file under DATA; the artefact lands at ``OUT/model``.

    ``settings`` are :class:`~neutrino_ray.training.Settings` fields (workers, epochs, max_minutes, ...)."""
    if target not in targets.TASKS:
        raise InputError(f"unknown task {target!r}: expected one of {', '.join(targets.TASKS)}")
    if model not in models.MODELS:
        raise InputError(f"unknown model {model!r}: expected one of {', '.join(models.MODELS)}")
    balance = balance or ("undersample" if targets.is_classification(target) else "none")
    if balance not in BALANCES:
        raise InputError(f"unknown balance {balance!r}: expected one of {', '.join(BALANCES)}")
    scan = data.scan(data_uri, skip_bad=skip_bad)  # bad inputs fail before Ray starts
    p = plan(scan.files, target, balance, val_events, settings.get("seed", 0), data_uri)
    task = NovaTask(target=target, model=model, class_weights=p.class_weights)
    log.info("task %s, model %s: %s parameters; %d training events (%s: %s), %d validation events; %d events "
             "outside the task, %d bad files skipped", target, model, f"{models.n_parameters(task.build_model()):,}",
             p.n_train, balance, p.train_counts, p.n_val, p.out_of_task, len(scan.skipped))
    s = training.prepare(out, batch_size=batch_size, lr=lr, **settings)
    cpus = training.DATA_TASK_CPUS
    train_ds = data.dataset(data.plan_slices(scan.files, p.train, events_per_task), num_cpus=cpus)
    val_ds = data.dataset(data.plan_slices(scan.files, p.val, events_per_task), num_cpus=cpus)
    summary = {**p.summary(), "balance": balance, "input_files": len(scan.files),
               "skipped_files": [u for u, _ in scan.skipped]}
    return training.fit(task, s, train_ds, val_ds, p.n_train, command=command, inputs=[data_uri], n_val_events=p.n_val,
                        data_summary=summary)
