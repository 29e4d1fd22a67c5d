"""vMF containment radii against numeric integration, and coverage on draws from known vMFs."""

from __future__ import annotations

import numpy as np
import pytest

from neutrino_ray.icecube.uncertainty import coverage, sigmas, vmf_cdf, vmf_quantile


def _numeric_cdf(kappa: float, r: float) -> float:
    """P(θ ≤ r) by integrating the vMF density e^{κ(cos θ − 1)} sin θ over θ (adaptive quadrature)."""
    from scipy.integrate import quad

    def density(th: float) -> float:
        return float(np.exp(-2 * kappa * np.sin(th / 2) ** 2) * np.sin(th))

    scale = min(np.pi, 10 / np.sqrt(kappa))  # where the mass lies
    inner = quad(density, 0, min(r, scale), limit=200, epsabs=0, epsrel=1e-10)[0]
    inner += quad(density, min(r, scale), r, limit=200)[0] if r > scale else 0.0
    total = quad(density, 0, scale, limit=200, epsabs=0, epsrel=1e-10)[0] + quad(density, scale, np.pi, limit=200)[0]
    return inner / total


@pytest.mark.parametrize("kappa", [1e-3, 0.1, 1.0, 10.0, 300.0, 1e4, 1e5])
@pytest.mark.parametrize("p", [0.5, 0.68, 0.9])
def test_quantiles_match_numeric_integration(kappa: float, p: float) -> None:
    r = float(vmf_quantile(kappa, p))
    assert 0 < r <= np.pi
    assert _numeric_cdf(kappa, r) == pytest.approx(p, abs=1e-6)
    assert float(vmf_cdf(kappa, r)) == pytest.approx(p, rel=1e-10)


def test_limits() -> None:
    # κ → 0: the uniform sphere, P(θ ≤ r) = (1 − cos r) / 2.
    np.testing.assert_allclose(vmf_quantile(1e-12, 0.5), np.pi / 2, rtol=1e-9)
    # κ large: the 2-D Gaussian limit, r ≈ √(−2 log(1 − p) / κ).
    np.testing.assert_allclose(vmf_quantile(1e5, 0.9), np.sqrt(-2 * np.log(0.1) / 1e5), rtol=1e-4)
    s = sigmas(np.array([0.5, 50.0]))
    assert list(s) == ["sigma_50", "sigma_68", "sigma_90"]
    assert (s["sigma_50"] < s["sigma_68"]).all() and (s["sigma_68"] < s["sigma_90"]).all()


