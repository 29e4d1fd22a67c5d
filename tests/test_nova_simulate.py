"""Tests of the NOvA pixel-map simulator: layout and dtypes, determinism, the HDF5 round trip, view
orientation, the class mix, truth consistency and the physics that makes the tasks learnable but not trivial."""

from __future__ import annotations

import io
import itertools
import time

import h5py
import numpy as np
import pytest

from neutrino_ray.nova import format as fmt
from neutrino_ray.nova import simulate as sim

N_MIX = 20_000
MIN_EVENTS_PER_S = 1_000  # measured ~1,400-1,600 on one (shared) core; loose for busy CI machines


@pytest.fixture(scope="module")
def default_events() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    return sim.simulate_events(seed=11, n=N_MIX)


@pytest.fixture(scope="module")
def numu_nc_events() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    return sim.simulate_events(seed=12, n=10_000, mix=sim.Mix.parse("numu_cc=0.5,nc=0.5"))


def _extent(maps: np.ndarray) -> np.ndarray:
    """Planes from the first to the last with >= 20 counts in >= 2 pixels (both views): noise hits are single pixels."""
    hits = np.count_nonzero(maps, axis=(1, 3))
    counts = maps.sum(axis=(1, 3), dtype=np.int64)  # no int64 copy of the maps (GBs at 20,000 events)
    active = (counts >= 20) & (hits >= 2)
    first = np.argmax(active, axis=1)
    last = maps.shape[2] - 1 - np.argmax(active[:, ::-1], axis=1)
    return np.where(active.any(axis=1), last - first + 1, 0)


def _within(frac: float, expected: float, n: int, sigmas: float = 5.0) -> bool:
    return abs(frac - expected) <= sigmas * np.sqrt(max(expected * (1 - expected), 1e-4) / n) + 1e-9


# ----------------------------------------------------------------------------------------------
# Layout, determinism, HDF5
def test_shapes_and_dtypes() -> None:
    maps, fields = sim.simulate_events(seed=1, n=700, first_index=450, run=7, subrun=3)
    assert maps.shape == (700, fmt.VIEWS, fmt.PLANES, fmt.CELLS) and maps.dtype == np.uint8
    assert set(fields) == set(fmt.FIELDS)
    for name, dtype in fmt.FIELDS.items():
        assert fields[name].shape == (700,), name
        assert fields[name].dtype == dtype, name
    idx = fields["rec.training.trainingdata_idx"].astype(np.int64)
    np.testing.assert_array_equal(idx, 450 + np.arange(700))
    np.testing.assert_array_equal(fields["cycle"], idx // 500)
    assert (fields["run"] == 7).all() and (fields["subrun"] == 3).all()
    assert (np.diff(fields["evt"].astype(np.int64)) > 0).all()  # increasing, so unique
    assert fields["subevt"].max() < 10
    assert (np.abs(fields["vtxx"]) < 190).all() and (np.abs(fields["vtxy"]) < 190).all()
    assert (fields["vtxz"] > 0).all() and (fields["vtxz"] < 1250).all()
    assert maps.reshape(700, -1).sum(axis=1).min() > 0

    empty_maps, empty = sim.simulate_events(seed=1, n=0)
    assert empty_maps.shape == (0, 2, 100, 80) and all(len(v) == 0 for v in empty.values())


def test_deterministic() -> None:
    a_maps, a = sim.simulate_events(seed=5, n=600, first_index=10)
    b_maps, b = sim.simulate_events(seed=5, n=600, first_index=10)
    c_maps, c = sim.simulate_events(seed=6, n=600, first_index=10)
    np.testing.assert_array_equal(a_maps, b_maps)
    for k in fmt.FIELDS:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a_maps, c_maps)
    assert not np.array_equal(a["nuenergy"], c["nuenergy"])


