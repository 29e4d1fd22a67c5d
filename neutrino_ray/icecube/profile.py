"""The dataset profile's pure core: exact, mergeable summaries of a block of Kaggle-layout events.

:func:`profile_events` turns one block of events (the rows :func:`~neutrino_ray.icecube.data.read_slice`
returns, or :func:`events_from_flat` of a flat pulse table) into a small :class:`Profile`; :func:`merge` /
:func:`merge_all` combine profiles, in any order and grouping, to the same result.
:mod:`~neutrino_ray.icecube.stats_report` turns the merged profile into ``stats.json`` and renders it;
:mod:`~neutrino_ray.icecube.stats` runs it over a split on Ray.

Exactness. Every figure is computed from exact, mergeable summaries:

* integer quantities (pulses per event, pulse times, first-pulse times, spans, in ns) are kept as exact
  histograms of their distinct values; quantiles follow ``numpy.quantile(x, q, method="inverted_cdf")``
  exactly (the sorted element of 0-based rank ``ceil(n q) − 1``, computed with numpy's own float
  expression ``n * q − 1``). Times and spans are clipped to ``TIME_WINDOW_NS`` / ``SPAN_WINDOW_NS``
  (±2^20 ns, about ±1 ms, far beyond any readout window) so that a histogram can never grow past 2^21
  bins; min and max stay exact, the number of clipped pulses is reported, and only a quantile whose rank
  falls among clipped outliers would read the window edge.
* charge is histogrammed on its 0.025 pe grid, ``round(charge / 0.025)``, keeping for each bin the
  smallest and largest charge seen in it. ``on_0025_grid`` says whether every charge is a multiple of
  0.025 pe (to a relative 1e-6, float rounding); quantiles are the smallest charge of the bin that holds
  the inverted-CDF rank, hence exact (``quantiles: "exact"``) whenever every bin holds one distinct value,
  and otherwise within one 0.025 pe bin (``quantiles: "within 0.025 pe"``, the coarse figure for data
  off the grid). Charges above ``CHARGE_MAX_INDEX`` × 0.025 pe (26,214 pe) share the top bin and are
  counted as clipped. Mean and standard deviation (ddof = 0) are merged with Chan's pairwise formulas.
* means of integer quantities are exact sums divided by counts; LineFit scores are the competition
  formula (:func:`~neutrino_ray.icecube.metrics.angular_distance`, averaged) as a sum and a count.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from neutrino_ray.icecube import data as icdata
from neutrino_ray.icecube import linefit as lf
from neutrino_ray.icecube.features import PULSE_COLUMNS, flat_pulses
from neutrino_ray.icecube.metrics import angular_distance

CHARGE_STEP = 0.025  # pe: the real data's charge grid
GRID_RTOL = 1e-6  # a charge is on the grid when |charge − k · 0.025| <= 1e-6 · charge
CHARGE_MAX_INDEX = 2**20  # grid bins kept: charges up to 26,214.4 pe (real max 2,762); above, clipped (max exact)
TIME_WINDOW_NS = (-(2**20), 2**20)  # pulse and first-pulse times histogrammed in 1 ns bins in here
SPAN_WINDOW_NS = (0, 2**20)
QUANTILES = {"q1": 0.25, "median": 0.5, "q3": 0.75}
SIZE_BINS = ((1, 50), (51, 100), (101, 150), (151, 1000), (1001, None))  # pulses per event, inclusive


# ----------------------------------------------------------------------------------------------
# Mergeable summaries
def inverted_cdf_ranks(n: int, levels: Sequence[float]) -> np.ndarray:
    """0-based ranks in the sorted data of ``numpy.quantile(..., method="inverted_cdf")``, computed as numpy does."""
    index = np.asarray(levels, dtype=np.float64) * n - 1  # numpy: (n * quantiles) - 1
    previous = np.floor(index)
    rank = np.where(index - previous == 0, previous, previous + 1).astype(np.int64)
    return np.clip(rank, 0, max(n - 1, 0))


def _exact_sum(x: np.ndarray) -> int:
    """Exact sum of int64 values: int64 when it cannot overflow, else high and low 32-bit halves summed apart."""
    if len(x) == 0:
        return 0
    if int(np.abs(x).max()) < 2**62 // len(x):
        return int(x.sum())
    return int((x >> 32).sum()) * 2**32 + int((x & 0xFFFFFFFF).sum())


@dataclass
class Hist:
    """Exact histogram of integers: sorted distinct (clipped) values and their counts.

    Optional per-value columns: ``weights`` (sums of an integer weight, e.g. auxiliary pulses of the
    events with that many pulses) and ``rep_min`` / ``rep_max`` (smallest / largest original float that
    fell in the bin, e.g. the charges of a grid index). ``vmin``, ``vmax`` and ``total`` are exact over
    the unclipped values; ``clipped`` counts values moved to the window edges.
    """

    values: np.ndarray
    counts: np.ndarray
    weights: np.ndarray | None = None
    rep_min: np.ndarray | None = None
    rep_max: np.ndarray | None = None
    vmin: int | None = None
    vmax: int | None = None
    total: int = 0
    clipped: int = 0

    @classmethod
    def of(cls, x: np.ndarray, window: tuple[int, int] | None = None, weights: np.ndarray | None = None,
           reps: np.ndarray | None = None) -> Hist:
        x = np.asarray(x, dtype=np.int64)
        empty = np.zeros(0, np.int64)
        if len(x) == 0:
            return cls(empty, empty, None if weights is None else empty,
                       None if reps is None else np.zeros(0), None if reps is None else np.zeros(0))
        vmin, vmax, total, clipped = int(x.min()), int(x.max()), _exact_sum(x), 0
        if window is not None and (vmin < window[0] or vmax > window[1]):
            clipped = int(np.count_nonzero((x < window[0]) | (x > window[1])))
            x = np.clip(x, window[0], window[1])
        lo, hi = int(x.min()), int(x.max())
        if hi - lo <= max(4 * len(x), 1 << 16):  # dense: bincount over the block's own range
            idx = x - lo
            dense = np.bincount(idx)
            nz = np.flatnonzero(dense)
            values, counts, size = lo + nz, dense[nz], hi - lo + 1
        else:  # sparse values: sort
            values, idx, counts = np.unique(x, return_inverse=True, return_counts=True)
            nz, size = np.arange(len(values)), len(values)
        w = None if weights is None else np.bincount(idx, weights, minlength=size)[nz].round().astype(np.int64)
        rmin = rmax = None
        if reps is not None:
            rmin, rmax = np.full(size, np.inf), np.full(size, -np.inf)
            np.minimum.at(rmin, idx, reps)
            np.maximum.at(rmax, idx, reps)
            rmin, rmax = rmin[nz], rmax[nz]
        return cls(values.astype(np.int64), counts.astype(np.int64), w, rmin, rmax, vmin, vmax, total, clipped)

    @property
    def n(self) -> int:
        return int(self.counts.sum())

    def merge(self, other: Hist) -> Hist:
        values, inv = np.unique(np.r_[self.values, other.values], return_inverse=True)
        counts = np.zeros(len(values), np.int64)
        np.add.at(counts, inv, np.r_[self.counts, other.counts])
        w = rmin = rmax = None
        if self.weights is not None and other.weights is not None:
            w = np.zeros(len(values), np.int64)
            np.add.at(w, inv, np.r_[self.weights, other.weights])
        if self.rep_min is not None and other.rep_min is not None:
            assert self.rep_max is not None and other.rep_max is not None
            rmin, rmax = np.full(len(values), np.inf), np.full(len(values), -np.inf)
            np.minimum.at(rmin, inv, np.r_[self.rep_min, other.rep_min])
            np.maximum.at(rmax, inv, np.r_[self.rep_max, other.rep_max])
        lows = [v for v in (self.vmin, other.vmin) if v is not None]
        highs = [v for v in (self.vmax, other.vmax) if v is not None]
        return Hist(values, counts, w, rmin, rmax, min(lows) if lows else None, max(highs) if highs else None,
                    self.total + other.total, self.clipped + other.clipped)

    def positions(self, levels: Sequence[float]) -> np.ndarray:
        """Index into ``values`` of the inverted-CDF quantiles at ``levels``."""
        ranks = inverted_cdf_ranks(self.n, levels)
        return np.searchsorted(np.cumsum(self.counts), ranks, side="right")

    def quantiles(self, levels: Sequence[float]) -> list[int]:
        return [int(v) for v in self.values[self.positions(levels)]]

    def summary(self, p99: bool = False, mean: bool = True) -> dict[str, Any]:
        """min, quartiles (and p99), max, mean of the histogrammed integers; clipped outliers if any."""
        levels = {**QUANTILES, **({"p99": 0.99} if p99 else {})}
        qs = dict(zip(levels, self.quantiles(list(levels.values()))))
        out: dict[str, Any] = {"min": self.vmin, **qs, "max": self.vmax}
        if mean:
            out["mean"] = self.total / self.n
        if self.clipped:
            out["clipped_outliers"] = self.clipped
        return out


@dataclass
class Moments:
    """Count, mean, sum of squared deviations, min and max of floats; merged with Chan's formulas."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0
    min: float = math.inf
    max: float = -math.inf

    @classmethod
    def of(cls, x: np.ndarray) -> Moments:
        x = np.asarray(x, dtype=np.float64)
        if len(x) == 0:
            return cls()
        mean = float(x.mean())
        return cls(len(x), mean, float(np.square(x - mean).sum()), float(x.min()), float(x.max()))

    def merge(self, other: Moments) -> Moments:
        if other.n == 0:
            return self
        if self.n == 0:
            return other
        n = self.n + other.n
        delta = other.mean - self.mean
        return Moments(n, self.mean + delta * other.n / n, self.m2 + other.m2 + delta * delta * self.n * other.n / n,
                       min(self.min, other.min), max(self.max, other.max))

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.n) if self.n else math.nan


