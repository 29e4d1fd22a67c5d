"""Training the IceCube direction models (DynEdge GNNs, transformers): the task plugged into the shared
scaffold, and the data it streams.

The train split is cut, per batch file and without the driver holding its meta, into a training part and
a held-out validation slice (its last ``val_events`` events in file order, or its last ``val_batches``
batch files). Both stream through Ray Data as featurised events, one block per slice (see
:mod:`~neutrino_ray.icecube.pipeline`), the training tasks in a new order every epoch; each Ray Train
worker gets its own shard and collates Arrow batches into packed PyG batches.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import torch
from torch import nn
from torch_geometric.data import Batch

from neutrino_ray import devices, training
from neutrino_ray.errors import InputError
from neutrino_ray.icecube import data as icdata
from neutrino_ray.icecube import features, models, pipeline, transformer
from neutrino_ray.icecube.architectures import (
    ARCHITECTURES,
    TRANSFORMER_INFERENCE_MAX_PULSES,
    default_max_pulses,
    is_transformer,
)
from neutrino_ray.icecube.linefit import angles_to_direction

log = logging.getLogger("neutrino_ray")

TASK = "icecube-direction"
DEFAULT_EVENTS_PER_TASK = 2_000  # training slices: small blocks shuffle and balance well


def feature_set() -> dict[str, Any]:
    """What the model's inputs mean; a model trained on another feature set is refused at load time."""
    return {"names": list(features.FEATURE_NAMES), "position_scale": features.POSITION_SCALE,
            "time_offset": features.TIME_OFFSET, "time_scale": features.TIME_SCALE,
            "charge_log_scale": features.CHARGE_LOG_SCALE}


@dataclass(frozen=True)
class DirectionTask:
    """Direction (azimuth, zenith) with a vMF concentration, from featurised IceCube events.

    ``max_pulses`` is the pulse cap of training; ``inference_max_pulses`` the one ``predict`` uses by
    default (a transformer attends over any number of pulses; a DynEdge model scores with its training
    cap)."""

    size: str = "small"
    max_pulses: int = features.DEFAULT_MAX_PULSES
    loss_kind: str = "vmf"
    sizes: dict[str, Any] | None = None  # layer sizes when loaded from an artefact
    inference_max_pulses: int | None = None  # None: max_pulses

    name: ClassVar[str] = TASK
    val_metric: ClassVar[str] = "val_mean_angular_error"
    validation_keys: ClassVar[tuple[str, ...]] = ("n", "loss_sum", "angle_sum")

    @property
    def predict_max_pulses(self) -> int:
        return self.inference_max_pulses or self.max_pulses

    def model_config(self) -> models.DynEdgeConfig | transformer.TransformerConfig:
        if self.sizes:
            if self.sizes.get("family") == "transformer":
                return transformer.TransformerConfig.from_dict(self.sizes)
            return models.DynEdgeConfig.from_dict(self.sizes)
        return transformer.SIZES[self.size] if is_transformer(self.size) else models.SIZES[self.size]

    def build_model(self) -> nn.Module:
        cfg = self.model_config()
        if isinstance(cfg, transformer.TransformerConfig):
            return transformer.Transformer(cfg)
        return models.build_model(cfg)

    @property
    def seeded(self) -> bool:
        """Whether the model refines the events' LineFit directions (the featurised ``seed`` column)."""
        return getattr(self.model_config(), "seeded", False)

    def collate(self, batch: pa.Table, device: torch.device) -> Batch:
        """Featurised event rows → a packed PyG batch (x, ptr, batch, n_pulses[, y unit vectors]) on ``device``,
        with ``host_ptr`` (the offsets, on the host) for the models' grouping; to a GPU from pinned memory,
        without blocking."""
        flat, offsets = features.features_from_table(batch)
        ptr = torch.from_numpy(offsets)
        b = Batch(x=torch.from_numpy(flat.copy()), ptr=ptr,  # Arrow buffers are read-only
                  batch=torch.repeat_interleave(torch.arange(len(offsets) - 1), ptr[1:] - ptr[:-1]),
                  n_pulses=torch.from_numpy(batch.column("n_pulses").to_numpy().astype(np.int64)))
        if self.seeded:
            b.seed = torch.from_numpy(features.seeds_from_table(batch))
        if "azimuth" in batch.column_names:
            az = batch.column("azimuth").to_numpy()
            zen = batch.column("zenith").to_numpy()
            b.y = torch.from_numpy(angles_to_direction(az, zen).astype(np.float32))
        b = devices.to_device(b, device)
        b.host_ptr = offsets
        return b

    def forward(self, model: nn.Module, b: Batch) -> torch.Tensor:
        if self.seeded:
            return model(b.x, b.ptr, b.n_pulses, getattr(b, "host_ptr", None), b.seed).float()
        return model(b.x, b.ptr, b.n_pulses, getattr(b, "host_ptr", None)).float()

    def loss(self, model: nn.Module, b: Batch) -> torch.Tensor:
        return models.direction_loss(self.forward(model, b), b.y, self.loss_kind)

    def validation_sums(self, model: nn.Module, b: Batch) -> dict[str, torch.Tensor | float]:
        v = self.forward(model, b)
        return {"n": float(len(v)), "loss_sum": models.direction_loss(v, b.y, self.loss_kind) * len(v),
                "angle_sum": models.angular_error(v, b.y).double().sum()}

    def validation_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        n = max(sums["n"], 1.0)
        return {"val_events": int(sums["n"]), "val_loss": sums["loss_sum"] / n,
                "val_mean_angular_error": sums["angle_sum"] / n}

    def config(self) -> dict[str, Any]:
        cfg = self.model_config()
        out = {"model": self.size, "sizes": cfg.to_dict(), "max_pulses": self.max_pulses,
               "inference_max_pulses": self.predict_max_pulses, "loss": self.loss_kind, "features": feature_set()}
        if isinstance(cfg, models.DynEdgeConfig):
            out["k"] = cfg.k
        return out