def test_h5_round_trip() -> None:
    maps, fields = sim.simulate_events(seed=2, n=300)
    buf = io.BytesIO()
    fmt.write_h5(buf, maps, fields)
    buf.seek(0)
    with h5py.File(buf, "r") as h:
        cvn = h[fmt.IMAGE][()]
        assert cvn.shape == (300, fmt.PIXELS) and cvn.dtype == np.uint8
        for k in (0, 17, 299):
            np.testing.assert_array_equal(cvn[k].reshape(2, 100, 80), maps[k])
        for name, dtype in fmt.FIELDS.items():
            col = h[fmt.GROUP][name][()]
            assert col.shape == (300, 1) and col.dtype == dtype, name
            np.testing.assert_array_equal(col[:, 0], fields[name])


# ----------------------------------------------------------------------------------------------
# View orientation
def _one_track(direction: tuple[float, float, float], length: float = 200.0, start: tuple[float, float, float] = (
        10.5, 40.5, 20.5)) -> np.ndarray:
    img = np.zeros((1, 2, 100, 80), np.float32)
    sim.render_track(img, np.array([0]), np.array([start[0]]), np.array([start[1]]), np.array([start[2]]),
                     np.array([direction], float), np.array([length]), np.array([sim.MIP_COUNTS_PER_CM]))
    return img[0]


def test_render_track_along_z() -> None:
    img = _one_track((0.0, 0.0, 1.0))
    planes, cells = np.nonzero(img[0])
    assert set(cells) == {40} and planes.min() == 10 and planes.max() == int(10.5 + 200 / sim.PLANE_PITCH_CM)
    planes, cells = np.nonzero(img[1])
    assert set(cells) == {20} and len(set(planes)) > 25
    # half of the deposit in each view, the whole length inside the window
    assert img.sum() == pytest.approx(200 * sim.MIP_COUNTS_PER_CM, rel=1e-4)
    assert img[0].sum() == pytest.approx(img[1].sum(), rel=1e-4)
    # a MIP crossing one plane gives 10-30 counts per view
    assert 10 <= img[0, 15, 40] <= 30


def test_render_track_along_x_and_y() -> None:
    img = _one_track((1.0, 0.0, 0.0), length=100.0)
    planes, cells = np.nonzero(img[0])
    assert set(planes) == {10} and cells.min() == 40 and cells.max() >= 40 + 100 / sim.CELL_PITCH_CM - 1
    planes, cells = np.nonzero(img[1])
    assert set(planes) == {10} and np.ptp(cells) <= 1
    img = _one_track((0.0, 1.0, 0.0), length=100.0)
    planes, cells = np.nonzero(img[1])
    assert set(planes) == {10} and cells.min() == 20 and cells.max() >= 20 + 100 / sim.CELL_PITCH_CM - 1
    planes, cells = np.nonzero(img[0])
    assert set(planes) == {10} and np.ptp(cells) <= 1


def test_render_track_clips_and_vectorises() -> None:
    img = np.zeros((3, 2, 100, 80), np.float32)
    d = np.array([[0.0, 0.0, 1.0], [0.0, 0.0, -1.0], [0.6, 0.0, 0.8]])
    sim.render_track(img, np.array([0, 1, 2]), np.array([50.0, 50.0, 0.0]), np.array([40.0, 40.0, 75.0]),
                     np.array([40.0, 40.0, 40.0]), d, np.array([5000.0, 5000.0, 5000.0]), np.full(3, 5.0))
    assert img[0].sum() == pytest.approx(50 * sim.PLANE_PITCH_CM * 5.0, rel=1e-4)  # forward half of the window
    assert img[1].sum() == pytest.approx(50 * sim.PLANE_PITCH_CM * 5.0, rel=1e-4)  # backward half
    assert np.nonzero(img[1, 0])[0].max() == 49
    # the slanted track leaves view 0 at the cell edge but stays in view 1 until the last plane
    assert np.nonzero(img[2, 0])[0].max() < 10 and np.nonzero(img[2, 1])[0].max() == 99


def test_beam_goes_forward(default_events: tuple[np.ndarray, dict[str, np.ndarray]]) -> None:
    maps, f = default_events
    numu = f["interaction"] <= 3
    long_track = numu & (_extent(maps) >= 40)
    counts = maps[long_track].sum(axis=(1, 3), dtype=np.int64)  # per plane: views and cells summed
    mean_plane = (counts * np.arange(100)).sum(axis=1) / counts.sum(axis=1)
    assert long_track.sum() > 5_000
    assert (mean_plane > sim.VERTEX_PLANE[1] + 1).mean() > 0.95  # beyond the vertex plane (5..20)
    # the event starts at the vertex plane
    first = np.argmax(counts >= 20, axis=1)
    assert np.median(first) >= sim.VERTEX_PLANE[0] - 1 and np.median(first) <= sim.VERTEX_PLANE[1]


