"""How to score an IceCube split: :class:`ScoringOptions` and the defaults of ``icecube predict`` and
``icecube stats``, in one place that imports neither Ray nor torch, so that the CLI parser reads them here.

The work itself is in :mod:`~neutrino_ray.icecube.scoring` (models, ensembles, the scoring actor) and
:mod:`~neutrino_ray.icecube.predict` (orchestration).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from neutrino_ray.icecube.linefit import VARIANTS

LINEFIT_EVENTS_PER_TASK = 20_000  # LineFit: big slices, so that per-task overheads stay small
GNN_EVENTS_PER_TASK = 2_000  # a trained model: smaller slices spread evenly over the actors
STATS_EVENTS_PER_TASK = 20_000  # icecube stats: events read at once inside a batch file's task (cut at row groups)
DEFAULT_BATCH_SIZE = 256  # events per model forward pass
FORMATS = ("csv", "parquet")  # icecube predict --format
# How a trained model's slices reach it. "fused": each model actor reads, decodes and featurises its own
# slices, then scores them (no extra copies: the faster on CPUs, measured in docs/icecube.md). "split": read +
# featurise run as Ray Data tasks on CPU workers and only packed, featurised batches reach the model actors
# (a GPU never waits on the CPU work). "auto": split when the actors hold GPUs, else fused.
PIPELINES = ("auto", "fused", "split")


@dataclass(frozen=True)
class ScoringOptions:
    """How to score: LineFit, or a trained model or an ensemble of them on an actor pool."""

    # A LineFit variant (linefit.VARIANTS), the URI of a trained model (OUT/model), or several URIs (an ensemble).
    model: str | tuple[str, ...] = "linefit"
    max_pulses: int | None = None  # LineFit's charge cap; a trained model's inference cap (transformers only)
    events_per_task: int | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    actors: int | None = None
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    weights: tuple[float, ...] | None = None  # ensemble weights, one per model (default: equal)
    kappa_weighted: bool = False  # ensemble: weight each member's direction by its κ as well
    calibrated: bool = True  # apply each model's κ calibration (calibration.json), where it has one
    uncertainty_events: int = 20_000  # LineFit: train events its empirical κ per pulse count is fitted on
    resource_wait_minutes: float = 15.0  # GPU actors: how long to wait for the autoscaler (runtime.wait_for_gpus)
    pipeline: str = "auto"  # trained models: "split" (CPU featurise tasks → model actors), "fused", "auto" (PIPELINES)
    featurise_tasks: int | None = None  # split pipeline: concurrent featurise tasks (None: the CPUs actors leave)
    ensemble_calibration: dict[str, Any] | None = None  # an ensemble artefact's κ calibration (of the combined κ)
    ensemble_uri: str | None = None  # the ensemble artefact these members came from

    @property
    def split_pipeline(self) -> bool:
        """Whether read + featurise run as their own CPU stage ahead of the model actors (see PIPELINES)."""
        return self.pipeline == "split" or (self.pipeline == "auto" and self.gpus_per_actor > 0)

    @property
    def members(self) -> tuple[str, ...]:
        return (self.model,) if isinstance(self.model, str) else tuple(self.model)

    @property
    def is_linefit(self) -> bool:
        return len(self.members) == 1 and self.members[0] in VARIANTS

    @property
    def slice_events(self) -> int:
        """Events per slice: as asked, else the default for LineFit or a trained model."""
        return self.events_per_task or (LINEFIT_EVENTS_PER_TASK if self.is_linefit else GNN_EVENTS_PER_TASK)
