"""Tests of the information bound (``neutrino-ray icecube bound``): its likelihood against a slow per-DOM
reference, direction recovery on a noiseless scattering-free track, refusal without truth, the published
outputs, and the bound's medians on events above 10 TeV (the issue-26 targets)."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from neutrino_ray.errors import InputError
from neutrino_ray.icecube import bound as bd
from neutrino_ray.icecube import simulate as sim
from neutrino_ray.icecube.geometry import N_SENSORS


def _events(batch: sim.SimulatedBatch) -> list[tuple[dict, np.ndarray, np.ndarray, np.ndarray]]:
    p = batch.pulses
    ids = p.column("event_id").to_numpy()
    off = np.r_[0, np.flatnonzero(np.diff(ids)) + 1, len(ids)]
    s, t, q = (p.column(c).to_numpy() for c in ("sensor_id", "time", "charge"))
    return [(row, s[off[i]:off[i + 1]], t[off[i]:off[i + 1]], q[off[i]:off[i + 1]])
            for i, row in enumerate(batch.truth.to_pylist())]


def _slow_lnl(truth: bd.EventTruth, sensor: np.ndarray, time: np.ndarray, charge: np.ndarray,
              u: np.ndarray) -> float:
    """The same likelihood, DOM by DOM and pulse by pulse over all 5,160 DOMs, minus the noise-only value."""
    ev = sim.events_along(truth.trial_vertices(u[None, :]), np.array([truth.vertex_time]), np.array([truth.energy]),
                          np.array([truth.interaction]), np.array([truth.is_track]),
                          np.array([truth.cascade_energy]), u[None, :])
    light = sim.expected_light(ev)
    nu = sim.NOISE_PULSE_RATE * (float(time.max() - time.min()) + 1.0)
    total = 0.0
    for d in range(N_SENSORS):
        rows = np.flatnonzero(light.sensor == d)
        at = np.flatnonzero(sensor == d)
        if not len(rows) and not len(at):
            continue  # neither lit nor hit: the noise-only value exactly
        mu_r = light.expected_pe[rows]
        sat = sim.mean_saturation(np.zeros(len(rows), np.int64), light.sensor[rows], light.t_direct[rows],
                                  light.pandel_shape[rows], light.pandel_scale[rows], mu_r)
        sig_r = sim.expected_pulses(mu_r, light.pandel_shape[rows], light.pandel_scale[rows], seen=mu_r * sat)
        ap_r = sim.AFTERPULSE_PROB * (1.0 - sim.SPE_LOSS) * mu_r
        k = float(charge[at].sum()) / sim.SPE_MEAN
        lam = float((mu_r * sat).sum()) + sim.AFTERPULSE_PROB * float(mu_r.sum()) + nu
        full, noise_only = k * math.log(lam) - lam, k * math.log(nu) - nu
        expected = nu + float(sig_r.sum() + ap_r.sum())
        for i in at:
            rho = sim.NOISE_PULSE_RATE
            for j, r in enumerate(rows):
                dt = np.array([float(time[i]) - light.t_direct[r]])
                rho += float(sig_r[j] * sim.arrival_pdf(dt, light.pandel_shape[r:r + 1], light.pandel_scale[r:r + 1])[0]
                             + ap_r[j] * sim.afterpulse_pdf(dt)[0])
            full += math.log(rho / expected)
            noise_only += math.log(sim.NOISE_PULSE_RATE / nu)
        total += full - noise_only
    return total


def test_likelihood_equals_slow_per_dom_reference():
    batch = sim.simulate_batch(seed=31, n_events=12, first_event_id=0)
    rng = np.random.default_rng(0)
    checked = 0
    for row, s, t, q in _events(batch):
        if len(s) > 60:
            continue
        truth = bd.truth_of(row)
        like = bd.Likelihood(truth, s, t, q)
        u_true = sim.direction_of_travel(np.array([row["azimuth"]]), np.array([row["zenith"]]))
        trial = np.concatenate([u_true, bd.fibonacci_sphere(3), rng.normal(size=(1, 3))])
        trial /= np.linalg.norm(trial, axis=1, keepdims=True)
        fast = like(trial)
        slow = [_slow_lnl(truth, s, t, q, u) for u in trial]
        np.testing.assert_allclose(fast, slow, rtol=1e-9, atol=1e-7)
        checked += 1
        if checked == 3:
            break
    assert checked == 3


def test_noiseless_scattering_free_track_recovered_within_grid_resolution():
    """A bright through-going muon whose DOMs see their expected light, all of it at the direct Cherenkov time,
    no noise: the fit lands on the true direction to far better than the coarse grid's spacing."""
    u_true = np.array([[0.3, -0.5, -0.8]])
    u_true /= np.linalg.norm(u_true)
    truth = bd.EventTruth(vertex=-900.0 * u_true[0] + np.array([20.0, -30.0, 10.0]), vertex_time=0.0, energy=2e5,
                          interaction=sim.NUMU_CC, is_track=True, cascade_energy=1.0)
    ev = sim.events_along(truth.vertex[None, :], np.array([0.0]), np.array([truth.energy]),
                          np.array([sim.NUMU_CC]), np.array([True]), np.array([1.0]), u_true)
    light = sim.expected_light(ev)
    lit = np.flatnonzero(light.expected_pe >= 0.5)
    assert len(lit) > 30
    n_pe = np.rint(light.expected_pe[lit])
    like = bd.Likelihood(truth, light.sensor[lit], np.rint(light.t_direct[lit]), n_pe * sim.SPE_MEAN)
    u, _ = bd.fit_direction(like)
    err = np.degrees(np.arccos(np.clip(u @ u_true[0], -1.0, 1.0)))
    grid_spacing = np.degrees(np.sqrt(4 * np.pi / 192))  # the 192-point grid the bound was set with (14.6 deg);
    assert err < grid_spacing / 10, f"{err:.3f} deg"  # the tracks' grid is coarser since, the bound stays