# ----------------------------------------------------------------------------------------------
# Mix and truth
def test_default_mix(default_events: tuple[np.ndarray, dict[str, np.ndarray]]) -> None:
    _, f = default_events
    i = f["interaction"].astype(np.int64)
    n = len(i)
    assert _within((i <= 3).mean(), 0.88, n)
    assert _within(((i >= 4) & (i <= 7)).mean(), 0.01, n)
    assert _within((i == fmt.NC).mean(), 0.11, n)
    assert not ((i >= 8) & (i <= 12)).any() and not (i >= 14).any()
    cc = i <= 11
    modes = np.bincount(i[cc] % 4, minlength=4) / cc.sum()
    for got, want in zip(modes, (0.12, 0.28, 0.55, 0.05)):
        assert _within(got, want, int(cc.sum()))


def test_custom_mix_and_exotic_families() -> None:
    _, f = sim.simulate_events(seed=3, n=8_000, mix=sim.Mix.parse(
        "numu_cc=0.5, nue_cc=0.25, nc=0.25, qe=1, res=0, dis=0, other_mode=0"))
    i = f["interaction"].astype(np.int64)
    assert _within((i <= 3).mean(), 0.5, len(i))
    assert _within(((i >= 4) & (i <= 7)).mean(), 0.25, len(i))
    assert _within((i == fmt.NC).mean(), 0.25, len(i))
    assert set(np.unique(i)) == {0, 4, fmt.NC}  # modes other than QE: 0

    _, f = sim.simulate_events(seed=4, n=2_000, mix=sim.Mix.parse("nutau_cc=1,nu_on_e=1,cosmic=1,other=1"))
    i = f["interaction"].astype(np.int64)
    fam = {"nutau": (i >= 8) & (i <= 11), "nue_e": i == fmt.NU_ON_E, "cosmic": i == fmt.COSMIC, "other": i == fmt.OTHER}
    for sel in fam.values():
        assert _within(sel.mean(), 0.25, len(i))
    assert (f["finalstate"][fam["cosmic"]] == fmt.FS_COSMIC).all()
    assert (f["finalstate"][~fam["cosmic"]] == fmt.FS_OTHER).all()
    assert (f["nuenergy"][fam["cosmic"]] == 0).all() and (f["lepenergy"][fam["cosmic"]] >= 1.0).all()
    assert (f["nuenergy"][fam["nutau"]] >= sim.TAU_THRESHOLD).all()
    e = f["nuenergy"][fam["nue_e"]]
    assert (f["lepenergy"][fam["nue_e"]] <= e).all() and (e > 0).all()


def test_mix_parse() -> None:
    assert sim.Mix.parse("") == sim.Mix()
    m = sim.Mix.parse("numu_cc=0.5,nue_cc=0.25,nc=0.25")
    assert (m.numu_cc, m.nue_cc, m.nc, m.nutau_cc, m.cosmic) == (0.5, 0.25, 0.25, 0.0, 0.0)
    assert (m.qe, m.dis) == (0.12, 0.55)  # modes keep their defaults
    assert sim.Mix.parse("dis=1").numu_cc == 0.88  # only modes given: families keep theirs
    assert sim.Mix.parse(str(m)) == m and sim.Mix.parse(str(sim.Mix())) == sim.Mix()
    fr = sim.Mix.parse("numu_cc=2,nc=2").family_fractions()
    assert fr["numu_cc"] == 0.5 and fr["nc"] == 0.5 and sum(fr.values()) == pytest.approx(1.0)
    assert sum(sim.Mix().mode_fractions().values()) == pytest.approx(1.0)
    for bad, message in (("numu_cc=0.5,muons=0.5", "unknown key 'muons'"), ("nc=-0.1,numu_cc=1", "nc=-0.1"),
                         ("numu_cc=0,nc=0", "all family fractions are zero"), ("numu_cc", "not key=value"),
                         ("nc=lots", "not a number"), ("nc=1,nc=2", "given twice"),
                         ("qe=0,res=0,dis=0,other_mode=0", "all CC mode fractions are zero")):
        with pytest.raises(ValueError, match=message):
            sim.Mix.parse(bad)


