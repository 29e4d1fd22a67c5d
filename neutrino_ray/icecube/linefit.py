"""LineFit: least-squares straight line r(t) = r0 + v·t per event, vectorised across events.

The particle moves along v, so the direction it comes from is −v/|v|. Events whose times are all
equal (e.g. one pulse) have no velocity; they get the default direction and are counted.
"""

from __future__ import annotations

import numpy as np

from neutrino_ray.icecube.features import event_index

# Straight up-going is as good a guess as any for an isotropic sky.
DEFAULT_AZIMUTH, DEFAULT_ZENITH = 0.0, np.pi / 2


def direction_to_angles(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors (N, 3) → azimuth ∈ [0, 2π), zenith ∈ [0, π]."""
    az = np.mod(np.arctan2(d[:, 1], d[:, 0]), 2 * np.pi)
    az = np.where(az >= 2 * np.pi, 0.0, az)  # mod can round up to exactly 2π
    zen = np.arccos(np.clip(d[:, 2], -1.0, 1.0))
    return az, zen


def angles_to_direction(azimuth: np.ndarray, zenith: np.ndarray) -> np.ndarray:
    """azimuth, zenith → unit vectors (N, 3)."""
    sz = np.sin(zenith)
    return np.stack([sz * np.cos(azimuth), sz * np.sin(azimuth), np.cos(zenith)], axis=1)


def linefit(xyz: np.ndarray, t: np.ndarray, offsets: np.ndarray,
            weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit every event at once. Returns (azimuth, zenith, ok) where ok is False for degenerate events."""
    n_events = len(offsets) - 1
    ev = event_index(offsets)
    w = np.ones(len(t)) if weights is None else np.asarray(weights, dtype=np.float64)
    sw = np.bincount(ev, w, minlength=n_events)
    sw_safe = np.where(sw > 0, sw, 1.0)
    t_mean = np.bincount(ev, w * t, minlength=n_events) / sw_safe
    dt = t - t_mean[ev]
    var_t = np.bincount(ev, w * dt * dt, minlength=n_events)
    v = np.empty((n_events, 3))
    for k in range(3):  # three coordinates, not a per-event loop
        r_mean = np.bincount(ev, w * xyz[:, k], minlength=n_events) / sw_safe
        cov = np.bincount(ev, w * dt * (xyz[:, k] - r_mean[ev]), minlength=n_events)
        v[:, k] = cov / np.where(var_t > 0, var_t, 1.0)
    speed = np.linalg.norm(v, axis=1)
    ok = (var_t > 0) & (speed > 0) & np.isfinite(speed)
    d = -v / np.where(ok, speed, 1.0)[:, None]
    az, zen = direction_to_angles(d)
    az = np.where(ok, az, DEFAULT_AZIMUTH)
    zen = np.where(ok, zen, DEFAULT_ZENITH)
    return az, zen, ok
