"""Pure cores: geometry, LineFit, the competition metric, pulse selection and features."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from neutrino_ray.icecube import linefit as lf
from neutrino_ray.icecube.features import (
    DEFAULT_MAX_PULSES,
    N_FEATURES,
    features_from_table,
    featurise,
    positions_and_times,
    select_pulses,
)
from neutrino_ray.icecube.geometry import N_SENSORS, icecube86, south_pole_ice
from neutrino_ray.icecube.linefit import angles_to_direction, direction_to_angles, linefit
from neutrino_ray.icecube.metrics import angular_dist_score, angular_distance, summarise

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference"


def _reference(name: str) -> Path:
    path = REFERENCE / name
    if not path.exists():
        pytest.skip(f"reference data {path} absent (it lives beside the project root, in ../shared/reference)")
    return path


# --- geometry -------------------------------------------------------------------------------------------

def test_geometry_layout_and_convention() -> None:
    g = icecube86()
    assert len(g.x) == N_SENSORS == 5160
    sid = np.arange(N_SENSORS)
    assert np.array_equal(sid, (g.string - 1) * 60 + (g.dom_number - 1))
    # DOMs go down the string; standard strings are ~17 m apart vertically, ~125 m between strings.
    dz = np.diff(g.z.reshape(86, 60), axis=1)
    assert (dz < 0).all()
    assert np.median(-dz[:78]) == pytest.approx(17.0, abs=0.1)
    assert 490 < g.z.max() < 530 and -530 < g.z.min() < -490  # real: 524.6 … −512.8
    t = g.to_table()
    assert t.column_names == ["sensor_id", "x", "y", "z"]


def test_geometry_matches_reference_within_2m() -> None:
    pd = pytest.importorskip("pandas")
    ref = pd.read_parquet(_reference("icecube86_geometry.parquet")).reset_index(drop=True)
    ref = ref[ref.dom_type == 20]
    sid = ((ref.string - 1) * 60 + (ref.dom_number - 1)).to_numpy()
    g = icecube86()
    err = np.linalg.norm(g.xyz[sid] - ref[["dom_x", "dom_y", "dom_z"]].to_numpy(), axis=1)
    assert len(sid) > 5000
    assert err.max() <= 2.0, f"max position error {err.max():.2f} m at sensor {sid[err.argmax()]}"


def test_geometry_matches_the_competitions_sensor_geometry_within_10cm() -> None:
    pd = pytest.importorskip("pandas")
    ref = pd.read_csv(_reference("kaggle_sensor_geometry.csv"))
    assert ref.sensor_id.tolist() == list(range(N_SENSORS))
    err = np.abs(icecube86().xyz - ref[["x", "y", "z"]].to_numpy()).max(axis=1)
    assert err.max() <= 0.1, f"max coordinate error {err.max():.3f} m at sensor {err.argmax()}"


def test_ice_table_matches_reference() -> None:
    pd = pytest.importorskip("pandas")
    ref = pd.read_parquet(_reference("ice_transparency.parquet"))
    ice = south_pole_ice()
    scat = np.interp(ref.depth, ice.depth, ice.scattering_len)
    absl = np.interp(ref.depth, ice.depth, ice.absorption_len)
    # A 25 m sampling of the published table: the layered structure (dust layer included) survives.
    assert np.corrcoef(scat, ref.scattering_len)[0, 1] > 0.9
    assert np.corrcoef(absl, ref.absorption_len)[0, 1] > 0.9
    dust = (ice.depth > 2000) & (ice.depth < 2100)
    assert ice.absorption_len[dust].min() < 25 < np.median(ice.absorption_len)


# --- LineFit --------------------------------------------------------------------------------------------

def _straight_line_events(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                   np.ndarray, np.ndarray]:
    az = rng.uniform(0, 2 * np.pi, n)
    zen = np.arccos(rng.uniform(-1, 1, n))
    origin = angles_to_direction(az, zen)
    counts = rng.integers(2, 400, n)
    offsets = np.r_[0, np.cumsum(counts)]
    ev = np.repeat(np.arange(n), counts)
    t = np.sort(rng.uniform(8_000, 14_000, len(ev)))  # order within an event does not matter
    r0 = rng.uniform(-500, 500, (n, 3))
    xyz = r0[ev] - origin[ev] * 0.2998 * (t[:, None] - 10_000)  # moves along −origin at c
    return xyz, t, offsets, az, zen


def test_linefit_exact_on_straight_lines() -> None:
    xyz, t, offsets, az, zen = _straight_line_events(np.random.default_rng(1), 500)
    az_fit, zen_fit, ok = linefit(xyz, t, offsets)
    assert ok.all()
    err = angular_distance(az, zen, az_fit, zen_fit)
    assert err.max() < 1e-3, err.max()


def test_linefit_degenerate_events_get_finite_default() -> None:
    xyz = np.array([[0.0, 0, 0], [1, 1, 1], [2, 2, 2], [5, 5, 5]])
    t = np.array([10.0, 10.0, 10.0, 12.0])
    offsets = np.array([0, 1, 3, 3 + 1])  # 1 pulse; 2 pulses at equal time; 1 pulse
    az, zen, ok = linefit(xyz, t, offsets)
    assert not ok.any()
    assert np.isfinite(az).all() and np.isfinite(zen).all()


def _slow_linefit_variant(variant: str, xyz: np.ndarray, t: np.ndarray, charge: np.ndarray,
                          aux: np.ndarray) -> np.ndarray | None:
    """One event, written the obvious way: the variant's pulse choice, then least squares r = r0 + v t."""
    idx = list(range(len(t)))
    if variant != "linefit-all":
        hlc = [i for i in idx if not aux[i]]
        idx = hlc if len(hlc) >= 2 else idx
    idx = sorted(sorted(idx, key=lambda i: (-charge[i], i))[:lf.KAGGLE_CHARGE_CAP])
    if variant == "linefit-clean":
        def scattered(i: int) -> bool:
            for j in idx:
                d = float(np.linalg.norm(xyz[i] - xyz[j]))
                if j != i and d <= lf.CLEAN_RADIUS and t[i] - t[j] > d / lf.C_VACUUM + lf.CLEAN_DELAY:
                    return True
            return False
        cleaned = [i for i in idx if not scattered(i)]
        idx = cleaned if len(cleaned) >= 2 else idx
    if len(set(t[idx].tolist())) < 2:
        return None
    design = np.stack([np.ones(len(idx)), t[idx]], axis=1)
    v = np.linalg.lstsq(design, xyz[idx], rcond=None)[0][1]
    return -v / np.linalg.norm(v)