def test_truth_consistency(default_events: tuple[np.ndarray, dict[str, np.ndarray]]) -> None:
    _, f = default_events
    i = f["interaction"].astype(np.int64)
    fs = f["finalstate"].astype(np.int64)
    family = np.select([i <= 3, (i >= 4) & (i <= 7), i == fmt.NC], [0, 1, 2], -1)
    np.testing.assert_array_equal(fs // 16, family)
    tracks, showers = (fs % 16) // 4, fs % 4
    prongs = f["finalstateprong"].astype(np.int64)
    assert (prongs >= tracks + showers).all()
    assert (f["particles"].astype(np.int64) >= prongs).all() and (f["particles"] >= 1).all()
    assert (tracks[i <= 3] >= 1).mean() > 0.98  # the muon
    e, lep = f["nuenergy"].astype(np.float64), f["lepenergy"].astype(np.float64)
    assert (e > 0).all() and e.max() <= sim.E_MAX and (lep <= e).all()
    y = lep / e
    assert ((y >= 0) & (y <= 1)).all()
    assert set(np.unique(f["parent"])) <= {13, 130, 211, 321}
    # inelasticity (hadronic share 1 - y) by mode: QE low, then other (MEC), RES, DIS broad
    had = 1 - y
    means = [had[(i <= 11) & (i % 4 == mode)].mean() for mode in range(4)]
    assert means[0] < means[3] < means[1] < means[2]
    assert had[(i <= 11) & (i % 4 == 2)].std() > 2 * had[(i <= 11) & (i % 4 == 0)].std()


# ----------------------------------------------------------------------------------------------
# Spectrum (the real course files: median E_ν ~16 GeV, highest ~80 GeV, median E_lepton ~3.8 GeV)
def test_energy_spectrum(default_events: tuple[np.ndarray, dict[str, np.ndarray]]) -> None:
    _, f = default_events
    i = f["interaction"].astype(np.int64)
    e, lep = f["nuenergy"].astype(np.float64), f["lepenergy"].astype(np.float64)
    # The medians sit in the sparse valley between the π- and K-decay parts of the spectrum (~5 % of events at
    # 10-20 GeV), so they move by ~1 GeV between samples of a few thousand events; the analysts' half/half
    # splits (at 16 GeV and at 3.8 GeV) are the stable statement, checked on the first 4,000 events.
    few = slice(0, 4_000)
    assert 0.45 <= (e[few] <= 16.0).mean() <= 0.55
    assert 0.45 <= (lep[few] <= 3.8).mean() <= 0.55
    assert 70.0 <= e[few].max() <= 80.0
    assert 14.0 <= np.median(e) <= 18.0
    assert 3.3 <= np.median(lep) <= 4.3  # the goal band (the real files: 3.8 GeV)
    numu = i <= 3
    mode_e = [np.median(e[numu & (i % 4 == m)]) for m in range(4)]
    assert mode_e[2] > 5 * max(mode_e[0], mode_e[1], mode_e[3])  # σ_DIS ∝ E, σ_QE/RES/MEC flat: DIS is harder
    # ... but σ_DIS rises from its W > 1.7 GeV threshold through the RES/DIS transition at a few GeV (Formaggio &
    # Zeller's shape): some DIS events sit in the π-decay peak (12 % below 5 GeV on 200,000 generated events)
    assert 0.07 < (e[numu & (i % 4 == 2)] < 5.0).mean() < 0.2
    assert np.allclose(sim.cross_section(np.array([0, 1, 2]), np.array([20.0, 20.0, 3.0])), [0.45, 0.55, 1.03],
                       atol=0.02)
    assert 1.5 < mode_e[0] < 4.0  # QE events sit in the π-decay peak
    y = 1.0 - lep / e
    dis, qe = numu & (i % 4 == 2), numu & (i % 4 == 0)
    assert 0.45 < y[dis].mean() < 0.56  # DIS: y nearly flat
    # QE: y = Q²/(2 M E) with Q² bounded by the form factor, so y falls as 1/E
    assert y[qe & (e < 2.0)].mean() > 3 * y[qe & (e > 5.0)].mean()


# ----------------------------------------------------------------------------------------------
# Physics: learnable, not trivial
def test_track_length_follows_muon_energy() -> None:
    # the muon's rendered length is its range (E - m_μ) / (dE/dx) ...
    rng = np.random.default_rng(0)
    e_mu = np.array([0.2, 0.4, 0.8, 1.2])
    parts = sim._particles()
    parts.add(ev=np.arange(4), kind=sim.MUON, e=e_mu, dir=np.tile([0.0, 0.0, 1.0], (4, 1)), off=np.zeros((4, 3)))
    tracks = sim._to_deposits(rng, parts.get(), 4)[0].get()
    np.testing.assert_allclose(tracks["length"], (e_mu - sim.M_MU) / sim.MIP_GEV_PER_CM)
    # ... so in ν_μ CC QE events the track extent grows with the muon energy, until the 100-plane window crops it
    maps, f = sim.simulate_events(seed=21, n=3_000, mix=sim.Mix.parse("numu_cc=1,qe=1,res=0,dis=0,other_mode=0"))
    ext, lep = _extent(maps), f["lepenergy"]
    medians = [np.median(ext[(lep >= lo) & (lep < hi)]) for lo, hi in ((0.4, 0.8), (0.8, 1.1), (1.1, 1.5))]
    assert medians[0] < medians[1] < medians[2]
    assert medians[0] < 0.6 * medians[2]
    active = maps.astype(np.int64).sum(axis=(1, 3)) >= 20
    last = maps.shape[2] - 1 - np.argmax(active[:, ::-1], axis=1)
    # a >3 GeV muon (15 m range) leaves the window through its last plane, unless it leaves the detector through a
    # side wall first or the window reaches past the muon catcher: checked on vertices >= 90 cm from the walls
    # (near them, 5.5 % of these muons exit sideways) whose window ends in the detector
    inner = ((np.abs(f["vtxx"]) < 100.0) & (np.abs(f["vtxy"]) < 100.0)
             & (f["vtxz"] < (sim.ACTIVE_PLANES + sim.MC_PLANES - fmt.PLANES) * sim.PLANE_PITCH_CM))
    assert (last[(lep > 3.0) & inner] >= fmt.PLANES - 2).mean() > 0.95
    assert (ext[lep > 3.0] <= fmt.PLANES).all()


def test_visible_energy_grows_with_energy(default_events: tuple[np.ndarray, dict[str, np.ndarray]]) -> None:
    maps, f = default_events
    visible = maps.reshape(len(maps), -1).sum(axis=1, dtype=np.int64) * sim.GEV_PER_COUNT
    e = f["nuenergy"]
    edges = [0.3, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 80.0]
    means = [visible[(e >= lo) & (e < hi)].mean() for lo, hi in itertools.pairwise(edges)]
    assert (np.diff(means) > 0).all()
    low = (e > 1) & (e < 3)
    assert 0.3 < np.median(visible[low] / e[low]) < 1.0  # deposited < true (escaping muons, neutrons, ν)


def test_track_extent_separates_but_overlaps(numu_nc_events: tuple[np.ndarray, dict[str, np.ndarray]]) -> None:
    maps, f = numu_nc_events
    i = f["interaction"]
    ext = _extent(maps)
    numu, nc = ext[i <= 3], ext[i == fmt.NC]
    # separated: ν_μ CC events are longer on average (70 against 36 planes at 48ca96d; the factor was > 2 before the
    # detector's back and beam pile-up, issue 27, which make the classes overlap more, as the real files do)
    assert numu.mean() > 1.6 * nc.mean()
    median = np.median(numu)
    assert median > 50
    assert (nc >= median).mean() > 0.02  # NC with a muon-like pion track
    assert (numu < 15).mean() > 0.005  # short, low-energy muons


def _pion_showers(energy_gev: float, n: int = 2_000) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Tracks and clouds of n charged pions of this kinetic energy, along +z from the origin."""
    p = sim._particles()
    p.add(ev=np.arange(n), kind=sim.PI_CH, e=np.full(n, energy_gev), dir=np.tile([0.0, 0.0, 1.0], (n, 1)),
          off=np.zeros((n, 3)))
    tracks, clouds, _, _ = sim._to_deposits(np.random.default_rng(5), p.get(), n)
    return tracks.get(), clouds.get()


def test_hadronic_cascade() -> None:
    """A pion's inelastic interaction goes on as a cascade (issue 27): energetic pions leave several tracks
    (the leading hadrons) and dense π0 showers (EM clouds); soft ones stop or end in one cloud; energy is not
    created."""
    n = 2_000
    t10, c10 = _pion_showers(10.0, n)
    assert len(t10["ev"]) > 1.8 * n  # the primary track and leading hadrons
    assert (t10["length"] > 100).sum() > 0.6 * n  # track-like hadrons over 1 m: muon-like in NC events
    em = c10["core"] == sim.EM_CORE_CM
    assert em.any()
    visible = (np.sum(t10["length"] * t10["cpc"]) + c10["counts"].sum()) * sim.GEV_PER_COUNT / (10.0 * n)
    assert 0.5 < visible < 1.0  # invisible share in the hadronic clouds; π0s fully visible
    em_share = c10["counts"][em].sum() * sim.GEV_PER_COUNT / (10.0 * n)
    assert 0.1 < em_share < 0.5  # the EM fraction of a 10 GeV hadronic shower (Wigmans: ~0.3-0.4)
    t02, c02 = _pion_showers(0.2, n)
    assert not (c02["core"] == sim.EM_CORE_CM).any()  # below the cascade threshold: no π0 showers ...
    assert len(t02["ev"]) < 1.3 * n  # ... one track, a few go on after a quasi-elastic scattering or a decay


def test_pion_quasi_elastic_scattering_and_decay_in_flight() -> None:
    """A charged pion's track goes on after a quasi-elastic π–nucleus scattering (kinked, a nucleon's energy
    less), and a few pions decay in flight into a muon of 57-100 % of their energy (βγcτ: ~2 % at 1 GeV)."""
    n = 20_000
    rng = np.random.default_rng(3)
    tracks, clouds, sec = (sim._Table("ev", "off", "dir", "length", "cpc"),
                           sim._Table("ev", "off", "dir", "counts", "shape", "scale", "core", "halo", "halo_f"),
                           sim._particles())
    t = np.full(n, 1.0)
    sim._hadron_tracks(rng, tracks, clouds, sec, np.arange(n), sim.PI_CH, t, np.zeros((n, 3)),
                       np.tile([0.0, 0.0, 1.0], (n, 1)))
    tr, s = tracks.get(), sec.get()
    left = t - tr["length"][:n] * sim.MIP_GEV_PER_CM  # each pion's kinetic energy at its track's end
    mu = tr["ev"][n:]  # the decay muons (added after the n pion tracks), by their pion
    assert 0.01 < len(mu) / n < 0.03
    e_mu, e_pi = tr["length"][n:] * sim.MIP_GEV_PER_CM + sim.M_MU, left[mu] + sim.M_PI
    assert (e_mu > 0.57 * e_pi - 1e-6).all() and (e_mu < e_pi + 1e-6).all()
    # quasi-elastic survivors carry all but a knocked-out nucleon's 0.03-0.25 GeV (the inelastic cascade's leading
    # pions at most half): ~PION_QE_P of the pions that interact
    pi = s["kind"] == sim.PI_CH
    survivor = s["e"][pi] >= 0.5 * left[s["ev"][pi]] - 1e-9
    assert 0.25 < survivor.sum() / n < 0.4


def test_detector_walls_stop_deposits_and_noise() -> None:
    """Beyond the detector's side walls (issue 27) nothing deposits, in either view, and no pixel reads out."""
    shape = (1, 2, fmt.PLANES, fmt.CELLS)
    along_x = np.array([[1.0, 0.0, 0.0]])
    walls = np.array([[-100.0, 30.0, -100.0, 200.0]])  # the x wall at window cell 30
    idx, w = sim._track_deposits(shape, np.array([0]), np.array([50.5]), np.array([10.5]), np.array([40.5]), along_x,
                                 np.array([400.0]), np.array([5.0]), walls)
    images = np.zeros(shape, np.float32)
    sim._deposit(images, idx, w)
    cells = np.flatnonzero(images[0, 0].sum(axis=0))
    assert cells.min() == 10 and cells.max() == 29  # stops at the wall (without it: the window's edge, 79)
    assert np.flatnonzero(images[0, 1].sum(axis=0)).tolist() == [40]  # view 1 sees the same in-detector part
    assert images[0, 0].sum() == pytest.approx(images[0, 1].sum())
    origin = np.array([[0, sim.DET_CELLS - 50, 0]])  # window cell 50 of view 0 is the detector's first cell out
    flat = np.arange(2 * fmt.PLANES * fmt.CELLS).reshape(shape)[0, 0, 7, 45:55]
    assert sim._dead(flat, shape, origin)[5:].all()


