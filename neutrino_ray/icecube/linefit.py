"""LineFit and its variants: least-squares straight line r(t) = r0 + v·t per event, vectorised across events.

The particle moves along v, so the direction it comes from is −v/|v|. Events whose times are all
equal (e.g. one pulse) have no velocity; they get the default direction and are counted.

The variants differ only in which pulses enter the fit (every step is vectorised over a whole block
of events; no per-event Python loop):

``linefit`` (the Kaggle public baseline, "IceCube – Neutrinos in Deep Ice", public leaderboard 1.214 rad)
    the pulses with ``auxiliary == False`` (hard local coincidence, HLC) only, or all pulses of an event
    with fewer than 2 of them; at most the ``KAGGLE_CHARGE_CAP`` (800) highest-charge pulses of those
    (ties: the earlier pulse).
``linefit-all``
    every pulse, up to the same charge cap.
``linefit-clean``
    ``linefit``'s pulses, then the scattered-light cleaning of IceCube's improved LineFit
    (Aartsen et al., NIM A 736 (2014) 143, arXiv:1308.5501): a pulse is dropped when another selected
    pulse within ``CLEAN_RADIUS`` (156 m) came more than ``CLEAN_DELAY`` (778 ns) earlier than light
    from it could have, t_i − t_j > |r_i − r_j| / c + 778 ns: such a pulse is most likely delayed by
    scattering. An event left with fewer than 2 pulses keeps its uncleaned selection.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from neutrino_ray.icecube.features import event_index, flat_pulses

# Straight up-going is as good a guess as any for an isotropic sky.
DEFAULT_AZIMUTH, DEFAULT_ZENITH = 0.0, np.pi / 2

VARIANTS = ("linefit", "linefit-all", "linefit-clean")
KAGGLE_CHARGE_CAP = 800  # the public notebook fits at most the 800 highest-charge pulses
MIN_HLC_PULSES = 2  # fewer HLC pulses than this: the Kaggle baseline falls back to all pulses
CLEAN_RADIUS = 156.0  # m, improved LineFit's neighbourhood
CLEAN_DELAY = 778.0  # ns, improved LineFit's allowed delay
C_VACUUM = 0.299792458  # m/ns
_MAX_PAIRS = 4_000_000  # DOM pairs held at once by the cleaning (bounded memory)


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


# ----------------------------------------------------------------------------------------------
# Pulse selections (boolean masks over the flat pulses of a block of events)
def hlc_or_all(offsets: np.ndarray, auxiliary: np.ndarray, ev: np.ndarray | None = None) -> np.ndarray:
    """The Kaggle baseline's pulses: auxiliary == False, or every pulse of an event with fewer than 2 such."""
    ev = event_index(offsets) if ev is None else ev
    hlc = ~auxiliary.astype(bool)
    n_hlc = np.bincount(ev, hlc, minlength=len(offsets) - 1)
    return hlc | (n_hlc < MIN_HLC_PULSES)[ev]


_CAP_BINS = 256  # charge bins (1/8 octave, 2^-16 … 2^16 pe) of charge_cap's pre-selection