@pytest.mark.parametrize("variant", lf.VARIANTS)
def test_linefit_variants_equal_slow_reference(variant: str) -> None:
    """Every variant against its per-event definition, on events with scattered-looking late pulses,
    few or no HLC pulses, ties in charge and more pulses than the charge cap."""
    rng = np.random.default_rng(11)
    counts = np.r_[1, 2, 3, 900, 1_200, 2_500, rng.integers(2, 120, 40)]
    offsets = np.r_[0, np.cumsum(counts)]
    n_pulses = int(offsets[-1])
    xyz = rng.uniform(-300, 300, (n_pulses, 3))
    t = rng.uniform(9_000, 15_000, n_pulses).round()
    charge = rng.choice([0.5, 1.0, 1.025, 2.5], n_pulses)
    aux = rng.random(n_pulses) < 0.6
    aux[offsets[1]:offsets[2]] = True  # an event without HLC pulses: falls back to all
    az, zen, ok = lf.fit(variant, offsets, xyz, t, charge, aux)
    cleaned_any = False
    for e in range(len(counts)):
        lo, hi = offsets[e], offsets[e + 1]
        want = _slow_linefit_variant(variant, xyz[lo:hi], t[lo:hi], charge[lo:hi], aux[lo:hi])
        if want is None:
            assert not ok[e]
            continue
        assert ok[e]
        np.testing.assert_allclose(angles_to_direction(az[e:e + 1], zen[e:e + 1])[0], want, atol=1e-7)
        if variant == "linefit-clean":
            sel = lf.select("linefit", offsets[e:e + 2] - lo, xyz[lo:hi], t[lo:hi], charge[lo:hi], aux[lo:hi])
            clean = lf.select(variant, offsets[e:e + 2] - lo, xyz[lo:hi], t[lo:hi], charge[lo:hi], aux[lo:hi])
            cleaned_any |= bool(clean.sum() < sel.sum())
    if variant == "linefit-clean":
        assert cleaned_any, "the cleaning never removed a pulse: the test data does not exercise it"