def test_muon_catcher_at_the_back() -> None:
    """Behind the 192 active planes (issue 27): a hadron's track ends; a muon goes on through the muon catcher, one
    map plane per MC_PITCH_CM of z, a MIP's counts per plane, for as many planes as its energy crosses (72 MeV
    each) and at most the catcher's 22; nothing reads out behind it."""
    z_vtx = (sim.ACTIVE_PLANES - 30) * sim.PLANE_PITCH_CM  # the vertex 30 planes before the back
    left = 0.5  # GeV that muon 2 has left at the back: 0.5 / 0.072 -> 7 catcher planes
    t = {"ev": np.arange(3), "off": np.zeros((3, 3)), "dir": np.tile([0.0, 0.0, 1.0], (3, 1)),
         "length": np.array([5000.0, 5000.0, 30 * sim.PLANE_PITCH_CM + left / sim.MIP_GEV_PER_CM]),
         "cpc": np.full(3, sim.MIP_COUNTS_PER_CM), "mu": np.array([True, False, True])}
    out = sim._muon_catcher(t, np.full(3, z_vtx))
    shape = (3, 2, fmt.PLANES, fmt.CELLS)
    origin_p = sim.ACTIVE_PLANES - 30 - 10  # the vertex at the front of window plane 10
    walls = np.tile([-1000, 1000, -1000, 1000, -origin_p, sim.ACTIVE_PLANES + sim.MC_PLANES - origin_p], (3, 1))
    idx, w = sim._track_deposits(shape, out["ev"], 10.0 + out["off"][:, 2] / sim.PLANE_PITCH_CM,
                                 40.5 + out["off"][:, 0] / sim.CELL_PITCH_CM,
                                 40.5 + out["off"][:, 1] / sim.CELL_PITCH_CM,
                                 out["dir"], out["length"], out["cpc"], walls)
    images = np.zeros(shape, np.float32)
    sim._deposit(images, idx, w)
    planes = [np.flatnonzero(images[e, 0].sum(axis=1)) for e in range(3)]
    assert planes[0].min() == 10 and planes[0].max() == 10 + 30 + sim.MC_PLANES - 1  # through the catcher
    assert planes[1].max() == 10 + 30 - 1  # a hadron stops at the steel
    assert planes[2].max() == 10 + 30 + int(np.ceil(left / sim.MC_GEV_PER_PLANE)) - 1  # ranges out in the catcher
    per_plane = images[0, 0].sum(axis=1)
    np.testing.assert_allclose(per_plane[[20, 45]], 0.5 * sim.MIP_COUNTS_PER_CM * sim.PLANE_PITCH_CM, rtol=1e-3)
    # no channel before the detector's first plane or behind the catcher: no noise hit there either
    flat = np.arange(2 * fmt.PLANES * fmt.CELLS).reshape(shape[1:])[0, :, 40]
    dead = sim._dead(flat, shape, np.array([[origin_p, 0, 0]]))
    assert dead[sim.ACTIVE_PLANES + sim.MC_PLANES - origin_p:].all()
    assert sim._dead(flat, shape, np.array([[-5, 0, 0]]))[:5].all()