@dataclass
class Profile:
    """The mergeable partial profile of some events (one block, one batch file or a whole split)."""

    events: int
    pulses: Hist  # pulses per event; weights: auxiliary pulses of those events
    time: Hist  # every pulse's time (ns)
    first_time: Hist  # each event's first (earliest) pulse time (ns)
    span: Hist  # each event's last − first pulse time (ns)
    charge: Hist  # round(charge / 0.025); rep_min / rep_max: the charges in each bin
    charge_moments: Moments
    charge_off_grid: int  # pulses whose charge is not a multiple of 0.025 pe
    sensor_hits: np.ndarray  # pulses per sensor_id
    zenith: Moments = field(default_factory=Moments)  # true directions (n = 0: no truth)
    azimuth: Moments = field(default_factory=Moments)
    linefit: dict[str, tuple[float, int, int]] = field(default_factory=dict)  # variant → (Σ error, events, degenerate)
    batch_ids: tuple[int, ...] = ()


def events_from_flat(pulses: pa.Table) -> pa.Table:
    """One row per event with list columns, from a flat pulse table sorted by event_id (the Kaggle order).

    For profiling in-memory pulses (e.g. a simulated batch) exactly as :func:`profile_events` profiles
    the rows of :func:`~neutrino_ray.icecube.data.read_slice`.
    """
    ids = pulses.column("event_id").to_numpy()
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]]) if len(ids) else np.zeros(0, np.int64)
    offsets = pa.array(np.r_[starts, len(ids)].astype(np.int32))
    cols = {c: pa.ListArray.from_arrays(offsets, pulses.column(c).combine_chunks().cast(icdata.PULSE_TYPES[c]))
            for c in PULSE_COLUMNS}
    return pa.table({"event_id": pa.array(ids[starts], pa.int64()), **cols})


