"""Dataset profile of a Kaggle-layout split (real or simulated): ``neutrino-ray icecube stats``.

Pure core, then the Ray edge:

* :func:`profile_events` turns one block of events (the rows :func:`~neutrino_ray.icecube.data.read_slice`
  returns, or :func:`events_from_flat` of a flat pulse table) into a small :class:`Profile`;
  :func:`merge` / :func:`merge_all` combine profiles; :func:`to_stats` turns the merged profile into the
  ``stats.json`` dictionary; :func:`summary_markdown` and :func:`plots` render it.
* :func:`profile_split` plans per batch file: the driver lists the split's batch files and streams the
  meta's ``batch_id`` column for a per-batch event count (never the whole meta), then runs one Ray task per
  batch file. Each task reads only its own meta rows (a ``batch_id`` filter pushed down to the Parquet
  reader) and its truth rows, reads its pulses read task by read task, and returns one profile; the driver
  merges profiles as they arrive. Memory is independent of the number of events.

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

import json
import logging
import math
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from neutrino_ray import progress, runtime, storage
from neutrino_ray.icecube import data as icdata
from neutrino_ray.icecube import linefit as lf
from neutrino_ray.icecube.features import PULSE_COLUMNS, flat_pulses
from neutrino_ray.icecube.metrics import angular_distance
from neutrino_ray.icecube.options import STATS_EVENTS_PER_TASK
from neutrino_ray.plotting import counts_with_errors, png, pyplot

log = logging.getLogger("neutrino_ray")

STATS, SUMMARY = "stats.json", "summary.md"
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


# ----------------------------------------------------------------------------------------------
# The published facts of the real data, keyed by the stats.json path of the matching figure.
def _fact(value: Any, definition: str) -> dict[str, Any]:
    return {"value": value, "definition": definition}


_B1 = "train batch_1 (200,000 events)"
REAL_KAGGLE: dict[str, dict[str, Any]] = {
    "batch_files": _fact(660, "train batch files, train/batch_1 … batch_660 (Kaggle data page)"),
    "events": _fact(131_953_924, "train events, all 660 batches (rows of train_meta.parquet)"),
    "pulses_per_event.min": _fact(5, "fewest pulses in an event, all train batches"),
    "pulses_per_event.q1": _fact(48, "pulses per event, first quartile, all train batches"),
    "pulses_per_event.median": _fact(63, "pulses per event, median, all train batches"),
    "pulses_per_event.q3": _fact(89, "pulses per event, third quartile, all train batches"),
    "pulses_per_event.p99": _fact(1_130, f"pulses per event, 99th percentile (≈), {_B1}"),
    "pulses_per_event.max": _fact(178_250, "most pulses in an event, all train batches"),
    "pulses_per_event.mean": _fact(164.4, "mean pulses per event, all train batches"),
    "fraction_events_le_100_pulses": _fact(0.804, f"fraction of events with ≤ 100 pulses, {_B1}"),
    "fraction_events_gt_1000_pulses": _fact(0.011, "fraction of events with > 1,000 pulses, all train batches"),
    "auxiliary.fraction_events_le_150_pulses": _fact(
        2 / 3, "auxiliary (no local coincidence) pulses / all pulses in events with ≤ 150 pulses: ≈ 2/3"),
    "charge.min": _fact(0.025, f"smallest pulse charge (pe), {_B1}"),
    "charge.q1": _fact(0.775, f"pulse charge (pe), first quartile, {_B1}"),
    "charge.median": _fact(1.075, f"pulse charge (pe), median, {_B1}"),
    "charge.q3": _fact(1.775, f"pulse charge (pe), third quartile, {_B1}"),
    "charge.max": _fact(2_762, f"largest pulse charge (pe), {_B1}"),
    "charge.mean": _fact(3.909, f"mean pulse charge (pe), {_B1}"),
    "charge.std": _fact(16.29, f"standard deviation of pulse charge (pe), {_B1}"),
    "charge.on_0025_grid": _fact(True, f"every charge a multiple of 0.025 pe, {_B1}"),
    "time.q1": _fact(10_566, f"time of all pulses (ns), first quartile, {_B1}"),
    "time.median": _fact(11_815, f"time of all pulses (ns), median, {_B1}"),
    "time.q3": _fact(13_916, f"time of all pulses (ns), third quartile, {_B1}"),
    "time.mean": _fact(13_130, f"mean time of all pulses (ns), {_B1}"),
    "first_pulse_time.q1": _fact(5_973, f"each event's first-pulse time (ns), first quartile, {_B1}"),
    "first_pulse_time.median": _fact(6_129, f"each event's first-pulse time (ns), median, {_B1}"),
    "first_pulse_time.q3": _fact(6_405, f"each event's first-pulse time (ns), third quartile, {_B1}"),
    "span.min": _fact(4_732, f"shortest event span, last − first pulse time (ns), {_B1}"),
    "span.q1": _fact(9_990, f"event span (ns), first quartile, {_B1}"),
    "span.median": _fact(10_965, f"event span (ns), median, {_B1}"),
    "span.q3": _fact(12_431, f"event span (ns), third quartile, {_B1}"),
    "span.mean": _fact(11_665, f"mean event span (ns), {_B1}"),
    "sensors_hit": _fact(5_051, f"distinct sensors with at least one pulse, of 5,160, {_B1}"),
    "truth.zenith_mean": _fact(1.534, "mean true zenith (rad), train"),
    "truth.zenith_std": _fact(0.690, "standard deviation of the true zenith (rad), train"),
    "linefit.mean_angular_error.linefit": _fact(
        {"leaderboard": 1.214, "train batch_1": 1.21724},
        "LineFit on the auxiliary == False pulses (all pulses if fewer than 2), the Kaggle public notebook; "
        "mean angular error (competition metric), public leaderboard and train batch_1"),
    "linefit.mean_angular_error.linefit-clean": _fact(
        {"leaderboard": 1.184, "train batch_1": 1.18865},
        "the same LineFit with neighbour-coincidence (scattered-light) cleaning; public leaderboard and train batch_1"),
    "dynedge_mean_angular_error": _fact(1.018, "DynEdge (GraphNeT) competition benchmark, mean angular error"),
}

def size_label(lo: int, hi: int | None) -> str:
    """Name of an event-size bin: "1-50", …, ">1000"."""
    return f">{lo - 1}" if hi is None else f"{lo}-{hi}"


_VARIANT_LABELS = {"linefit": "LineFit (aux = False)", "linefit-all": "LineFit (all pulses)",
                   "linefit-clean": "LineFit (cleaned)"}

# (stats.json path, quantity, format, definition where REAL_KAGGLE has none) of the side-by-side table.
ROWS: tuple[tuple[str, str, str, str], ...] = (
    ("batch_files", "batch files", "int", "batch files of the split profiled"),
    ("events", "events", "int", "events of the split (meta rows)"),
    *((f"pulses_per_event.{k}", f"pulses per event, {k}", "num", "") for k in
      ("min", "q1", "median", "q3", "p99", "max", "mean")),
    ("fraction_events_le_100_pulses", "events with ≤ 100 pulses", "pct", ""),
    ("fraction_events_gt_1000_pulses", "events with > 1,000 pulses", "pct", ""),
    ("auxiliary.fraction", "auxiliary fraction, all pulses", "pct", "auxiliary pulses / all pulses"),
    ("auxiliary.fraction_events_le_150_pulses", "auxiliary fraction, events ≤ 150 pulses", "pct", ""),
    *((f"auxiliary.by_event_size.{size_label(lo, hi)}.auxiliary_fraction",
       f"auxiliary fraction, events of {size_label(lo, hi)} pulses", "pct",
       f"auxiliary pulses / all pulses, pooled over the events with {size_label(lo, hi)} pulses")
      for lo, hi in SIZE_BINS),
    *((f"charge.{k}", f"charge (pe), {k}", "num", "") for k in ("min", "q1", "median", "q3", "max", "mean", "std")),
    ("charge.on_0025_grid", "every charge a multiple of 0.025 pe", "bool", ""),
    *((f"time.{k}", f"time of all pulses (ns), {k}", "num", "") for k in ("q1", "median", "q3", "mean")),
    *((f"first_pulse_time.{k}", f"first-pulse time (ns), {k}", "num", "") for k in ("q1", "median", "q3")),
    *((f"span.{k}", f"event span (ns), {k}", "num", "") for k in ("min", "q1", "median", "q3", "mean")),
    ("sensors_hit", "sensors hit", "int", ""),
    ("truth.zenith_mean", "true zenith (rad), mean", "num", ""),
    ("truth.zenith_std", "true zenith (rad), std", "num", ""),
    ("truth.azimuth_mean", "true azimuth (rad), mean", "num", "mean true azimuth (rad)"),
    *((f"linefit.mean_angular_error.{v}", f"{_VARIANT_LABELS.get(v, v)}: mean angular error (rad)", "rad",
       f"{v} (neutrino_ray.icecube.linefit), mean angular error (competition metric)") for v in lf.VARIANTS),
    ("dynedge_mean_angular_error", "DynEdge: mean angular error (rad)", "rad", ""),
)


# ----------------------------------------------------------------------------------------------
# The merged profile → stats.json, summary.md, plots
def to_stats(profile: Profile, *, dataset: str | None = None, split: str | None = None,
             no_truth_reason: str | None = None, no_linefit_reason: str | None = None) -> dict[str, Any]:
    """The ``stats.json`` dictionary of a (merged) profile, with the real data's facts alongside."""
    p = profile
    if p.events == 0:
        raise ValueError("no events to profile")
    pulses = p.pulses
    assert pulses.weights is not None and p.charge.rep_min is not None and p.charge.rep_max is not None
    n_pulses = int((pulses.values * pulses.counts).sum())
    by_size: dict[str, dict[str, Any]] = {}
    for lo, hi in SIZE_BINS:
        sel = (pulses.values >= lo) & (pulses.values <= (hi if hi is not None else np.iinfo(np.int64).max))
        n_ev, n_pu = int(pulses.counts[sel].sum()), int((pulses.values[sel] * pulses.counts[sel]).sum())
        n_aux = int(pulses.weights[sel].sum())
        by_size[size_label(lo, hi)] = {"events": n_ev, "pulses": n_pu,
                                       "auxiliary_fraction": n_aux / n_pu if n_pu else None}
    small = pulses.values <= 150
    small_pulses = int((pulses.values[small] * pulses.counts[small]).sum())
    cq = list(QUANTILES.values())
    charge_pos = p.charge.positions(cq)
    homogeneous = bool(np.array_equal(p.charge.rep_min, p.charge.rep_max))
    charge: dict[str, Any] = {
        "min": p.charge_moments.min,
        **{k: float(p.charge.rep_min[i]) for k, i in zip(QUANTILES, charge_pos)},
        "max": p.charge_moments.max, "mean": p.charge_moments.mean, "std": p.charge_moments.std,
        "on_0025_grid": p.charge_off_grid == 0, "off_grid_pulses": p.charge_off_grid,
        "quantiles": "exact" if homogeneous else f"within {CHARGE_STEP} pe (smallest charge of the grid bin)",
    }
    if p.charge.clipped:
        charge["quantiles"] = f"within {CHARGE_STEP} pe below {CHARGE_MAX_INDEX * CHARGE_STEP:g} pe"
        charge["clipped_outliers"] = p.charge.clipped
    stats: dict[str, Any] = {
        "dataset": dataset, "split": split,
        "batch_files": len(p.batch_ids), "batch_ids": list(p.batch_ids),
        "events": p.events, "pulses": n_pulses,
        "pulses_per_event": pulses.summary(p99=True),
        "fraction_events_le_100_pulses": int(pulses.counts[pulses.values <= 100].sum()) / p.events,
        "fraction_events_gt_1000_pulses": int(pulses.counts[pulses.values > 1000].sum()) / p.events,
        "auxiliary": {
            "fraction": int(pulses.weights.sum()) / n_pulses,
            "fraction_events_le_150_pulses": int(pulses.weights[small].sum()) / small_pulses if small_pulses else None,
            "by_event_size": by_size,
        },
        "charge": charge,
        "time": p.time.summary(),
        "first_pulse_time": p.first_time.summary(),
        "span": p.span.summary(),
        "sensors_hit": int(np.count_nonzero(p.sensor_hits)), "sensors": len(p.sensor_hits),
    }
    if p.zenith.n:
        stats["truth"] = {"available": True, "events": p.zenith.n, "zenith_mean": p.zenith.mean,
                          "zenith_std": p.zenith.std, "azimuth_mean": p.azimuth.mean}
    else:
        stats["truth"] = {"available": False, "reason": no_truth_reason or "no truth given"}
    if p.linefit:
        stats["linefit"] = {
            "available": True, "events": next(iter(p.linefit.values()))[1],
            "mean_angular_error": {v: s / n for v, (s, n, _) in p.linefit.items()},
            "degenerate_events": {v: d for v, (_, _, d) in p.linefit.items()},
        }
    else:
        reason = no_linefit_reason or (f"no LineFit scores: {stats['truth']['reason']}" if not p.zenith.n
                                       else "LineFit not run")
        stats["linefit"] = {"available": False, "reason": reason}
    stats["definitions"] = {
        "quantiles": 'numpy.quantile(x, q, method="inverted_cdf") over the exact histogram of x',
        "std": "population standard deviation (ddof = 0)",
        "first_pulse_time": "each event's earliest pulse time",
        "span": "each event's latest minus earliest pulse time",
        "time_window_ns": list(TIME_WINDOW_NS), "span_window_ns": list(SPAN_WINDOW_NS),
        "clipped_outliers": "values outside the window, histogrammed at its edge (min and max stay exact)",
        "auxiliary_by_event_size": "auxiliary pulses / all pulses, pooled over the events of each size bin",
        "linefit": "mean over events of the angle between LineFit and the truth (the competition metric)",
    }
    stats["real_kaggle"] = REAL_KAGGLE
    return stats