def test_beam_pileup_puts_forward_muons_in_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    """Beam pile-up (issue 27): with BEAM_OVERLAY_P = 1 every NC slice carries a forward muon of another
    interaction, half of them rock muons through the window's front, before the vertex (window planes >= 5)."""
    def before_vertex(p: float) -> float:
        monkeypatch.setattr(sim, "BEAM_OVERLAY_P", p)
        maps, _ = sim.simulate_events(seed=31, n=600, mix=sim.Mix.parse("nc=1"))
        return float((np.count_nonzero(maps[:, :, :4].sum(axis=(1, 3)) >= 20, axis=1) >= 3).mean())
    assert before_vertex(0.0) < 0.05
    assert before_vertex(1.0) > 0.3


def test_nue_showers_denser_than_numu() -> None:
    maps, f = sim.simulate_events(seed=13, n=6_000, mix=sim.Mix.parse("numu_cc=0.5,nue_cc=0.5"))
    i = f["interaction"]
    flat = maps.reshape(len(maps), -1)
    numu, nue = i <= 3, (i >= 4) & (i <= 7)
    max_pixel = flat.max(axis=1).astype(np.float64)
    assert max_pixel[nue].mean() > 1.1 * max_pixel[numu].mean()
    dense = (flat >= 40).sum(axis=1)
    assert dense[nue].mean() > 2 * dense[numu].mean()


