"""Information bound: the maximum-likelihood direction of each simulated event under the simulator's own model.

This is NOT a production reconstruction. It is seeded with the event's true vertex (cascades: the true centre
of their light, see :class:`EventTruth`), vertex time, energy, interaction and topology (which no real
reconstruction knows) and left free only in direction, and its
likelihood is the generative model of :mod:`neutrino_ray.icecube.simulate` itself: it imports the
simulator's expectation functions (:func:`~neutrino_ray.icecube.simulate.events_along`,
:func:`~neutrino_ray.icecube.simulate.expected_light`, :func:`~neutrino_ray.icecube.simulate.expected_pulses`,
:func:`~neutrino_ray.icecube.simulate.arrival_pdf`, :func:`~neutrino_ray.icecube.simulate.afterpulse_pdf`)
rather than re-deriving them. Its angular error says how much directional information the simulated
pulses hold; a learned model that only sees the pulses cannot, on average, do better.

Likelihood of one event for a trial direction u (per DOM d; all 5,160 DOMs enter, hit and unhit):

  ln L(u) = sum_d [ k_d ln lambda_d(u) - lambda_d(u) ]                        (amplitude)
          + sum_d [ sum_{pulses i at d} ln rho_d(t_i; u) - n_d ln Lambda_d(u) ]  (times, given the count)

* k_d = (summed charge at d) / SPE_MEAN, the observed photo-electrons; lambda_d = sum_s S_s mu_s
  + AFTERPULSE_PROB mu_d + nu, mu_s the expected photo-electrons of each of the event's light sources (muon
  track, cascade) at d, mu_d their sum, S_s their mean PMT saturation ratio
  (:func:`~neutrino_ray.icecube.simulate.mean_saturation`, the function the simulator scales its pulses by, here at
  the expected rather than the drawn photo-electrons), nu the noise pulses expected in the event's readout span.
* rho_d(t) = sum_sources [ m_s f_s(t - t_direct,s) + a_s g(t - t_direct,s) ] + noise rate, with m_s the expected
  signal pulses (the simulator's waveform-splitting and discriminator rules), f_s the Pandel arrival-time
  density smeared by the PMT jitter and 1 ns rounding, a_s the expected afterpulses and g their delay
  density; Lambda_d = its integral (expected pulses at d).
* A DOM out of every source's reach (the simulator's own pruning at 0.01 pe) has mu = 0 and contributes
  the noise-only value, the same for every u: only DOMs within reach of u or hit enter the sums, which
  equals summing over all 5,160 DOMs up to a constant.

Effects included: depth-dependent ice (attenuation, scattering, absorption along each path), the
Cherenkov geometry of tracks and cascades, the track's existence interval (starting, stopping,
through-going), the cascade's angular memory, DeepCore's quantum efficiency, Pandel delays, PMT jitter,
time rounding, waveform splitting into pulses, the discriminator, PMT saturation (the anode-current law at the
expected photo-electrons), afterpulses, DOM noise.
Effects left out (each makes the bound pessimistic, i.e. the simulation looks harder than it is): charge
fluctuations beyond Poisson and the exact SPE charge template (a Poisson in k_d stands in for them),
charge quantisation, the HLC flag and the SMT8 trigger condition (selection), the readout window's
truncation of late light, and the muon's kinematic angle to the neutrino (one direction is fitted for
every source; the truth compared against is the neutrino's).

Search: a Fibonacci sphere of directions (equal-area, HEALPix-like spacing of ~sqrt(4 pi / N)), then a pattern
search from the REFINE_STARTS best of them (six neighbours on a ring, step halved when none is better) down to
STEP_MIN, or until ln L varies by less than FLAT_LNL over the ring (below FLAT_STEP: further steps could gain no
more than about that); all trial directions of a step are evaluated in one vectorised call.
* Tracks: GRID_POINTS directions plus those from the vertex to the SEED_DOMS brightest hit DOMs (a muon from a
  vertex kilometres outside the detector lights it only for directions within a narrow cone). Their likelihood
  is a narrow ridge along which the search creeps, and the two starts (often neighbouring seeds) end at
  different points of it: both are searched to the end.
* Cascades: CASCADE_GRID_POINTS directions and no seeds (their light reaches the DOMs around the vertex for
  every direction, so the brightest DOMs say little about it); their likelihood is broad and single-peaked at
  the grid's scale, and a start that comes within a step of a better one is dropped (the two would climb the
  same peak).
Costs and the check that the search finds the maximum as well as a finer one: docs/icecube.md ("Information
bound", speed).

Calibration check: where the model is right and the search finds the maximum, -2 Delta ln L between the
fitted and the true direction follows chi-square with 2 degrees of freedom (68 % below 2.28, 90 % below
4.61); the report gives the fractions.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import pyarrow as pa
import ray

from neutrino_ray import progress, runtime, storage
from neutrino_ray.errors import InputError
from neutrino_ray.icecube import data as icdata
from neutrino_ray.icecube import pipeline, predict
from neutrino_ray.icecube import simulate as sim
from neutrino_ray.icecube.features import flat_pulses
from neutrino_ray.icecube.geometry import N_SENSORS
from neutrino_ray.icecube.linefit import direction_to_angles
from neutrino_ray.icecube.metrics import angular_distance

log = logging.getLogger("neutrino_ray")

MODEL = "bound"
REPORT = "bound_report.json"
TRUTH_COLUMNS = ("event_id", "azimuth", "zenith", "energy", "topology", "interaction", "vertex_x", "vertex_y",
                 "vertex_z", "vertex_time", "cascade_energy")
GRID_POINTS = 96  # tracks' coarse grid: mean spacing ~20.7 deg
CASCADE_GRID_POINTS = 48  # cascades' coarse grid: ~29 deg (their likelihood is broad and single-peaked at that scale)
REFINE_STARTS = 2  # local refinements from the best grid points
SEED_DOMS = 48  # tracks' grid extended by the directions from the vertex to the brightest hit DOMs
STEP0 = np.deg2rad(6.0)  # first refinement step
STEP_MIN = np.deg2rad(0.005)  # refinement stops below this step ...
FLAT_LNL, FLAT_STEP = 0.01, np.deg2rad(1.0)  # ... or, below FLAT_STEP, once ln L varies by < FLAT_LNL over the ring
MAX_ITERATIONS = 200
CHI2_2DOF_68, CHI2_2DOF_90 = 2.2788, 4.6052  # chi-square quantiles, 2 degrees of freedom
DEFAULT_EVENTS_PER_TASK = 200
PAIR_BUDGET = 1_000_000  # (trial direction, pulse) pairs evaluated at once
PULSE_BINS = ((0, 200, "<200"), (200, 1000, "200-999"), (1000, 1 << 62, ">=1000"))


def fibonacci_sphere(n: int) -> np.ndarray:
    """(n, 3) unit vectors spread evenly over the sphere (equal area per point)."""
    k = np.arange(n) + 0.5
    z = 1.0 - 2.0 * k / n
    phi = np.pi * (1.0 + 5**0.5) * k
    r = np.sqrt(1.0 - z * z)
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


@dataclass(frozen=True)
class EventTruth:
    """What the bound is seeded with: everything but the direction.

    A cascade's light comes from the shower's centre of light, ``simulate.shower_depth`` ahead of the interaction
    vertex along the direction. The pulses show where that centre is, never where the vertex is apart from it; a
    vertex held fixed while the direction turns would move the light and tell the fit the direction through the
    seed. So a cascade event is seeded with its true centre of light (``light_shift`` = depth x true direction past
    the vertex) and each trial direction u puts the vertex a depth behind it; its time follows (the centre is reached
    depth / c after the vertex for every u). Track events are seeded with the vertex itself (the muon's start)."""

    vertex: np.ndarray  # (3,)
    vertex_time: float
    energy: float
    interaction: int  # index into simulate.INTERACTIONS
    is_track: bool
    cascade_energy: float
    light_shift: np.ndarray | None = None  # (3,) true centre of light minus vertex; None: seed the vertex

    def trial_vertices(self, u: np.ndarray) -> np.ndarray:
        """(m, 3) vertices that keep the seeded centre of light for trial directions u (m, 3)."""
        if self.light_shift is None:
            return np.broadcast_to(self.vertex, u.shape).copy()
        depth = float(np.linalg.norm(self.light_shift))
        return self.vertex + self.light_shift - depth * u


class Likelihood:
    """ln L(u) of one event (relative to the noise-only hypothesis, a constant) for trial directions of travel."""

    def __init__(self, truth: EventTruth, sensor: np.ndarray, time: np.ndarray, charge: np.ndarray):
        self.truth = truth
        doms, inverse = np.unique(sensor.astype(np.int64), return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        self.time = time.astype(np.float64)[order]  # pulses grouped by DOM
        self.n_at = np.bincount(inverse, minlength=len(doms))
        self.first = np.r_[0, np.cumsum(self.n_at)[:-1]]
        self.k = np.bincount(inverse, weights=charge, minlength=len(doms)) / sim.SPE_MEAN
        self.dom_index = np.full(N_SENSORS, -1, dtype=np.int64)
        self.dom_index[doms] = np.arange(len(doms))
        span = float(time.max() - time.min()) + 1.0 if len(time) else 1.0
        self.nu = sim.NOISE_PULSE_RATE * span  # noise pulses (and ~pe) expected per DOM over the readout
        self.doms = doms

    def seeds(self, n: int = SEED_DOMS) -> np.ndarray:
        """Directions from the vertex to the ``n`` brightest hit DOMs farther than 20 m: a muon from a vertex
        far outside the detector lights only DOMs on lines through a narrow cone, which a coarse grid misses."""
        w = sim._detector().xyz[self.doms] - self.truth.vertex
        dist = np.linalg.norm(w, axis=1)
        far = np.flatnonzero(dist > 20.0)
        pick = far[np.argsort(-self.k[far], kind="stable")[:n]]
        return w[pick] / dist[pick, None]

    def __call__(self, u: np.ndarray, chunk: int | None = None) -> np.ndarray:
        # bounded memory: at most ~PAIR_BUDGET (direction, pulse) pairs at once, whatever the event's size
        chunk = chunk or max(1, min(128, PAIR_BUDGET // max(len(self.time), 1)))
        return np.concatenate([self._eval(u[i:i + chunk]) for i in range(0, len(u), chunk)])

    def _eval(self, u: np.ndarray) -> np.ndarray:
        m, tr = len(u), self.truth
        ev = sim.events_along(tr.trial_vertices(u), np.full(m, tr.vertex_time),
                              np.full(m, tr.energy), np.full(m, tr.interaction), np.full(m, tr.is_track),
                              np.full(m, tr.cascade_energy), u)
        light = sim.expected_light(ev)
        mu_r = light.expected_pe
        ap_r = sim.AFTERPULSE_PROB * (1.0 - sim.SPE_LOSS) * mu_r
        key = light.event.astype(np.int64) * N_SENSORS + light.sensor
        ukey, grp = _unique_inverse(key, m * N_SENSORS)
        sat_r = sim.mean_saturation(light.event, light.sensor, light.t_direct, light.pandel_shape,
                                    light.pandel_scale, mu_r, dom=grp)
        mu = np.bincount(grp, weights=mu_r, minlength=len(ukey))
        mu_seen = np.bincount(grp, weights=mu_r * sat_r, minlength=len(ukey))
        sig_r = sim.expected_pulses(mu_r, light.pandel_shape, light.pandel_scale, seen=mu_r * sat_r)
        pulses = np.bincount(grp, weights=sig_r + ap_r, minlength=len(ukey))
        trial, dom = ukey // N_SENSORS, ukey % N_SENSORS
        di = self.dom_index[dom]
        hit = di >= 0
        k = np.where(hit, self.k[np.maximum(di, 0)], 0.0)
        n = np.where(hit, self.n_at[np.maximum(di, 0)], 0)
        lam = mu_seen + sim.AFTERPULSE_PROB * mu + self.nu
        term = k * np.log(lam / self.nu) - (lam - self.nu) - n * np.log1p(pulses / self.nu)
        lnl = np.bincount(trial, weights=term, minlength=m)
        # Times: every (source row, pulse at its DOM) pair.
        rows = np.flatnonzero(hit[grp])
        if len(rows):
            d_row = di[grp[rows]]
            cnt = self.n_at[d_row]
            r = np.repeat(rows, cnt)
            p = np.repeat(self.first[d_row] - np.r_[0, np.cumsum(cnt)[:-1]], cnt) + np.arange(int(cnt.sum()))
            dt = self.time[p] - light.t_direct[r]
            dens = (sig_r[r] * sim.arrival_pdf(dt, light.pandel_shape[r], light.pandel_scale[r])
                    + ap_r[r] * sim.afterpulse_pdf(dt))
            tp = light.event[r].astype(np.int64) * len(self.time) + p
            per = np.bincount(tp, weights=dens, minlength=m * len(self.time))
            utp = np.flatnonzero(np.bincount(tp, minlength=m * len(self.time)))
            lnl += np.bincount(utp // len(self.time), weights=np.log1p(per[utp] / sim.NOISE_PULSE_RATE), minlength=m)
        return lnl


def _unique_inverse(key: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(key, return_inverse=True)`` for non-negative integer keys below ``size``, by a dense table
    instead of a sort (the same arrays)."""
    present = np.zeros(size, bool)
    present[key] = True
    ukey = np.flatnonzero(present)
    index = np.zeros(size, np.int64)
    index[ukey] = np.arange(len(ukey))
    return ukey, index[key]


def _ring(centre: np.ndarray, step: np.ndarray, offset: float) -> np.ndarray:
    """(len(centre) * 6, 3): six directions at angle ``step`` around each centre."""
    helper = np.where(np.abs(centre[:, 2:3]) < 0.9, [[0.0, 0.0, 1.0]], [[1.0, 0.0, 0.0]])
    e1 = np.cross(centre, helper)
    e1 /= np.linalg.norm(e1, axis=1, keepdims=True)
    e2 = np.cross(centre, e1)
    phi = offset + np.arange(6) * np.pi / 3
    s, c = np.sin(step)[:, None, None], np.cos(step)[:, None, None]
    out = c * centre[:, None, :] + s * (np.cos(phi)[None, :, None] * e1[:, None, :]
                                        + np.sin(phi)[None, :, None] * e2[:, None, :])
    out = out.reshape(-1, 3)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def fit_direction(like: Likelihood, grid: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """(best direction of travel, its ln L): coarse grid, then pattern searches from the best grid points (see the
    module docstring: tracks and cascades are searched differently)."""
    track = bool(like.truth.is_track)
    if grid is None:
        grid = fibonacci_sphere(GRID_POINTS if track else CASCADE_GRID_POINTS)
    if track:
        grid = np.concatenate([grid, like.seeds()])
    lg = like(grid)
    best = np.argsort(-lg)[:REFINE_STARTS]
    cur, cur_l = grid[best], lg[best]
    step = np.full(len(cur), STEP0)
    for it in range(MAX_ITERATIONS):
        if not track:
            _merge(cur, cur_l, step)
        active = np.flatnonzero(step >= STEP_MIN)
        if not len(active):
            break
        trial = _ring(cur[active], step[active], offset=(it % 2) * np.pi / 6)
        lt = like(trial).reshape(len(active), 6)
        j = np.argmax(lt, axis=1)
        better = lt[np.arange(len(active)), j] > cur_l[active]
        moved = active[better]
        cur[moved] = trial.reshape(len(active), 6, 3)[np.flatnonzero(better), j[better]]
        cur_l[moved] = lt[np.flatnonzero(better), j[better]]
        step[active[~better]] *= 0.5
        # converged: no better neighbour and ln L flat to FLAT_LNL over the ring
        flat = ~better & (lt.min(axis=1) > cur_l[active] - FLAT_LNL) & (step[active] < FLAT_STEP)
        step[active[flat]] = 0.0
    i = int(np.argmax(cur_l))
    return cur[i], float(cur_l[i])


def _merge(cur: np.ndarray, cur_l: np.ndarray, step: np.ndarray) -> None:
    """Stop (step 0) every search start that lies within its or a better start's step of a better start."""
    for a in range(len(cur)):
        for b in range(len(cur)):
            if (a != b and step[a] > 0 and step[b] > 0 and cur_l[a] >= cur_l[b]
                    and np.arccos(np.clip(cur[a] @ cur[b], -1.0, 1.0)) < max(step[a], step[b])):
                step[b] = 0.0


def truth_of(row: dict[str, Any]) -> EventTruth:
    """An event's seed from its truth row (cascades: their true centre of light, see EventTruth)."""
    inter = list(sim.INTERACTIONS).index(row["interaction"])
    is_track = row["topology"] == "track"
    shift = None
    if not is_track:
        u = sim.direction_of_travel(np.array([row["azimuth"]]), np.array([row["zenith"]]))[0]
        shift = float(sim.shower_depth(np.array([float(row["cascade_energy"])]))[0]) * u
    return EventTruth(np.array([row["vertex_x"], row["vertex_y"], row["vertex_z"]], np.float64),
                      float(row["vertex_time"]), float(row["energy"]), inter, is_track,
                      float(row["cascade_energy"]), shift)


def bound_events(events: pa.Table, truth: pa.Table) -> pa.Table:
    """Events with pulse list columns and their truth rows (same order) → the bound's fitted directions,
    ln L at the fit and at the true direction, and the angular error."""
    offsets, sensor, t, charge, _ = flat_pulses(events)
    rows = truth.to_pylist()
    n = len(rows)
    az, zen, l_fit, l_true = np.empty(n), np.empty(n), np.empty(n), np.empty(n)
    for i, row in enumerate(rows):
        lo, hi = offsets[i], offsets[i + 1]
        like = Likelihood(truth_of(row), sensor[lo:hi], t[lo:hi], charge[lo:hi])
        u, l_fit[i] = fit_direction(like)
        a, z = direction_to_angles(-u[None, :])
        az[i], zen[i] = float(a[0]), float(z[0])
        u_true = sim.direction_of_travel(np.array([row["azimuth"]]), np.array([row["zenith"]]))
        l_true[i] = float(like(u_true)[0])
    true_az = truth.column("azimuth").to_numpy()
    true_zen = truth.column("zenith").to_numpy()
    err = angular_distance(true_az, true_zen, az, zen)
    return pa.table({"event_id": events.column("event_id"), "azimuth": az, "zenith": zen,
                     "ok": np.ones(n, bool), "n_pulses": np.diff(offsets), "lnl_fit": l_fit, "lnl_true": l_true,
                     "error": err, "energy": truth.column("energy"), "topology": truth.column("topology")})


_TRUTH_CACHE: dict[str, pa.Table] = {}


def _split_truth(data: str, split: str) -> pa.Table:
    key = f"{data}|{split}"
    if key not in _TRUTH_CACHE:
        _TRUTH_CACHE.clear()
        t = storage.read_parquet(storage.join(data, f"{split}_truth.parquet"), columns=list(TRUTH_COLUMNS))
        _TRUTH_CACHE[key] = t.sort_by("event_id")
    return _TRUTH_CACHE[key]


def bound_block(batch: pa.Table, data: str, split: str, n_sensors: int) -> pa.Table:
    """Ray Data UDF: slice rows → their events' bound fits."""
    out = []
    truth = _split_truth(data, split)
    ids_all = truth.column("event_id").to_numpy()
    for s in pipeline.iter_slices(batch):
        events = icdata.read_slice(s, n_sensors)
        ids = events.column("event_id").to_numpy()
        pos = np.searchsorted(ids_all, ids)
        found = (pos < len(ids_all)) & (ids_all[np.minimum(pos, len(ids_all) - 1)] == ids)
        if not found.all():
            raise icdata.DataError(f"{data}: event_id {int(ids[~found][0])} of split {split!r} has no truth row")
        fits = bound_events(events, truth.take(pa.array(pos)))
        out.append(fits.append_column("batch_id", pa.array(np.full(len(fits), s.batch_id, np.int64))))
    return pa.concat_tables(out)


def check_truth(data: str, split: str) -> None:
    """Refuse, in one line, data whose split lacks the simulation's full truth."""
    uri = storage.join(data, f"{split}_truth.parquet")
    if not storage.exists(uri):
        raise InputError(f"{uri}: no truth file; the bound needs the simulator's full truth (vertex, energy, "
                         "topology, interaction), which only simulated test splits carry")
    names = storage.read_parquet_metadata(uri).schema.to_arrow_schema().names
    missing = [c for c in TRUTH_COLUMNS if c not in names]
    if missing:
        raise InputError(f"{uri}: truth lacks {', '.join(missing)}; the bound needs the simulator's full truth")


def summarise(result: pa.Table) -> dict[str, Any]:
    """The bound's figures: mean and median error per pulse-count bin and per topology above 10 TeV, and the
    chi-square calibration check."""
    err = result.column("error").to_numpy()
    n_p = result.column("n_pulses").to_numpy()
    energy = result.column("energy").to_numpy()
    topo = np.asarray(result.column("topology").to_pylist())
    two_dl = 2.0 * (result.column("lnl_fit").to_numpy() - result.column("lnl_true").to_numpy())

    def stats(sel: np.ndarray) -> dict[str, Any]:
        e = err[sel]
        return {"events": int(sel.sum()), "share": round(float(sel.mean()), 4) if len(sel) else None,
                "mean_rad": round(float(e.mean()), 4) if len(e) else None,
                "median_rad": round(float(np.median(e)), 5) if len(e) else None,
                "median_deg": round(float(np.degrees(np.median(e))), 3) if len(e) else None}

    rep: dict[str, Any] = {"all": stats(np.ones(len(err), bool))}
    rep["pulse_bins"] = {label: stats((n_p >= lo) & (n_p < hi)) for lo, hi, label in PULSE_BINS}
    rep["above_10TeV"] = {t: stats((energy > 1e4) & (topo == t)) for t in ("track", "cascade")}
    def chi2(sel: np.ndarray) -> dict[str, Any]:
        x = two_dl[sel]
        return {"events": len(x),
                "fraction_below_68": round(float(np.mean(x <= CHI2_2DOF_68)), 4) if len(x) else None,
                "fraction_below_90": round(float(np.mean(x <= CHI2_2DOF_90)), 4) if len(x) else None,
                "fraction_search_short": round(float(np.mean(x < -1e-6)), 4) if len(x) else None}

    rep["chi2_check"] = {
        **chi2(np.ones(len(two_dl), bool)), **{t: chi2(topo == t) for t in ("track", "cascade")},
        "definition": "-2 Delta lnL = 2 (lnL(fit) - lnL(true neutrino direction)); chi-square(2 dof) expects "
                      "0.68 below 2.279 and 0.90 below 4.605; 'search_short': the truth scores higher than the "
                      "fit (the search missed the maximum). Tracks: the muon leaves the neutrino's direction by "
                      "the kinematic angle, so their truth is not the model's direction (fractions fall short); "
                      "cascades are the clean check"}
    return rep


def _so_far(rep: dict[str, Any]) -> str:
    """The figures of a partial report in one line (the progress line's tail: a long run can be quoted on the
    events fitted so far)."""
    def mean(r: dict[str, Any]) -> str:
        return "-" if r["mean_rad"] is None else f"{r['mean_rad']:.3f}"

    def median(r: dict[str, Any]) -> str:
        return "-" if r["median_deg"] is None else f"{r['median_deg']:.3f}"

    bins = " / ".join(mean(rep["pulse_bins"][label]) for _, _, label in PULSE_BINS)
    hi = rep["above_10TeV"]
    c = rep["chi2_check"]["cascade"]
    return (f" [so far: mean {mean(rep['all'])} rad; pulse bins {bins} rad; >10 TeV medians tracks "
            f"{median(hi['track'])} deg ({hi['track']['events']}), cascades {median(hi['cascade'])} deg "
            f"({hi['cascade']['events']}); cascades' chi2 68/90 % {c['fraction_below_68']}/{c['fraction_below_90']}]")


def bound(data: str, split: str, out: str, events_per_task: int = DEFAULT_EVENTS_PER_TASK,
          events: int | None = None, command: list[str] | None = None) -> dict[str, Any]:
    """Fit every event of a simulated split (or its last ``events`` in file order) and publish, atomically,
    ``submission.csv``, ``predictions.parquet`` (model ``bound``, null kappa) and ``bound_report.json``."""
    started = time.time()
    start = time.perf_counter()
    check_truth(data, split)
    split_plan = pipeline.plan_split(data, split, events_per_task, events)
    geometry = icdata.load_geometry(data)
    ds = ray.data.from_arrow(split_plan.tables()).map_batches(
        partial(bound_block, data=data, split=split, n_sensors=len(geometry)),
        batch_format="pyarrow", batch_size=1, zero_copy_batch=True)
    blocks: list[pa.Table] = []
    with progress.Progress("bound", split_plan.events, tick=True) as line:
        for block in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            blocks.append(block)
            line.extra = _so_far(summarise(pa.concat_tables(blocks)))
            line.update(len(block))
    if not blocks:
        raise icdata.DataError(f"{data}: split {split!r} produced no fits")
    result = pa.concat_tables(blocks).sort_by("event_id")
    predict.check_complete(result, split_plan.events, data, split)
    seconds = time.perf_counter() - start
    report = summarise(result)
    report.update(events=len(result), seconds=round(seconds, 1), cpus=runtime.cpu_count(),
                  events_per_second=round(len(result) / seconds, 2))
    with storage.Output(out, command=command, inputs=[data], started=started) as output:
        output.write(predict.SUBMISSION, storage.csv_bytes(result.select(["event_id", "azimuth", "zenith"])))
        output.write(predict.PREDICTIONS, storage.parquet_bytes(predict.predictions_table(result, MODEL)))
        output.write(REPORT, json.dumps(report, indent=2).encode())
        manifest = output.commit(kind="icecube-bound", split=split, events=len(result),
                                 rows={predict.SUBMISSION: len(result), predict.PREDICTIONS: len(result)},
                                 inference_seconds=round(seconds, 3), report=report)
    log.info("bound: %d events in %.1f s (%.2f events/s); mean error %.3f rad; wrote %s", len(result), seconds,
             len(result) / seconds, report["all"]["mean_rad"], out)
    return manifest