def train(data: str, out: str, size: str = "small", *, loss: str = "vmf",
          max_pulses: int | None = None, inference_max_pulses: int | None = None, val_events: int = 5_000,
          val_batches: int | None = None, events_per_task: int = DEFAULT_EVENTS_PER_TASK,
          command: list[str] | None = None,
          **settings: Any) -> training.TrainResult:
    """Train a direction model on DATA's train split; the artefact lands at ``OUT/model``.

    ``max_pulses`` is the training pulse cap (192 for a transformer, 256 for DynEdge when None);
    ``inference_max_pulses`` the cap ``predict`` uses by default (768 for a transformer; a DynEdge model
    always scores with its training cap). The validation slice is the split's last ``val_events`` events in
    file order, or its last ``val_batches`` batch files; the driver holds a summary per batch and light task
    specs, never the split's meta. ``settings`` are :class:`~neutrino_ray.training.Settings`
    fields (workers, epochs, max_minutes, ema_decay, ...)."""
    if size not in ARCHITECTURES:
        raise InputError(f"unknown model {size!r}: expected one of {', '.join(ARCHITECTURES)}")
    max_pulses = max_pulses or default_max_pulses(size)
    if is_transformer(size):
        inference_max_pulses = inference_max_pulses or max(max_pulses, TRANSFORMER_INFERENCE_MAX_PULSES)
    elif inference_max_pulses not in (None, max_pulses):
        raise InputError(f"--inference-max-pulses {inference_max_pulses}: a DynEdge model scores with its "
                         f"training cap ({max_pulses}); only transformers take another cap at inference")
    if loss not in models.LOSSES:
        raise InputError(f"unknown loss {loss!r}: expected one of {models.LOSSES}")
    uri = icdata.meta_uri(data, "train")
    summary = pipeline.split_summary(data, "train")  # bad inputs fail before Ray starts
    geometry = icdata.load_geometry(data)
    if val_batches is not None:
        val_events = icdata.last_batches_events(summary, val_batches, uri)
    train_ranges, val_ranges = icdata.holdout_ranges(summary, val_events, uri)
    s = training.prepare(out, **settings)
    train_plan = pipeline.plan_ranges(data, "train", summary, train_ranges, events_per_task, truth=True)
    val_plan = pipeline.plan_ranges(data, "train", summary, val_ranges, events_per_task, truth=True)
    task = DirectionTask(size=size, max_pulses=max_pulses, loss_kind=loss, inference_max_pulses=inference_max_pulses)
    n_params = models.n_parameters(task.build_model())
    log.info("model %s: %s parameters; %d training events in %d batch files, %d validation events; pulse cap %d in "
             "training, %d at inference", size, f"{n_params:,}", train_plan.events, len(train_ranges), val_plan.events,
             max_pulses, task.predict_max_pulses)
    cpus = training.DATA_TASK_CPUS
    # Every epoch reads the training tasks in a new order (row-group ranges of all batch files), then the
    # scaffold's local shuffle buffer mixes events across them.
    train_ds = pipeline.events_dataset(train_plan, geometry, max_pulses, num_cpus=cpus, shuffle_seed=s.seed,
                                       seeds=task.seeded)
    val_ds = pipeline.events_dataset(val_plan, geometry, max_pulses, num_cpus=cpus, seeds=task.seeded)
    how = (f"the last {val_batches} batch file(s) of the train split" if val_batches is not None
           else "the last val_events events of the train split, in file order")
    return training.fit(task, s, train_ds, val_ds, train_plan.events, command=command, inputs=[data],
                        n_val_events=val_plan.events,
                        data_summary={"train_events": train_plan.events, "val_events": val_plan.events,
                                      "train_batches": len(train_ranges), "val_batches": sorted(val_ranges),
                                      "validation": how, "shuffle": "task order per epoch + local buffer"})