def test_fibre_attenuation_along_the_cell() -> None:
    """View-0 cells run along y to the readout at y = +190 cm: light made far from it (low y, which view 1 shows at
    the same plane) is attenuated; the cell's middle is the reference (light 1)."""
    images = np.zeros((3, 2, fmt.PLANES, fmt.CELLS), np.float32)
    images[:, :, 10, 40] = 50.0
    origin = np.array([[0, 0, 0], [0, 0, 48 - 40], [0, 0, 0]])  # event 1: window shifted to the cell's middle
    origin[2, 2] = 97 - 40  # event 2: view-1 charge at detector y cell 97, next to the readout end
    light = sim._light_yield(images, origin, np.full((3, 2), 40.0, np.float32))
    y_cm = (np.array([40, 48, 97]) + 0.5) * sim.CELL_PITCH_CM - sim.DET_HALF_WIDTH_CM
    expected = np.exp(-((sim.DET_HALF_WIDTH_CM - y_cm) - sim.DET_HALF_WIDTH_CM) / sim.ATTENUATION_CM)
    np.testing.assert_allclose(light[:, 0, 10], expected, rtol=1e-5)
    assert light[0, 0, 10] < light[1, 0, 10] < 1.05 and light[2, 0, 10] > 1.2
    # a plane without charge in the other view uses the vertex's cell (the fallback)
    assert light[0, 0, 50] == pytest.approx(light[0, 0, 10])


