"""What each NOvA task predicts, from the truth fields of the course layout (pure numpy).

Classification tasks map an event to a class index or -1 (not part of the task: counted and skipped);
regression tasks map it to a target value or NaN (skipped).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from neutrino_ray.nova import format as fmt

CLASSES: dict[str, tuple[str, ...]] = {
    "numu-cc": ("other", "numu-CC"),  # ν_μ CC against everything else (ν_e/ν_τ CC, NC, ν-e, cosmics)
    "flavour": ("numu-CC", "nue-CC", "NC"),  # ν_τ CC, ν-on-e, cosmic and other events are not in this task
    "mode": fmt.MODES,  # CC events only (QE, RES, DIS, other); NC has no mode code
}
REGRESSION: dict[str, str] = {
    "energy": "neutrino energy (GeV)",
    "y": "inelasticity y = E_lepton / E_nu",
}
TASKS = (*CLASSES, *REGRESSION)


def is_classification(task: str) -> bool:
    return task in CLASSES


def check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}: expected one of {', '.join(TASKS)}")


def class_labels(task: str, interaction: np.ndarray) -> np.ndarray:
    """Class index per event (int64), -1 where the event is not part of the task."""
    i = np.asarray(interaction).astype(np.int64).ravel()
    out = np.full(len(i), -1, np.int64)
    if task == "numu-cc":
        out[:] = (i <= 3).astype(np.int64)
    elif task == "flavour":
        out[i <= 3] = 0
        out[(i >= 4) & (i <= 7)] = 1
        out[i == fmt.NC] = 2
    elif task == "mode":
        cc = i <= 11
        out[cc] = i[cc] % 4
    else:
        raise ValueError(f"{task!r} is not a classification task")
    return out


def regression_targets(task: str, nuenergy: np.ndarray, lepenergy: np.ndarray) -> np.ndarray:
    """Target per event (float64), NaN where undefined (E_nu <= 0 or non-finite)."""
    e = np.asarray(nuenergy, np.float64).ravel()
    ok = np.isfinite(e) & (e > 0)
    if task == "energy":
        return np.where(ok, e, np.nan)
    if task == "y":
        lep = np.asarray(lepenergy, np.float64).ravel()
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(ok & np.isfinite(lep), lep / np.where(ok, e, 1.0), np.nan)
    raise ValueError(f"{task!r} is not a regression task")


def targets(task: str, fields: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(target, in_task mask): class indices or regression values for the events of ``fields``."""
    if is_classification(task):
        y = class_labels(task, fields["interaction"])
        return y, y >= 0
    v = regression_targets(task, fields["nuenergy"], fields["lepenergy"])
    return v, np.isfinite(v)
