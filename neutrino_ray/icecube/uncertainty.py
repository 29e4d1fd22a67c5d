"""Per-event angular uncertainties from the 3-D von Mises–Fisher distribution, and their calibration.

A direction model predicts μ and a concentration κ: the vMF density on the sphere is
C₃(κ) exp(κ μ·x). The angle θ between x and μ then has P(θ ≤ r) = (1 − e^{−κ(1 − cos r)}) / (1 − e^{−2κ}),
so the radius containing probability p is, exactly,

    1 − cos r = −log1p(−p · (1 − e^{−2κ})) / κ,

computed with ``expm1``/``log1p`` so that it is stable from κ → 0 (the uniform sphere, 1 − cos r = 2p)
to κ ~ 1e5 (r ≈ √(−2 log(1 − p) / κ)). All plain numpy.
"""

from __future__ import annotations

import numpy as np

LEVELS = (0.5, 0.68, 0.9)  # containment probabilities of sigma_50, sigma_68, sigma_90


def vmf_quantile(kappa: np.ndarray | float, p: float | np.ndarray) -> np.ndarray:
    """Angular radius (rad) around μ containing probability ``p`` of vMF(μ, κ) on the 2-sphere."""
    kappa = np.asarray(kappa, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    k = np.maximum(kappa, 1e-8)  # below that, the uniform sphere to 1e-8 relative
    one_minus_cos = np.where(kappa > 1e-8, -np.log1p(p * np.expm1(-2 * k)) / k, 2 * p)
    one_minus_cos = np.clip(one_minus_cos, 0.0, 2.0)
    return 2 * np.arcsin(np.sqrt(one_minus_cos / 2))  # = arccos(1 − x), accurate for small x


def vmf_cdf(kappa: np.ndarray | float, angle: np.ndarray | float) -> np.ndarray:
    """P(θ ≤ angle) under vMF(μ, κ) on the 2-sphere: the probability-integral transform of an error."""
    kappa = np.asarray(kappa, dtype=np.float64)
    one_minus_cos = 2 * np.sin(np.asarray(angle, dtype=np.float64) / 2) ** 2
    k = np.maximum(kappa, 1e-8)
    out = np.where(kappa > 1e-8, np.expm1(-k * one_minus_cos) / np.expm1(-2 * k), one_minus_cos / 2)
    return np.clip(out, 0.0, 1.0)


def sigmas(kappa: np.ndarray) -> dict[str, np.ndarray]:
    """``sigma_50``, ``sigma_68``, ``sigma_90`` (rad) of each event's predicted vMF."""
    return {f"sigma_{round(100 * p)}": vmf_quantile(kappa, p) for p in LEVELS}


def coverage(errors: np.ndarray, kappa: np.ndarray, levels: np.ndarray | tuple[float, ...] = LEVELS) -> np.ndarray:
    """Observed fraction of events whose true error lies within the predicted p-containment radius."""
    u = vmf_cdf(kappa, errors)
    return np.array([float(np.mean(u <= p)) for p in np.atleast_1d(levels)])


CURVE_LEVELS = tuple(round(0.05 * i, 2) for i in range(1, 20))  # 0.05 … 0.95


def _coverage_in_bins(u: np.ndarray, values: np.ndarray, edges: np.ndarray, label: str) -> list[dict[str, object]]:
    idx = np.digitize(values, edges) - 1
    out: list[dict[str, object]] = []
    for b in range(len(edges) - 1):  # a handful of bins, not events
        sel = idx == b
        if sel.any():
            out.append({label: [float(edges[b]), float(edges[b + 1])], "n_events": int(sel.sum()),
                        **{f"coverage_{round(100 * p)}": float(np.mean(u[sel] <= p)) for p in LEVELS}})
    return out


def uncertainty_report(errors: np.ndarray, kappa: np.ndarray, energy: np.ndarray | None, n_pulses: np.ndarray,
                       n_pulses_edges: np.ndarray, energy_edges: np.ndarray | None) -> dict[str, object]:
    """How honest the predicted uncertainties are, from the true errors: coverage at 50 / 68 / 90 %, the
    coverage curve, the pull err / sigma_68 (calibrated: 68 % of pulls ≤ 1) and the probability-integral
    transform u = P(θ ≤ err) (calibrated: uniform), coverage against energy and pulse count."""
    u = vmf_cdf(kappa, errors)
    s68 = vmf_quantile(kappa, 0.68)
    pull = errors / np.maximum(s68, 1e-12)
    out: dict[str, object] = {
        "n_events": len(errors),
        **{f"coverage_{round(100 * p)}": float(np.mean(u <= p)) for p in LEVELS},
        "coverage_curve": {"predicted": list(CURVE_LEVELS), "observed": [float(np.mean(u <= p)) for p in CURVE_LEVELS]},
        "pull_sigma68": {"median": float(np.median(pull)), "fraction_below_1": float(np.mean(pull <= 1)),
                         "quantiles_10_50_90": [float(q) for q in np.quantile(pull, [0.1, 0.5, 0.9])]},
        "pit_histogram": [float(c) for c in np.histogram(u, bins=10, range=(0, 1))[0] / max(len(u), 1)],
        "median_sigma_68": float(np.median(s68)),
        "by_n_pulses": _coverage_in_bins(u, n_pulses, n_pulses_edges, "n_pulses"),
    }
    if energy is not None and energy_edges is not None:
        out["by_energy_gev"] = _coverage_in_bins(u, energy, energy_edges, "energy_gev")
    return out


# ---------------------------------------------------------------------------------------------------
# Calibration: a monotone map κ → κ' fitted on held-out events so that coverage is honest


CALIBRATION = "calibration.json"  # beside model.pt in the model artefact
CALIBRATION_FORMAT = "neutrino-ray kappa calibration v1"


def _best_kappa(errors: np.ndarray, grid: np.ndarray) -> float:
    """The κ whose containment radii best cover ``errors`` at 50, 68 and 90 % (least squares in coverage)."""
    one_minus_cos = 2 * np.sin(errors / 2) ** 2
    best, best_loss = float(grid[0]), np.inf
    for k in grid:  # a few hundred candidate values, not events
        u = np.expm1(-k * one_minus_cos) / np.expm1(-2 * k)
        loss = sum((np.mean(u <= p) - p) ** 2 for p in LEVELS)
        if loss < best_loss:
            best, best_loss = float(k), loss
    return best


def _binned_kappa(x: np.ndarray, errors: np.ndarray, n_bins: int,
                  min_events: int) -> tuple[list[float], list[float], list[int]]:
    """Events in bins of equal counts in ``x`` (at least ``min_events`` each): per bin the median x and
    the log of the κ whose 50/68/90 % radii best contain the bin's true errors (a log grid), and the count."""
    n_bins = max(1, min(n_bins, len(x) // min_events))
    order = np.argsort(x, kind="stable")
    grid = np.logspace(-3, 6, 721)
    xs, ys, ws = [], [], []
    for part in np.array_split(order, n_bins):  # ≤ n_bins bins
        xs.append(float(np.median(x[part])))
        ys.append(float(np.log(_best_kappa(errors[part], grid))))
        ws.append(len(part))
    return xs, ys, ws


def fit_kappa_calibration(kappa: np.ndarray, errors: np.ndarray, n_bins: int = 20,
                          min_events: int = 200) -> dict[str, object]:
    """Fit κ' = g(κ), monotone non-decreasing, on held-out events with their true errors.

    Events are binned by predicted κ (bins of equal counts, at least ``min_events`` each); in each bin the
    κ' whose 50/68/90 % radii best contain the bin's true errors is found on a log grid; the bin values
    are made monotone in κ (isotonic regression, weighted by counts) and stored as knots of log κ → log κ',
    interpolated linearly and held constant beyond the outer knots."""
    from sklearn.isotonic import IsotonicRegression

    log_kappa = np.log(np.maximum(np.asarray(kappa, np.float64), 1e-12))
    x, y, w = _binned_kappa(log_kappa, np.asarray(errors, np.float64), n_bins, min_events)
    y_mono = IsotonicRegression(increasing=True).fit(x, y, sample_weight=w).predict(x)
    return {"format": CALIBRATION_FORMAT, "log_kappa_in": x, "log_kappa_out": [float(v) for v in y_mono],
            "events": len(log_kappa), "bins": len(x), "method": "per-bin coverage fit at 50/68/90 %, isotonic in κ"}


def apply_kappa_calibration(calibration: dict[str, object] | None, kappa: np.ndarray) -> np.ndarray:
    """κ' = g(κ) from :func:`fit_kappa_calibration`'s knots (κ unchanged when there is no calibration)."""
    if calibration is None:
        return kappa
    xs = np.asarray(calibration["log_kappa_in"], np.float64)
    ys = np.asarray(calibration["log_kappa_out"], np.float64)
    return np.exp(np.interp(np.log(np.maximum(kappa, 1e-12)), xs, ys))


# ---------------------------------------------------------------------------------------------------
# LineFit: no κ of its own; an empirical κ per pulse count, fitted on train events with their truth


LINEFIT_UNCERTAINTY = "linefit_uncertainty.json"  # beside predictions.parquet in predict's output
LINEFIT_UNCERTAINTY_FORMAT = "neutrino-ray LineFit uncertainty v1"


def fit_pulse_count_kappa(n_pulses: np.ndarray, errors: np.ndarray, n_bins: int = 20,
                          min_events: int = 200) -> dict[str, object]:
    """An empirical κ as a function of the pulse count, for a reconstruction that predicts none (LineFit):
    events in bins of equal counts in log pulse count, per bin the κ whose 50/68/90 % radii best contain
    the bin's true errors; knots of log n → log κ, interpolated linearly, constant beyond the outer knots.
    Not forced monotone: LineFit is poor on bright cascades, which have many pulses."""
    log_n = np.log(np.maximum(np.asarray(n_pulses, np.float64), 1.0))
    x, y, w = _binned_kappa(log_n, np.asarray(errors, np.float64), n_bins, min_events)
    return {"format": LINEFIT_UNCERTAINTY_FORMAT, "log_n_pulses": x, "log_kappa": y, "bin_events": w,
            "events": len(log_n), "bins": len(x),
            "method": "per pulse-count bin (equal counts), the vMF κ whose 50/68/90 % radii best contain "
                      "the true errors of train events"}


def pulse_count_kappa(model: dict[str, object], n_pulses: np.ndarray) -> np.ndarray:
    """κ per event from :func:`fit_pulse_count_kappa`'s knots."""
    xs = np.asarray(model["log_n_pulses"], np.float64)
    ys = np.asarray(model["log_kappa"], np.float64)
    return np.exp(np.interp(np.log(np.maximum(np.asarray(n_pulses, np.float64), 1.0)), xs, ys))