def test_dead_channels_read_nothing() -> None:
    """A fixed map of dead (view, plane, cell) detector channels: the same pixels are empty in every event placed
    there, about DEAD_FRACTION of them; the rest read the deposit back (attenuation calibrated out)."""
    rng = np.random.default_rng(0)
    images = np.full((2, 2, fmt.PLANES, fmt.CELLS), 100.0, np.float32)
    origin = np.array([[0, 0, 0], [0, 0, 0]])
    maps = sim._readout(rng, images, origin, np.full((2, 2), 40.0, np.float32))
    dead = sim.DEAD_CHANNELS[:, :fmt.PLANES, :fmt.CELLS]
    assert (maps[:, dead] == 0).all() and (maps[:, ~dead] > 0).all()
    assert 0.5 * sim.DEAD_FRACTION < dead.mean() < 1.5 * sim.DEAD_FRACTION
    assert abs(float(maps[:, ~dead].mean()) - 100.0) < 2.0


@pytest.mark.slow  # a throughput figure: fails under load in the default suite; bench measures it
def test_speed() -> None:
    sim.simulate_events(seed=0, n=200)  # warm up
    start = time.perf_counter()
    sim.simulate_events(seed=1, n=4_000)
    rate = 4_000 / (time.perf_counter() - start)
    print(f"simulate_events: {rate:,.0f} events/s")
    assert rate > MIN_EVENTS_PER_S
