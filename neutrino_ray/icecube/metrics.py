"""The competition metric and the summary statistics analysts ask for."""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def angular_dist_score(az_true: np.ndarray, zen_true: np.ndarray,
                       az_pred: np.ndarray, zen_pred: np.ndarray) -> float:
    """Mean angular distance (rad), exactly as the Kaggle "Neutrinos in Deep Ice" metric defines it."""
    if not (np.all(np.isfinite(az_true)) and np.all(np.isfinite(zen_true))
            and np.all(np.isfinite(az_pred)) and np.all(np.isfinite(zen_pred))):
        raise ValueError("All arguments must be finite")
    return float(np.mean(angular_distance(az_true, zen_true, az_pred, zen_pred)))


def angular_distance(az_true: np.ndarray, zen_true: np.ndarray,
                     az_pred: np.ndarray, zen_pred: np.ndarray) -> np.ndarray:
    """Per-event angle (rad) between true and predicted directions (the competition's formula)."""
    sa1, ca1 = np.sin(az_true), np.cos(az_true)
    sz1, cz1 = np.sin(zen_true), np.cos(zen_true)
    sa2, ca2 = np.sin(az_pred), np.cos(az_pred)
    sz2, cz2 = np.sin(zen_pred), np.cos(zen_pred)
    scalar_prod = sz1 * sz2 * (ca1 * ca2 + sa1 * sa2) + cz1 * cz2
    return np.arccos(np.clip(scalar_prod, -1.0, 1.0))


def errors_against_truth(truth: pa.Table, pred: pa.Table) -> np.ndarray:
    """Angular error (rad) of each prediction row (event_id, azimuth, zenith), in its order, against the truth
    row of the same event_id; the truth table may be in any order but must hold every predicted event."""
    ids = truth.column("event_id").to_numpy()
    order = np.argsort(ids, kind="stable")
    want = pred.column("event_id").to_numpy()
    pos = np.clip(np.searchsorted(ids[order], want), 0, max(len(ids) - 1, 0))
    rows = order[pos]
    missing = np.flatnonzero(ids[rows] != want) if len(ids) else np.arange(len(want))
    if len(missing):
        raise ValueError(f"no truth for event_id {int(want[missing[0]])} ({len(missing)} predicted events have none)")
    return angular_distance(truth.column("azimuth").to_numpy()[rows], truth.column("zenith").to_numpy()[rows],
                            pred.column("azimuth").to_numpy(), pred.column("zenith").to_numpy())


def summarise(errors: np.ndarray) -> dict[str, float]:
    """Mean, median and 68% containment of angular errors (rad)."""
    if len(errors) == 0:
        return {"n_events": 0}
    return {
        "n_events": len(errors),
        "mean_angular_error": float(np.mean(errors)),
        "median_angular_error": float(np.median(errors)),
        "containment_68": float(np.quantile(errors, 0.68)),
    }