def charge_cap(offsets: np.ndarray, mask: np.ndarray, charge: np.ndarray, cap: int,
               ev: np.ndarray | None = None) -> np.ndarray:
    """``mask`` limited to the ``cap`` highest-charge selected pulses of each event (ties: the earlier pulse).

    Only the events over the cap are ranked, and without sorting their pulses: a histogram per event in
    1/8-octave charge bins finds the bin holding the cap-th highest charge; pulses above it are kept,
    pulses below it dropped, and only that one bin's pulses are sorted (by charge, then position)."""
    ev = event_index(offsets) if ev is None else ev
    n_sel = np.bincount(ev, mask, minlength=len(offsets) - 1)
    over_event = n_sel > cap
    idx = np.flatnonzero(over_event[ev] & mask)
    if not len(idx):
        return mask
    n_over = int(over_event.sum())
    rank_of_event = np.cumsum(over_event) - 1
    er = rank_of_event[ev[idx]]
    q = charge[idx]
    b = np.clip(np.floor(np.log2(np.maximum(q, 1e-300)) * 8.0).astype(np.int64) + _CAP_BINS // 2, 0, _CAP_BINS - 1)
    hist = np.bincount(er * _CAP_BINS + b, minlength=n_over * _CAP_BINS).reshape(n_over, _CAP_BINS)
    at_or_above = np.cumsum(hist[:, ::-1], axis=1)[:, ::-1]  # pulses in bins >= k, non-increasing in k
    boundary = (at_or_above >= cap).sum(axis=1) - 1  # the bin holding the cap-th highest charge
    above = np.where(boundary + 1 < _CAP_BINS,
                     at_or_above[np.arange(n_over), np.minimum(boundary + 1, _CAP_BINS - 1)], 0)
    out = mask.copy()
    bb = boundary[er]
    out[idx[b < bb]] = False
    tie = np.flatnonzero(b == bb)  # the boundary bins' pulses: rank them exactly
    order = tie[np.lexsort((idx[tie], -q[tie], er[tie]))]
    e_sorted = er[order]
    first = np.r_[True, e_sorted[1:] != e_sorted[:-1]]
    start = np.maximum.accumulate(np.where(first, np.arange(len(order)), 0))
    out[idx[order[(np.arange(len(order)) - start) >= (cap - above)[e_sorted]]]] = False
    return out


def scattered_light(ev: np.ndarray, r: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Improved LineFit's delay cleaning, for pulses with event index ``ev``, positions ``r`` and times
    ``ts``: True for pulses i with an earlier pulse j of their event within CLEAN_RADIUS such that
    t_i - t_j > |r_i - r_j| / c + CLEAN_DELAY.

    Pulse pairs are never formed. For a pulse on DOM a only the earliest selected pulse of each DOM b
    matters, so per DOM a the threshold T_a = min over DOMs b within reach of (first time on b + d_ab / c)
    is computed, and pulse i is scattered iff t_i > T_a + CLEAN_DELAY (b = a included: a later pulse on the
    DOM of an earlier one). A DOM is compared only with the DOMs of its event first hit more than
    CLEAN_DELAY before its own last pulse: most events' HLC light comes within a microsecond, so few pairs."""
    if not len(ts):
        return np.zeros(0, dtype=bool)
    ev = ev.astype(np.int64)
    # DOMs of each event: pulses at the same position (to 1 cm) in the same event form one group.
    cm = np.rint((r - r.min(axis=0)) * 100.0).astype(np.int64)
    span = cm.max(axis=0) + 1
    pos_key = (cm[:, 0] * span[1] + cm[:, 1]) * span[2] + cm[:, 2]
    order = np.argsort(pos_key, kind="stable")
    order = order[np.argsort(ev[order], kind="stable")]  # by event, then by DOM
    new = np.r_[True, (ev[order][1:] != ev[order][:-1]) | (pos_key[order][1:] != pos_key[order][:-1])]
    g_start = np.flatnonzero(new)
    group = np.empty(len(ts), dtype=np.int64)
    group[order] = np.cumsum(new) - 1
    g_first = np.minimum.reduceat(ts[order], g_start)  # earliest selected pulse per DOM
    g_pos = r[order[g_start]]
    g_event = ev[order[g_start]]
    g_last = np.maximum.reduceat(ts[order], g_start)
    # Only DOMs b hit more than CLEAN_DELAY before a DOM a's last pulse can clean a pulse on a: with the
    # DOMs of each event ordered by first time, those b are one range per a (a vectorised look-up).
    t0 = float(g_first.min())
    t_span = float(g_last.max()) - t0 + 2 * CLEAN_DELAY + 1.0
    tkey = g_event * t_span + (g_first - t0)  # exact: < 2^53 for any block
    by_time = np.argsort(tkey, kind="stable")
    sorted_key = tkey[by_time]
    lo = np.searchsorted(sorted_key, g_event * t_span, side="left")
    count = np.searchsorted(sorted_key, g_event * t_span + (g_last - t0 - CLEAN_DELAY), side="left") - lo
    threshold = np.full(len(g_start), np.inf)
    a0 = 0
    cum = np.cumsum(count)
    while a0 < len(count):  # chunks of at most _MAX_PAIRS DOM pairs (bounded memory)
        a1 = max(a0 + 1, int(np.searchsorted(cum, (cum[a0 - 1] if a0 else 0) + _MAX_PAIRS, side="right")))
        c = count[a0:a1]
        a = np.repeat(np.arange(a0, a1), c)
        b = by_time[np.arange(len(a)) - np.repeat(np.cumsum(c) - c, c) + np.repeat(lo[a0:a1], c)]
        d = np.sqrt(((g_pos[a] - g_pos[b]) ** 2).sum(axis=1))
        near = d <= CLEAN_RADIUS
        np.minimum.at(threshold, a[near], g_first[b[near]] + d[near] / C_VACUUM)
        a0 = a1
    return ts > threshold[group] + CLEAN_DELAY


def select(variant: str, offsets: np.ndarray, xyz: np.ndarray, t: np.ndarray, charge: np.ndarray,
           auxiliary: np.ndarray, cap: int = KAGGLE_CHARGE_CAP, sensor: np.ndarray | None = None,
           ev: np.ndarray | None = None) -> np.ndarray:
    """The boolean mask of the pulses a LineFit variant fits. ``xyz``: per-pulse positions, or with
    ``sensor`` the geometry table it indexes (positions are then looked up only where needed)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown LineFit variant {variant!r}; expected one of {VARIANTS}")
    ev = event_index(offsets) if ev is None else ev
    if variant == "linefit-all":
        return charge_cap(offsets, np.ones(len(t), dtype=bool), charge, cap, ev)
    mask = charge_cap(offsets, hlc_or_all(offsets, auxiliary, ev), charge, cap, ev)
    if variant == "linefit":
        return mask
    sel = np.flatnonzero(mask)
    r = xyz[sel] if sensor is None else xyz[sensor[sel]]
    cleaned = mask.copy()
    cleaned[sel[scattered_light(ev[sel], r, t[sel])]] = False
    n_left = np.bincount(ev, cleaned, minlength=len(offsets) - 1)
    return np.where((n_left < MIN_HLC_PULSES)[ev], mask, cleaned)


def fit(variant: str, offsets: np.ndarray, xyz: np.ndarray, t: np.ndarray, charge: np.ndarray,
        auxiliary: np.ndarray, cap: int = KAGGLE_CHARGE_CAP, sensor: np.ndarray | None = None
        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(azimuth, zenith, ok) of a LineFit variant for every event of a block (flat pulses + offsets);
    ``xyz`` and ``sensor`` as in :func:`select`."""
    ev = event_index(offsets)
    mask = select(variant, offsets, xyz, t, charge, auxiliary, cap, sensor, ev)
    counts = np.bincount(ev, mask, minlength=len(offsets) - 1).astype(np.int64)
    new_offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=new_offsets[1:])
    idx = np.flatnonzero(mask)
    r = xyz[idx] if sensor is None else xyz[sensor[idx]]
    return linefit(r, t[idx].astype(np.float64), new_offsets)


def seed_column(events: pa.Table, geometry: np.ndarray) -> pa.FixedSizeListArray:
    """The Kaggle LineFit's unit direction (x, y, z, float64) of every event of a table with pulse list columns,
    fitted to all its pulses: the seed a LineFit-seeded model refines (featurised as the ``seed`` column)."""
    offsets, sensor, t, charge, aux = flat_pulses(events)
    az, zen, _ = fit("linefit", offsets, geometry, t, charge, aux, sensor=sensor)
    return pa.FixedSizeListArray.from_arrays(pa.array(angles_to_direction(az, zen).reshape(-1)), 3)