def test_refuses_data_without_full_truth(tmp_path):
    with pytest.raises(InputError, match="no truth file"):
        bd.check_truth(str(tmp_path), "test")
    pq.write_table(pa.table({"event_id": [1], "azimuth": [0.1], "zenith": [0.2]}), tmp_path / "test_truth.parquet")
    with pytest.raises(InputError, match="truth lacks energy") as e:
        bd.check_truth(str(tmp_path), "test")
    assert "\n" not in str(e.value)


@pytest.mark.integration
def test_bound_publishes_like_predict(tmp_path):
    from neutrino_ray.icecube.evaluate import evaluate
    from neutrino_ray.icecube.simwrite import simulate_dataset

    data, out = str(tmp_path / "data"), str(tmp_path / "bound")
    simulate_dataset(data, events_per_batch=12, train_batches=0, test_batches=1, seed=5)
    m = bd.bound(data, "test", out, events_per_task=6)
    assert m["events"] == 12
    pred = pq.read_table(tmp_path / "bound" / "predictions.parquet")
    assert set(pred.column("model").to_pylist()) == {"bound"}
    assert pred.column("kappa").null_count == 12
    sub = pa.csv.read_csv(tmp_path / "bound" / "submission.csv")
    assert sub.column_names == ["event_id", "azimuth", "zenith"] and sub.num_rows == 12
    rep = evaluate(data, "test", str(tmp_path / "bound" / "predictions.parquet"), str(tmp_path / "eval"))
    assert rep["n_events"] == 12
    assert abs(rep["mean_angular_error"] - m["report"]["all"]["mean_rad"]) < 1e-3


# ---------------------------------------------------------------------------------------------------
# The issue-26 targets on events generated above 10 TeV (a few hundred events; a minute at most).
@pytest.fixture(scope="module")
def above_10tev():
    mp = pytest.MonkeyPatch()
    mp.setattr(sim, "E_MIN", 1.0e4)
    try:
        batch = sim.simulate_batch(seed=77, n_events=90, first_event_id=0)
    finally:
        mp.undo()
    errs: dict[str, list[float]] = {"track": [], "cascade": []}
    for row, s, t, q in _events(batch):
        like = bd.Likelihood(bd.truth_of(row), s, t, q)
        u, _ = bd.fit_direction(like)
        u_true = sim.direction_of_travel(np.array([row["azimuth"]]), np.array([row["zenith"]]))[0]
        errs[row["topology"]].append(float(np.degrees(np.arccos(np.clip(u @ u_true, -1.0, 1.0)))))
    return {k: np.array(v) for k, v in errs.items()}


def test_bound_track_median_above_10tev(above_10tev):
    """Target: tracks above 10 TeV, median <= 0.5 deg (the best Kaggle solution on real data)."""
    e = above_10tev["track"]
    assert len(e) >= 15
    assert np.median(e) <= 0.5, f"median {np.median(e):.3f} deg on {len(e)} tracks"


@pytest.mark.xfail(strict=True, reason="issue 26 target missed: bound median for cascades above 10 TeV is 15.3 deg "
                                       "on this fixture's 55 cascades with the faster search (15.6 with the old one "
                                       "after the sixth session, PMT saturation; 12.5 after the fifth; 6.4 deg on "
                                       "the 18 with the vertex inside the strings, 20.4 on the 37 outside; "
                                       "docs/icecube.md, 'Information bound', speed) against <= 5 deg")