def profile_events(events: pa.Table, geometry: np.ndarray, azimuth: np.ndarray | None = None,
                   zenith: np.ndarray | None = None, variants: Sequence[str] = lf.VARIANTS) -> Profile:
    """The partial profile of a block of events (vectorised over the block; no per-event loop).

    ``events``: one row per event with list columns sensor_id, time, charge, auxiliary (an optional
    batch_id column names the batch). ``geometry``: (n_sensors, 3) positions by sensor_id.
    ``azimuth``/``zenith``: the events' true directions in row order, or None; with them, the
    LineFit ``variants`` are fitted and scored with the competition metric.
    """
    n = len(events)
    if n:
        offsets, sensor, t, charge, aux = flat_pulses(events)
        sensor, t, charge = sensor.astype(np.int64), t.astype(np.int64), charge.astype(np.float64)
    else:
        offsets, sensor, t = np.zeros(1, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
        charge, aux = np.zeros(0), np.zeros(0, bool)
    counts = np.diff(offsets)
    if n and counts.min() < 1:
        raise ValueError("every event needs at least one pulse")
    starts = offsets[:-1]
    n_aux = np.add.reduceat(aux.astype(np.int64), starts) if n else np.zeros(0, np.int64)
    first = np.minimum.reduceat(t, starts) if n else np.zeros(0, np.int64)
    last = np.maximum.reduceat(t, starts) if n else np.zeros(0, np.int64)
    k = np.rint(charge / CHARGE_STEP)
    off_grid = int(np.count_nonzero(np.abs(charge - k * CHARGE_STEP) > GRID_RTOL * np.abs(charge)))
    hits = np.bincount(sensor, minlength=len(geometry))
    if len(hits) > len(geometry) or (len(sensor) and sensor.min() < 0):
        raise ValueError(f"sensor_id outside the geometry (0..{len(geometry) - 1})")
    prof = Profile(
        events=n,
        pulses=Hist.of(counts, weights=n_aux),
        time=Hist.of(t, TIME_WINDOW_NS),
        first_time=Hist.of(first, TIME_WINDOW_NS),
        span=Hist.of(last - first, SPAN_WINDOW_NS),
        charge=Hist.of(np.clip(k, 0, CHARGE_MAX_INDEX).astype(np.int64), reps=charge),
        charge_moments=Moments.of(charge),
        charge_off_grid=off_grid,
        sensor_hits=hits,
        batch_ids=(tuple(int(b) for b in np.unique(events.column("batch_id").to_numpy()))
                   if "batch_id" in events.column_names and n else ()),
    )
    if azimuth is None or zenith is None:
        return prof
    azimuth, zenith = np.asarray(azimuth, np.float64), np.asarray(zenith, np.float64)
    if len(azimuth) != n or len(zenith) != n:
        raise ValueError(f"{len(azimuth)} azimuths and {len(zenith)} zeniths for {n} events")
    prof.azimuth, prof.zenith = Moments.of(azimuth), Moments.of(zenith)
    for v in variants:
        az, zen, ok = lf.fit(v, offsets, geometry, t, charge, aux, sensor=sensor)
        err = angular_distance(azimuth, zenith, az, zen)
        prof.linefit[v] = (float(err.sum()), n, int(n - np.count_nonzero(ok)))
    return prof


def merge(a: Profile, b: Profile) -> Profile:
    """The profile of the union of two disjoint sets of events."""
    hits = np.zeros(max(len(a.sensor_hits), len(b.sensor_hits)), np.int64)
    hits[:len(a.sensor_hits)] += a.sensor_hits
    hits[:len(b.sensor_hits)] += b.sensor_hits
    variants = list(dict.fromkeys([*a.linefit, *b.linefit]))
    fits = {}
    for v in variants:
        x, y = a.linefit.get(v, (0.0, 0, 0)), b.linefit.get(v, (0.0, 0, 0))
        fits[v] = (x[0] + y[0], x[1] + y[1], x[2] + y[2])
    return Profile(
        events=a.events + b.events, pulses=a.pulses.merge(b.pulses), time=a.time.merge(b.time),
        first_time=a.first_time.merge(b.first_time), span=a.span.merge(b.span), charge=a.charge.merge(b.charge),
        charge_moments=a.charge_moments.merge(b.charge_moments), charge_off_grid=a.charge_off_grid + b.charge_off_grid,
        sensor_hits=hits, zenith=a.zenith.merge(b.zenith), azimuth=a.azimuth.merge(b.azimuth), linefit=fits,
        batch_ids=tuple(sorted(set(a.batch_ids) | set(b.batch_ids))),
    )


def merge_all(parts: Iterable[Profile]) -> Profile:
    """Merge any number of profiles (at least one)."""
    out: Profile | None = None
    for p in parts:
        out = p if out is None else merge(out, p)
    if out is None:
        raise ValueError("no profiles to merge")
    return out