def _draw_vmf(kappa: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Angles from μ of vMF draws: 1 − cos θ = −log(1 − u (1 − e^{−2κ})) / κ for uniform u."""
    u = rng.uniform(size=len(kappa))
    return 2 * np.arcsin(np.sqrt(np.clip(-np.log1p(u * np.expm1(-2 * kappa)) / kappa, 0, 2) / 2))


def test_coverage_is_nominal_on_draws_from_known_vmfs() -> None:
    rng = np.random.default_rng(5)
    kappa = 10 ** rng.uniform(-2, 4, size=200_000)
    err = _draw_vmf(kappa, rng)
    np.testing.assert_allclose(coverage(err, kappa), [0.5, 0.68, 0.9], atol=0.005)
    # Overconfident predictions (κ claimed 4× too large) cover less than nominal.
    assert (coverage(err, 4 * kappa) < np.array([0.5, 0.68, 0.9]) - 0.05).all()


def test_calibration_repairs_a_deliberately_miscalibrated_model() -> None:
    from neutrino_ray.icecube.uncertainty import apply_kappa_calibration, fit_kappa_calibration

    rng = np.random.default_rng(7)
    true_kappa = 10 ** rng.uniform(-1, 3, size=40_000)
    err = _draw_vmf(true_kappa, rng)
    # Overconfident at high κ, underconfident at low κ: a monotone distortion of the truth.
    claimed = true_kappa ** 1.3 * 2.0
    before = coverage(err, claimed)
    cal = fit_kappa_calibration(claimed[:20_000], err[:20_000])  # fit on one half ...
    after = coverage(err[20_000:], apply_kappa_calibration(cal, claimed[20_000:]))  # ... judge on the other
    assert np.abs(before - [0.5, 0.68, 0.9]).max() > 0.1
    np.testing.assert_allclose(after, [0.5, 0.68, 0.9], atol=0.02)
    assert np.all(np.diff(cal["log_kappa_out"]) >= 0)  # monotone
    assert apply_kappa_calibration(None, claimed) is claimed


def test_linefit_uncertainty_recovers_kappa_per_pulse_count() -> None:
    from neutrino_ray.icecube.uncertainty import fit_pulse_count_kappa, pulse_count_kappa

    rng = np.random.default_rng(8)
    n = np.round(10 ** rng.uniform(0.5, 3, size=40_000)).astype(int)
    true_kappa = 0.5 + n / 20.0  # sharper with more pulses
    err = _draw_vmf(true_kappa, rng)
    model = fit_pulse_count_kappa(n[:20_000], err[:20_000])
    got = pulse_count_kappa(model, n[20_000:])
    np.testing.assert_allclose(coverage(err[20_000:], got), [0.5, 0.68, 0.9], atol=0.02)
    mid = (n[20_000:] > 20) & (n[20_000:] < 500)  # inside the outer knots
    assert np.median(np.abs(np.log(got[mid] / true_kappa[20_000:][mid]))) < 0.15
    assert model["events"] == 20_000 and model["bins"] == 20


@pytest.mark.integration
def test_linefit_predictions_carry_an_empirical_uncertainty_fitted_on_train(tmp_path) -> None:
    import json

    import pyarrow.parquet as pq
    from kaggle import random_events, write_dataset

    from neutrino_ray.icecube.options import ScoringOptions
    from neutrino_ray.icecube.predict import predict
    from neutrino_ray.icecube.uncertainty import LINEFIT_UNCERTAINTY, pulse_count_kappa

    rng = np.random.default_rng(9)
    root = write_dataset(tmp_path / "d", {1: random_events(rng, 300)}, split="train")
    write_dataset(root, {2: random_events(rng, 200, first_id=10_000)}, split="test")
    out = tmp_path / "p"
    manifest = predict(str(root), "test", str(out), ScoringOptions(uncertainty_events=250))
    model = json.loads((out / LINEFIT_UNCERTAINTY).read_text())
    assert model["fitted_on"]["events"] == 250 and model["fitted_on"]["split"] == "train"
    assert LINEFIT_UNCERTAINTY in manifest["files"] and "empirical" in manifest["uncertainty"]
    pred = pq.read_table(out / "predictions.parquet")
    assert pred.column("kappa").null_count == 0
    np.testing.assert_allclose(pred.column("kappa").to_numpy(),
                               pulse_count_kappa(model, pred.column("n_pulses").to_numpy()))
    np.testing.assert_allclose(pred.column("sigma_68").to_numpy(),
                               vmf_quantile(pred.column("kappa").to_numpy(), 0.68))
    # Random truths: LineFit knows nothing, so its fitted κ is near the uniform sphere's 0.
    assert np.median(pred.column("kappa").to_numpy()) < 0.5
    manifest = predict(str(root), "test", str(tmp_path / "p0"), ScoringOptions(uncertainty_events=0))
    assert pq.read_table(tmp_path / "p0" / "predictions.parquet").column("kappa").null_count == 200
    assert "--uncertainty-events 0" in manifest["uncertainty"] and LINEFIT_UNCERTAINTY not in manifest["files"]


def test_errors_against_truth_align_by_event_id_in_any_order() -> None:
    import pyarrow as pa

    from neutrino_ray.icecube.metrics import angular_distance, errors_against_truth

    truth = pa.table({"event_id": [30, 10, 20], "azimuth": [0.3, 0.1, 0.2], "zenith": [1.3, 1.1, 1.2]})
    pred = pa.table({"event_id": [20, 30], "azimuth": [0.5, 0.3], "zenith": [1.0, 1.3]})
    np.testing.assert_allclose(errors_against_truth(truth, pred),
                               [angular_distance(0.2, 1.2, 0.5, 1.0), 0.0], atol=1e-12)
    with pytest.raises(ValueError, match="no truth for event_id 40"):
        errors_against_truth(truth, pa.table({"event_id": [40], "azimuth": [0.0], "zenith": [0.0]}))


def test_rows_by_event_id_and_true_directions_in_any_order() -> None:
    import pyarrow as pa

    from neutrino_ray.icecube.metrics import rows_by_event_id, with_true_direction

    rows, found = rows_by_event_id(np.array([30, 10, 20]), np.array([20, 40, 30, 5]))
    assert found.tolist() == [True, False, True, False] and rows[found].tolist() == [2, 0]
    rows, found = rows_by_event_id(np.array([], np.int64), np.array([1, 2]))
    assert rows.tolist() == [0, 0] and not found.any()
    truth = pa.table({"event_id": [30, 10, 20], "azimuth": [0.3, 0.1, 0.2], "zenith": [1.3, 1.1, 1.2]})
    events = with_true_direction(pa.table({"event_id": [20, 30, 10], "x": [1, 2, 3]}), truth)
    assert events.column_names == ["event_id", "x", "azimuth", "zenith"]
    assert events.column("azimuth").to_pylist() == [0.2, 0.3, 0.1] and events.column("zenith").to_pylist()[0] == 1.2
    with pytest.raises(ValueError, match="no truth for event_id 40"):
        with_true_direction(pa.table({"event_id": [10, 40]}), truth)