def lookup(stats: dict[str, Any], path: str) -> Any:
    """The value at a dotted path of a stats dictionary, or None."""
    node: Any = stats
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _fmt(value: Any, kind: str, real: bool = False) -> str:
    if value is None:
        return "—"
    if isinstance(value, dict):
        return "; ".join(f"{_fmt(v, kind, real)} ({k})" for k, v in value.items())
    if kind == "bool" or isinstance(value, bool):
        return "yes" if value else "no"
    if kind == "pct":
        return f"{100 * value:.1f} %"
    if isinstance(value, int):
        return f"{value:,}"
    if real:  # as published
        return f"{value:,.6g}"
    if kind == "rad":
        return f"{value:.5f}"
    return f"{value:,.1f}" if abs(value) >= 1000 else f"{value:.4g}"


def side_by_side(stats: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(quantity, this dataset, real Kaggle data, definition) rows."""
    rows = []
    for path, quantity, kind, definition in ROWS:
        fact = REAL_KAGGLE.get(path)
        mine = lookup(stats, path)
        if mine is None and path.startswith(("truth.", "linefit.")):
            mine_s = "n/a (" + (lookup(stats, path.split(".")[0] + ".reason") or "not computed") + ")"
        else:
            mine_s = _fmt(mine, kind)
        rows.append((quantity, mine_s, _fmt(fact["value"], kind, real=True) if fact else "—",
                     fact["definition"] if fact else definition))
    return rows


def summary_markdown(stats: dict[str, Any]) -> str:
    """``summary.md``: the side-by-side Markdown table with a short header and the definitions."""
    head = [f"# Dataset profile: {stats.get('dataset')} — split {stats.get('split')}", "",
            f"{stats['events']:,} events, {stats['pulses']:,} pulses in {stats['batch_files']} batch files.", ""]
    table = ["| quantity | this dataset | real Kaggle data | definition |", "| --- | --- | --- | --- |"]
    table += [f"| {' | '.join(c.replace('|', '/') for c in row)} |" for row in side_by_side(stats)]
    fit = stats["linefit"]
    notes = ["", f"Quantiles: {stats['definitions']['quantiles']}; "
             f"charge quantiles are {stats['charge']['quantiles']}.",
             f"LineFit: scored on {fit['events']:,} events." if fit["available"] else f"LineFit: {fit['reason']}."]
    return "\n".join(head + table + notes) + "\n"


def plots(profile: Profile) -> dict[str, bytes]:
    """PNG histograms: pulses per event (log x), charge, first-pulse time, span, auxiliary fraction vs size."""
    plt = pyplot()
    out = {}
    h, c = profile.pulses, profile.charge
    assert h.weights is not None and c.rep_min is not None

    fig, ax = plt.subplots(figsize=(6, 4))
    edges = np.unique(np.round(np.logspace(0, np.log10(h.values.max() + 1), 60)))
    counts_with_errors(ax, edges, np.histogram(h.values, bins=edges, weights=h.counts)[0], "tab:blue",
                       f"{int(h.counts.sum()):,} events (±√N)", log_x=True)
    ax.axvline(h.quantiles([0.5])[0], color="k", ls="--", label=f"median {h.quantiles([0.5])[0]}")
    ax.set(xscale="log", yscale="log", xlabel="pulses per event", ylabel="events per bin (log-spaced bins)",
           title="Pulses per event")
    ax.legend()
    out["pulses_per_event.png"] = png(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    lo, hi = max(float(c.rep_min.min()), 1e-3), float(c.rep_min.max())
    edges = np.logspace(np.log10(lo), np.log10(hi) + 1e-9, 80)
    counts_with_errors(ax, edges, np.histogram(c.rep_min, bins=edges, weights=c.counts)[0], "tab:orange",
                       f"{int(c.counts.sum()):,} pulses (±√N)", log_x=True)
    ax.set(xscale="log", yscale="log", xlabel="charge (pe)", ylabel="pulses per bin (log-spaced bins)",
           title="Pulse charge")
    ax.legend()
    out["charge.png"] = png(fig)

    for name, hist, label in (("first_pulse_time.png", profile.first_time, "first-pulse time (ns)"),
                              ("span.png", profile.span, "event span: last − first pulse time (ns)")):
        fig, ax = plt.subplots(figsize=(6, 4))
        a, b = hist.quantiles([0.001, 0.999])
        t_edges = np.linspace(a, max(b, a + 1), 101)
        counts_with_errors(ax, t_edges, np.histogram(hist.values, bins=t_edges, weights=hist.counts)[0], "tab:green",
                           f"{int(hist.counts.sum()):,} events (±√N)")
        ax.set(xlabel=label, ylabel=f"events per {t_edges[1] - t_edges[0]:.0f} ns",
               title=label.split(" (")[0].split(":")[0].capitalize() + " (0.1–99.9 %)")
        ax.legend()
        out[name] = png(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    edges = np.unique(np.round(np.logspace(0, np.log10(h.values.max() + 1), 30)))
    idx = np.clip(np.searchsorted(edges, h.values, side="right") - 1, 0, len(edges) - 2)
    pulses = np.bincount(idx, h.values * h.counts, minlength=len(edges) - 1)
    aux = np.bincount(idx, h.weights, minlength=len(edges) - 1)
    ok = pulses > 0
    centers = np.sqrt(edges[1:] * np.maximum(edges[:-1], 1))
    frac = aux[ok] / pulses[ok]
    events = np.bincount(idx, h.counts, minlength=len(edges) - 1)[ok]
    # Binomial error on the fraction, counting events (not pulses) as the trials: the pulses of one event
    # share its light, so the event count is the honest sample size.
    ax.errorbar(centers[ok], frac, yerr=np.sqrt(frac * (1 - frac) / np.maximum(events, 1)), fmt="o-", ms=3,
                capsize=2, label="this dataset (binomial 1σ over events)")
    ax.axhline(2 / 3, color="k", ls=":", label="real Kaggle data, ≤ 150 pulses (≈ 2/3)")
    ax.set(xscale="log", ylim=(0, 1), xlabel="pulses per event", ylabel="auxiliary fraction of pulses",
           title="Auxiliary fraction vs event size")
    ax.grid(alpha=0.3)
    ax.legend()
    out["auxiliary_fraction.png"] = png(fig)
    return out


# ----------------------------------------------------------------------------------------------
# Ray edge: one task per batch file
def truth_uri(data: str, split: str) -> str:
    return storage.join(data, f"{split}_truth.parquet")


def batch_truth(data: str, split: str, meta: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """True (azimuth, zenith) of one batch's events in the meta's row order, checked.

    train: the meta's own columns (read with them). Otherwise ``{split}_truth.parquet``, read with an
    event_id range filter pushed down to the Parquet reader, then matched by event_id.
    """
    if split == "train":
        t = icdata.checked_truth(meta, icdata.meta_uri(data, split))
        return t.column("azimuth").to_numpy(), t.column("zenith").to_numpy()
    uri = truth_uri(data, split)
    ids = meta.column("event_id").to_numpy()
    cols = ["event_id", "azimuth", "zenith"]
    try:
        with storage.open_input(uri) as f:
            names = pq.read_schema(f).names
            if missing := [c for c in cols if c not in names]:
                raise icdata.DataError(f"{uri}: missing columns {missing} (has {names})")
            f.seek(0)
            truth = pq.read_table(f, columns=cols, filters=[("event_id", ">=", int(ids.min())),
                                                             ("event_id", "<=", int(ids.max()))])
    except FileNotFoundError as e:
        raise icdata.DataError(f"{uri}: no truth for split {split!r} (the real Kaggle test set has none)") from e
    except (pa.ArrowInvalid, OSError) as e:
        raise icdata.DataError(f"{uri}: not a readable Parquet file: {e}") from e
    tid = truth.column("event_id").to_numpy()
    order = np.argsort(tid, kind="stable")
    sorted_ids = tid[order]
    dup = np.flatnonzero(sorted_ids[1:] == sorted_ids[:-1])
    if len(dup):
        raise icdata.DataError(f"{uri}: duplicate event_id {int(sorted_ids[dup[0]])}")
    pos = np.clip(np.searchsorted(sorted_ids, ids), 0, max(len(sorted_ids) - 1, 0))
    found = (sorted_ids[pos] == ids) if len(sorted_ids) else np.zeros(len(ids), bool)
    if not found.all():
        raise icdata.DataError(f"{uri}: no truth row for event_id {int(ids[~found][0])} "
                               f"({int((~found).sum())} events of batch {int(meta.column('batch_id')[0].as_py())} "
                               f"have none)")
    t = icdata.checked_truth(truth.take(pa.array(order[pos])), uri)
    return t.column("azimuth").to_numpy(), t.column("zenith").to_numpy()


def profile_batch(data: str, split: str, batch: icdata.BatchSummary, geometry: np.ndarray,
                  events_per_task: int = STATS_EVENTS_PER_TASK, truth: bool = True,
                  variants: Sequence[str] = lf.VARIANTS) -> Profile:
    """The profile of one batch file: its own meta (and truth) rows only, pulses read slice by slice."""
    run = uuid.uuid4().hex
    slices = icdata.plan_batch(data, split, run, batch, events_per_task)
    try:
        meta = icdata.batch_meta(run, data, split, batch.batch_id, truth=truth and split == "train")
        az, zen = batch_truth(data, split, meta) if truth else (None, None)
    except icdata.DataError:
        for s in slices:  # a meta that disagrees with its pulse file is the error to report first
            icdata.read_slice(s, len(geometry))
        raise
    parts, row = [], 0
    for s in slices:
        k = s.hi - s.lo
        events = icdata.read_slice(s, len(geometry))
        parts.append(profile_events(events, geometry, None if az is None else az[row:row + k],
                                    None if zen is None else zen[row:row + k], variants))
        row += k
    return replace(merge_all(parts), batch_ids=(int(batch.batch_id),))


@ray.remote
def _profile_batch_task(data: str, split: str, batch: icdata.BatchSummary, geometry: np.ndarray,
                        events_per_task: int, truth: bool, variants: tuple[str, ...]) -> Profile:
    return profile_batch(data, split, batch, geometry, events_per_task, truth, variants)


@dataclass
class SplitProfile:
    profile: Profile
    no_truth_reason: str | None
    no_linefit_reason: str | None
    seconds: float


def profile_split(data: str, split: str, events_per_task: int = STATS_EVENTS_PER_TASK,
                  linefit: bool = True) -> SplitProfile:
    """Profile a split with one Ray task per batch file; partial profiles merged on the driver as they arrive."""
    start = time.perf_counter()
    summary = icdata.meta_batch_summary(data, split)  # validates the split's rows; streams the meta
    if not summary:
        raise icdata.DataError(f"{icdata.meta_uri(data, split)}: no events in split {split!r}")
    unused = icdata.check_batch_files(data, split, summary)
    if unused:
        log.warning("%s: %d batch files have no meta rows (e.g. batch %d); they are not profiled",
                    storage.join(data, split), len(unused), unused[0])
    icdata.check_ids_across_batches(data, split, summary)
    geometry = icdata.load_geometry(data)
    truth, no_truth = True, None
    if split != "train" and not storage.exists(truth_uri(data, split)):
        truth = False
        no_truth = f"no truth for split {split!r} (the real Kaggle test set has none)"
    variants = tuple(lf.VARIANTS) if linefit else ()
    runtime.init_ray()
    geo = ray.put(geometry)
    pending = [_profile_batch_task.remote(data, split, b, geo, events_per_task, truth, variants)
               for b in summary.values()]
    counts = dict(zip(pending, (s.n_events for s in summary.values()), strict=True))
    merged: Profile | None = None
    with progress.Progress("stats", sum(counts.values()), tick=True) as line:
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                part = ray.get(done[0])
                merged = part if merged is None else merge(merged, part)
                line.update(counts[done[0]])
        except BaseException:
            for ref in pending:  # the first bad batch stops the job
                ray.cancel(ref)
            raise
    assert merged is not None
    if merged.events != sum(s.n_events for s in summary.values()):
        raise RuntimeError(f"{data} split {split!r}: profiled {merged.events} events, the meta has "
                           f"{sum(s.n_events for s in summary.values())}; nothing was published")
    return SplitProfile(merged, no_truth, None if linefit or not truth else "LineFit skipped (--no-linefit)",
                        time.perf_counter() - start)


def stats(data: str, split: str, out: str, events_per_task: int = STATS_EVENTS_PER_TASK, linefit: bool = True,
          command: list[str] | None = None) -> dict[str, Any]:
    """Profile a split and publish ``stats.json``, ``summary.md`` and PNG histograms to ``out`` atomically."""
    started = time.time()
    res = profile_split(data, split, events_per_task, linefit)  # inputs fail before outputs are touched
    doc = to_stats(res.profile, dataset=data, split=split, no_truth_reason=res.no_truth_reason,
                   no_linefit_reason=res.no_linefit_reason)
    with storage.Output(out, command=command, inputs=[data], started=started) as output:
        output.write(STATS, json.dumps(doc, indent=2).encode())
        output.write(SUMMARY, summary_markdown(doc).encode())
        for name, image in plots(res.profile).items():
            output.write(name, image)
        output.commit(kind="icecube-stats", split=split, rows={STATS: doc["events"]}, events=doc["events"],
                      batch_files=doc["batch_files"], profile_seconds=round(res.seconds, 3))
    log.info("profiled %d events in %d batch files of %s split %r in %.1f s; wrote %s", doc["events"],
             doc["batch_files"], data, split, res.seconds, storage.join(out, STATS))
    return doc
