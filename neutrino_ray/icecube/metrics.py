"""The competition metric and the summary statistics analysts ask for."""

from __future__ import annotations

from typing import Any

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


def rows_by_event_id(ids: np.ndarray, want: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The one align-by-event-id step: for each event id of ``want``, the row of ``ids`` (in any order) that
    holds it, and whether one does (the row given for a missing id is arbitrary). With repeated ids in
    ``ids``, the first row of each."""
    if len(ids) == 0:
        return np.zeros(len(want), np.int64), np.zeros(len(want), bool)
    order = np.argsort(ids, kind="stable")
    rows = order[np.clip(np.searchsorted(ids[order], want), 0, len(ids) - 1)]
    return rows, ids[rows] == want


def with_true_direction(events: pa.Table, truth: pa.Table) -> pa.Table:
    """``events`` with the true ``azimuth`` and ``zenith`` of each row's event_id from ``truth`` (any order)
    appended; every event must have a truth row."""
    rows, found = rows_by_event_id(truth.column("event_id").to_numpy(), events.column("event_id").to_numpy())
    if not found.all():
        raise ValueError(f"no truth for event_id {events.column('event_id')[int(np.argmin(found))]} "
                         f"({int((~found).sum())} events have none)")
    take = pa.array(rows)
    return events.append_column("azimuth", truth.column("azimuth").take(take)).append_column(
        "zenith", truth.column("zenith").take(take))


def errors_against_truth(truth: pa.Table, pred: pa.Table) -> np.ndarray:
    """Angular error (rad) of each prediction row (event_id, azimuth, zenith), in its order, against the truth
    row of the same event_id; the truth table may be in any order but must hold every predicted event."""
    want = pred.column("event_id").to_numpy()
    rows, found = rows_by_event_id(truth.column("event_id").to_numpy(), want)
    missing = np.flatnonzero(~found)
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


# Poisson(1) by inversion of 16-bit uniforms: k = the number of thresholds 2^16 · P(X ≤ j), j = 0…8, that u
# reaches (each probability within 2^-16 of the exact one), looked up in a 65,536-entry table: one gather
# instead of numpy's Poisson sampler or nine comparisons per weight (both dearer; measured in docs/icecube.md,
# "compare made fast").
_POISSON1_THRESHOLDS = np.round(65536 * np.cumsum([np.exp(-1.0) / np.prod(np.arange(1, j + 1)) for j in range(9)]))
_POISSON1_THRESHOLDS = _POISSON1_THRESHOLDS[_POISSON1_THRESHOLDS < 65536].astype(np.uint32)
_POISSON1_TABLE = np.searchsorted(_POISSON1_THRESHOLDS, np.arange(65536), side="right").astype(np.uint8)
BOOTSTRAP_CHUNK = 20_000  # events per draw of weights: memory O(resamples · chunk)


def poisson1_weights(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Poisson(1) counts (uint8) of ``shape``, from 16-bit uniforms."""
    return _POISSON1_TABLE[rng.integers(0, 65536, size=shape, dtype=np.uint16)]


def poisson1_resample_sums(rng: np.random.Generator, n_resamples: int, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One chunk of events (the rows of ``x``, one column per quantity) under ``n_resamples`` Poisson(1)
    resamples drawn from ``rng``: Σ_i w_ri and Σ_i w_ri · x_ic per resample r (a matrix product, so any
    number of quantities, such as several models and bins, share one draw at the cost of one product).
    The product is in float32 (faster than float64; measured in docs/icecube.md, "compare made fast"): the
    weights are small integers, exact in float32, so only x is rounded (relative 6e-8) and
    the chunk's sums carry float32 round-off (≲ 1e-5 relative at 20,000 events, far inside the resampling
    noise of an interval); the chunks' sums are merged in float64."""
    w = poisson1_weights(rng, (n_resamples, len(x))).astype(np.float32)
    return w.sum(axis=1, dtype=np.float64), (w @ x.astype(np.float32)).astype(np.float64)


class PairedBootstrap:
    """A paired comparison of two reconstructions of the same events: the mean of the per-event difference of
    angular errors ``a - b`` (negative: A is better) and the fraction of events where A's error is strictly
    smaller, each with bootstrap intervals.

    A Poisson bootstrap (each event enters each resample with a Poisson(1) weight; Hanley & MacGibbon 2006,
    Chamandy et al. 2012) needs no knowledge of the number of events, so it runs block by block and merges
    by summing: each block's weights come from a generator seeded by ``(seed, block)``, drawn
    :data:`BOOTSTRAP_CHUNK` events at a time, so the result does not depend on which process scores which
    block nor in which order they are merged. Pairing matters: the two models' errors on the same event are
    correlated, so the interval on the difference is much narrower than the two unpaired intervals suggest.
    ``compare`` draws each chunk's weights once for every model and pair (:meth:`add_resampled`); with the
    same seed and blocks that is exactly :meth:`add`'s draw.
    """

    def __init__(self, n_resamples: int = 200, seed: int = 0):
        self.n_resamples, self.seed = n_resamples, seed
        self.n = 0
        self.sum_d = 0.0
        self.n_better = 0
        self.n_tied = 0
        self.w = np.zeros(n_resamples)  # per resample: Σ weights, Σ weight·d, Σ weight·[a < b]
        self.wd = np.zeros(n_resamples)
        self.wb = np.zeros(n_resamples)

    @staticmethod
    def columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """The resampled quantities of paired errors, one row per event: the difference and [a < b]."""
        if len(a) != len(b):
            raise ValueError(f"paired errors of different lengths: {len(a)} and {len(b)}")
        a, b = np.asarray(a, float), np.asarray(b, float)
        return np.stack([a - b, (a < b).astype(float)], axis=1)

    def add(self, block: int, a: np.ndarray, b: np.ndarray, chunk: int = BOOTSTRAP_CHUNK) -> None:
        """Add one block of paired errors (the same events, in the same order)."""
        x = self.columns(a, b)
        rng = np.random.default_rng([self.seed, block])
        for lo in range(0, len(x), chunk):
            xs = x[lo:lo + chunk]
            self.add_resampled(xs, *poisson1_resample_sums(rng, self.n_resamples, xs))

    def add_resampled(self, x: np.ndarray, sum_w: np.ndarray, sum_wx: np.ndarray) -> None:
        """Add one chunk: its :meth:`columns` and their :func:`poisson1_resample_sums` (from a shared draw)."""
        d = x[:, 0]
        self.n += len(d)
        self.sum_d += float(d.sum())
        self.n_better += int(x[:, 1].sum())
        self.n_tied += int(np.count_nonzero(d == 0))
        self.w += sum_w
        self.wd += sum_wx[:, 0]
        self.wb += sum_wx[:, 1]

    def merge(self, other: PairedBootstrap) -> PairedBootstrap:
        """Sum another accumulator's blocks into this one (same seed and resamples)."""
        if (other.n_resamples, other.seed) != (self.n_resamples, self.seed):
            raise ValueError("merging paired bootstraps of different settings")
        self.n += other.n
        self.sum_d += other.sum_d
        self.n_better += other.n_better
        self.n_tied += other.n_tied
        self.w += other.w
        self.wd += other.wd
        self.wb += other.wb
        return self

    def result(self) -> dict[str, Any]:
        if self.n == 0:
            return {"n_events": 0}
        ok = self.w > 0
        diff, frac = self.wd[ok] / self.w[ok], self.wb[ok] / self.w[ok]

        def interval(x: np.ndarray, level: float) -> list[float]:
            return [float(v) for v in np.percentile(x, [50 - 50 * level, 50 + 50 * level])]

        return {"n_events": self.n, "mean_difference": self.sum_d / self.n,
                "mean_difference_interval_68": interval(diff, 0.68),
                "mean_difference_interval_95": interval(diff, 0.95),
                "fraction_a_better": self.n_better / self.n,
                "fraction_a_better_interval_68": interval(frac, 0.68),
                "fraction_a_better_interval_95": interval(frac, 0.95),
                "fraction_tied": self.n_tied / self.n, "bootstrap_resamples": self.n_resamples,
                "bootstrap": "Poisson(1) weights per event, seeded per block"}