@pytest.mark.parametrize("variant", lf.VARIANTS)
def test_linefit_variants_exact_on_straight_lines(variant: str) -> None:
    """Light moving at c along a line: whichever pulses a variant keeps, it recovers the direction."""
    xyz, t, offsets, az, zen = _straight_line_events(np.random.default_rng(1), 300)
    rng = np.random.default_rng(2)
    aux = rng.random(len(t)) < 0.6
    charge = rng.integers(1, 200, len(t)) * 0.025
    az_fit, zen_fit, ok = lf.fit(variant, offsets, xyz, t, charge, aux)
    assert ok.all()
    assert angular_distance(az, zen, az_fit, zen_fit).max() < 1e-3


def test_linefit_unknown_variant_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown LineFit variant"):
        lf.fit("linefit-magic", np.array([0, 2]), np.zeros((2, 3)), np.array([0.0, 1.0]), np.ones(2),
               np.zeros(2, bool))


def test_angles_round_trip_and_ranges() -> None:
    rng = np.random.default_rng(2)
    d = rng.normal(size=(1000, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    az, zen = direction_to_angles(d)
    assert ((az >= 0) & (az < 2 * np.pi)).all() and ((zen >= 0) & (zen <= np.pi)).all()
    np.testing.assert_allclose(angles_to_direction(az, zen), d, atol=1e-12)


# --- metric ---------------------------------------------------------------------------------------------

def _competition_formula(az_true, zen_true, az_pred, zen_pred):  # type: ignore[no-untyped-def]
    """The organisers' published implementation, transcribed."""
    sa1 = np.sin(az_true)
    ca1 = np.cos(az_true)
    sz1 = np.sin(zen_true)
    cz1 = np.cos(zen_true)
    sa2 = np.sin(az_pred)
    ca2 = np.cos(az_pred)
    sz2 = np.sin(zen_pred)
    cz2 = np.cos(zen_pred)
    scalar_prod = sz1 * sz2 * (ca1 * ca2 + sa1 * sa2) + (cz1 * cz2)
    scalar_prod = np.clip(scalar_prod, -1, 1)
    return np.average(np.abs(np.arccos(scalar_prod)))


def test_metric_equals_competition_formula() -> None:
    rng = np.random.default_rng(3)
    a = [rng.uniform(0, 2 * np.pi, 10_000), rng.uniform(0, np.pi, 10_000),
         rng.uniform(0, 2 * np.pi, 10_000), rng.uniform(0, np.pi, 10_000)]
    assert angular_dist_score(*a) == pytest.approx(_competition_formula(*a), rel=1e-12)
    # Known values: identical → 0; antipodal → π; random isotropic guesses → π/2 on average.
    assert angular_dist_score(np.array([1.0]), np.array([0.5]), np.array([1.0]), np.array([0.5])) < 1e-7
    assert angular_dist_score(np.array([0.0]), np.array([0.0]), np.array([0.0]), np.array([np.pi])) == \
        pytest.approx(np.pi)
    with pytest.raises(ValueError):
        angular_dist_score(np.array([np.nan]), np.array([0.0]), np.array([0.0]), np.array([0.0]))
    s = summarise(np.array([0.1, 0.2, 0.3, 0.4]))
    assert s["median_angular_error"] == pytest.approx(0.25)


# --- selection and features -----------------------------------------------------------------------------

def _slow_select(times: list[int], aux: list[bool], cap: int) -> list[int]:
    """The documented rule, written the obvious way: all if ≤ cap, else non-auxiliary first, then earliest."""
    idx = list(range(len(times)))
    if len(idx) <= cap:
        return idx
    idx.sort(key=lambda i: (aux[i], times[i], i))
    return sorted(idx[:cap])


def test_featurise_equals_slow_reference() -> None:
    rng = np.random.default_rng(4)
    counts = np.r_[1, 2, 255, 256, 257, 12_000, rng.integers(1, 700, 60)]
    n = len(counts)
    offsets = np.r_[0, np.cumsum(counts)]
    ev = np.repeat(np.arange(n), counts)
    time = np.sort(rng.integers(0, 30_000, len(ev)) + ev * 100_000) - ev * 100_000  # sorted within event
    sensor = rng.integers(0, N_SENSORS, len(ev)).astype(np.int16)
    charge = rng.gamma(2.0, 0.5, len(ev)) + 0.05
    aux = rng.random(len(ev)) < 0.6
    lst = pa.array(offsets.astype(np.int32))
    events = pa.table({
        "event_id": pa.array(np.arange(n) * 7 + 3, pa.int64()),
        "sensor_id": pa.ListArray.from_arrays(lst, pa.array(sensor)),
        "time": pa.ListArray.from_arrays(lst, pa.array(time)),
        "charge": pa.ListArray.from_arrays(lst, pa.array(charge)),
        "auxiliary": pa.ListArray.from_arrays(lst, pa.array(aux)),
    })
    g = icecube86()
    out = featurise(events, g.xyz, DEFAULT_MAX_PULSES)
    flat, new_off = features_from_table(out)
    assert flat.shape[1] == N_FEATURES
    assert out.column("n_pulses").to_pylist() == counts.tolist()
    for e in range(n):  # the slow reference, event by event
        lo, hi = offsets[e], offsets[e + 1]
        keep = lo + np.array(_slow_select(time[lo:hi].tolist(), aux[lo:hi].tolist(), DEFAULT_MAX_PULSES))
        got = flat[new_off[e]:new_off[e + 1]]
        want = np.stack([g.x[sensor[keep]] / 500, g.y[sensor[keep]] / 500, g.z[sensor[keep]] / 500,
                         (time[keep] - 1e4) / 3e4, np.log10(charge[keep]) / 3, aux[keep]], axis=1)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    # positions_and_times undoes the scaling (float32 features: ~0.01 ns, ~0.1 mm).
    kept_times = np.concatenate([time[lo + np.array(_slow_select(time[lo:hi].tolist(), aux[lo:hi].tolist(),
                                                                  DEFAULT_MAX_PULSES))]
                                 for lo, hi in itertools.pairwise(offsets)])
    xyz, t = positions_and_times(flat)
    np.testing.assert_allclose(t, kept_times, atol=0.01)
    np.testing.assert_allclose(np.abs(xyz).max(), 600, atol=150)


def test_select_pulses_without_cap_is_identity() -> None:
    offsets = np.array([0, 3, 5])
    keep, new = select_pulses(offsets, np.arange(5), np.zeros(5, bool), 256)
    assert keep.tolist() == [0, 1, 2, 3, 4] and new.tolist() == [0, 3, 5]


def test_select_pulses_unsorted_times_follow_the_rule() -> None:
    """Pulses not in time order inside an event still get 'non-auxiliary first, then earliest'."""
    rng = np.random.default_rng(9)
    counts = np.array([300, 5, 600])
    offsets = np.r_[0, np.cumsum(counts)]
    time = rng.permutation(np.arange(counts.sum()))
    aux = rng.random(counts.sum()) < 0.5
    keep, new = select_pulses(offsets, time, aux, 256)
    assert new.tolist() == [0, 256, 261, 517]
    for e in range(3):
        lo, hi = offsets[e], offsets[e + 1]
        want = lo + np.array(_slow_select(time[lo:hi].tolist(), aux[lo:hi].tolist(), 256))
        assert keep[new[e]:new[e + 1]].tolist() == want.tolist()