def test_bound_cascade_median_above_10tev(above_10tev):
    """Target: cascades above 10 TeV, median <= 5 deg (the best Kaggle solution on real data)."""
    e = above_10tev["cascade"]
    assert len(e) >= 30
    assert np.median(e) <= 5.0, f"median {np.median(e):.2f} deg on {len(e)} cascades"


# ---------------------------------------------------------------------------------------------------
# Slow suite: the issue-26 targets on 40,000 simulated test events, through the CLI's function on Ray
# (both cores). Run time: not run to the end on the shared 2-core machine. Measured rates: 2.4-4.4 events/s
# end to end on Ray (c776cb8, load 12-17) -> 2.5-4.5 h; 1.7 events/s in two processes at load 30-55 (7ad29bd,
# 1,000 events in 590 s) -> 6.5 h; about 7 events/s per process on an idle core -> ~50 min on two; at ad53759
# (issue 26, fourth session) 6.3 events per CPU-second in the fits (3,000 events: 475 s of CPU, 49 min wall in two
# processes at load 15-53) -> ~53 min of CPU on each of two idle cores. Plus ~1 min of simulation. At 75bc727 (PMT
# saturation, issue 26's sixth session) the same 40,000 events through the CLI took 200 s to simulate and score with
# LineFit at load 18-30; the bound's share of the two cores was ~0.35 of one at load 25-30 (~5-6 h at that load). See
# docs/icecube.md ("Information bound", "Issue 26, fourth session", "Issue 26, sixth session"). At bec3f06 (the
# faster search) the same 40,000 events through the CLI: simulation 103 s, the bound 2,934 s wall and ~3,800 s of CPU
# (~10.5 events per CPU-second) on the 2 cores at load 1-15.
_MISSED_1K = "missed on the last 3,000 of 10,000 test events at 51e3b59 (docs/icecube.md, 'Issue 26, fifth session'): "


@pytest.fixture(scope="module")
def report_40k(tmp_path_factory):
    from neutrino_ray.icecube.simwrite import simulate_dataset

    root = tmp_path_factory.mktemp("bound40k")
    simulate_dataset(str(root / "data"), events_per_batch=40_000, train_batches=0, test_batches=1, seed=21)
    return bd.bound(str(root / "data"), "test", str(root / "bound"))["report"]


TARGETS_40K = [
    pytest.param(lambda r: r["above_10TeV"]["cascade"]["median_deg"], 5.0, id="cascades>10TeV median<=5deg",
                 marks=pytest.mark.xfail(strict=True, reason="missed on these 40,000 events at bec3f06: median "
                                         "9.65 deg on 1,521 cascades (docs/icecube.md, 'Information bound'); "
                                         + _MISSED_1K + "6.4 deg, 114 cascades")),
    pytest.param(lambda r: r["above_10TeV"]["track"]["median_deg"], 0.5, id="tracks>10TeV median<=0.5deg"),
    pytest.param(lambda r: r["pulse_bins"][">=1000"]["mean_rad"], 0.11, id=">=1000 pulses mean<=0.11"),
    pytest.param(lambda r: r["pulse_bins"]["200-999"]["mean_rad"], 0.47, id="200-999 pulses mean<=0.47"),
    pytest.param(lambda r: r["all"]["mean_rad"], 0.95, id="all mean<=0.95"),
]


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize(("figure", "target"), TARGETS_40K)
def test_bound_targets_on_40000_events(report_40k, figure, target):
    assert report_40k["all"]["events"] == 40_000
    assert figure(report_40k) <= target, f"{figure(report_40k)} > {target}"


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.xfail(strict=True, reason="on these 40,000 events at bec3f06: 0.614 / 0.861 of 23,013 cascades below the "
                                       "68 / 90 % quantiles; on 3,000 test events at 51e3b59: 0.593 / 0.851 below "
                                       "the 68 / 90 % quantiles (chi-square expects 0.68 / 0.90; 0.592 / 0.838 at "
                                       "ad53759): the likelihood's approximations (Poisson charge term without the SPE "
                                       "charge spread, box-smeared Pandel, the mean of the pulse laws' minimum) do not "
                                       "match the simulation's spread exactly")
def test_bound_chi2_calibration_on_cascades(report_40k):
    """-2 Delta lnL ~ chi-square(2 dof) where the model's direction is the truth's (cascades: no kinematic angle)."""
    c = report_40k["chi2_check"]["cascade"]
    assert abs(c["fraction_below_68"] - 0.68) < 0.05 and abs(c["fraction_below_90"] - 0.90) < 0.04, c
