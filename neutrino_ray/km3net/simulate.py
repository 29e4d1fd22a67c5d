"""Fast, vectorised simulator of KM3NeT/ORCA per-event reconstruction features (track/shower classification).

This is a parametric simulation, not photon tracing: each event's true quantities (neutrino energy,
direction, vertex, interaction, Bjorken y) are turned into the outputs of the standard ORCA
reconstruction chain (JGandalf track fit + JEnergy, JShower fit, hit counts) by physically motivated
formulas plus noise. The columns are exactly ``neutrino_ray.km3net.features.SCHEMA``.

Physics model (our choices, calibrated to published ORCA behaviour; see ``tests/test_km3net_simulate.py``):

* Energies 1–100 GeV drawn from dN/dE ~ E^-1 (flat in log E, the usual generation spectrum); isotropic
  directions; vertices uniform in the instrumented cylinder (radius 100 m, height 150 m, centred at 0).
* Interactions: 50 % ν_μ CC (tracks), 25 % ν_e CC, 5 % ν_τ CC (only above the 3.5 GeV τ threshold;
  below it they become ν_τ NC), 20 % NC of any flavour; one third antineutrinos. Bjorken y ~ Beta with
  mean 0.45 (ν) and 0.31 (ν̄).
* The muon of a ν_μ CC event (or of a τ → μ decay) has range 4.2 m/GeV; the part inside the detector is
  the visible track. Light is measured as "shower-equivalent" energy: hadronic showers give a fraction
  F_h(E) of the light of an EM shower, the muon gives 0.24 GeV per metre inside the detector.
* What the detector makes of the muon: its first 5 m are lost in the hadronic shower and the 9 m vertical
  DOM spacing; the rest is smeared log-normally and every fit adds a Gamma-distributed artefact of a few
  metres (the "track length" of a shower). Both smearings shrink like 1/visible GeV: with few hits the
  fits are barely constrained. This "seen length" gives the reported track length, pulls the shower fit
  along the track (track–shower distance and time difference) and sets a latent track-ness
  ``tau = seen/(seen + 30 m) + noise``, which drives the Cherenkov-condition hit counts, the DOM count,
  β0/β1, the two likelihoods and the JEnergy χ² through binomial / multiplicative noise. Hit counts are
  Poisson in the visible light plus K40 background; energies are the visible light with a 25–40 %
  log-normal resolution; positions and directions are smeared with errors that shrink with energy.
* Result (gradient-boosted classifier, true-energy bins): accuracy ~0.67 at 2–5 GeV (a ~2 GeV muon is
  barely resolved; NC events are recognised by their low visible energy), ~0.90 above 15 GeV (high-y
  ν_μ CC and NC stay confusable), ~0.78 overall.

HDF5 layout (``write_h5`` / ``read_h5``)::

    /events                       group; attrs: format = "neutrino-ray km3net features v1", n_events (int)
    /events/<column>              one 1-D dataset per SCHEMA column, all of length n_events,
                                  int64 / float64 / bool as in SCHEMA, gzip-compressed

``simulate_events`` is pure (no I/O, no Ray) and deterministic for a given seed.
"""

from __future__ import annotations

from typing import Any

import h5py
import numpy as np
import pyarrow as pa

from neutrino_ray.errors import InputError
from neutrino_ray.km3net.features import SCHEMA

# ----------------------------------------------------------------------------------------------
# Physical constants
C_VACUUM = 0.299792458  # m/ns (the muon travels at ~c)
MUON_M_PER_GEV = 4.2  # m/GeV, minimum-ionising muon range in sea water (dE/dx ~ 0.24 GeV/m)
MUON_MASS = 0.10566  # GeV
TAU_THRESHOLD = 3.5  # GeV, ν_τ CC production threshold
# Hadronic/EM light ratio F_h(E) = 1 - (1 - f0) (E/E0)^-m (Gabriel et al. 1994; IceCube NIM A 2014)
HAD_E0, HAD_M, HAD_F0 = 0.399, 0.130, 0.467
# τ decay: branching ratios (μ, e, hadrons) and the mean fraction of the τ energy that is visible
TAU_BR = np.array([0.174, 0.178, 0.648])
TAU_VISIBLE_FRACTION = 0.45  # charged lepton / hadrons share of the τ energy (the rest: neutrinos)

# ----------------------------------------------------------------------------------------------
# Detector (ORCA-sized cylinder, centred at the origin)
DETECTOR_RADIUS = 100.0  # m
DETECTOR_HALF_HEIGHT = 75.0  # m

# ----------------------------------------------------------------------------------------------
# Generated flux and interactions (our choices)
E_MIN, E_MAX = 1.0, 100.0  # GeV
SPECTRAL_INDEX = 1.0  # dN/dE ~ E^-1: flat in log E
INTERACTIONS = ("numu_cc", "nue_cc", "nutau_cc", "nc")
INTERACTION_P = np.array([0.50, 0.25, 0.05, 0.20])  # tracks : showers = 50 : 50
ANTI_FRACTION = 1.0 / 3.0  # ν̄ share of events (σ_ν̄ ~ σ_ν / 2 for a ν:ν̄ flux ~ 1:1)
Y_BETA_NU = (1.0, 1.2)  # Beta(a, b) for Bjorken y, mean 0.45 (ν)
Y_BETA_NUBAR = (1.0, 2.2)  # mean 0.31 (ν̄, the (1-y)^2 suppression)

# ----------------------------------------------------------------------------------------------
# Detector response (calibrated: see the tests)
UNRESOLVED_LENGTH = 5.0  # m of muon hidden in the hadronic shower and the 9 m vertical DOM spacing
TRACK_SCALE = 30.0  # m, visible track length at which the track-ness s = L/(L + TRACK_SCALE) is 1/2
TAU_NOISE_0 = 0.03  # irreducible noise on the latent track-ness (geometry, fit ambiguities)
TAU_NOISE_1 = 1.6  # ... plus this / visible GeV (few hits: the fits are barely constrained)
FAINT_LIGHT = 1.0  # GeV, the visible light below which these 1 / GeV terms stop growing
HITS_PER_GEV = 9.0  # triggered signal hits per GeV of shower-equivalent light
HITS_BACKGROUND = 12.0  # mean K40 / dark hits that survive the trigger
HITS_GEOMETRY_SIGMA = 0.25  # log-normal spread of the light yield (vertex position, orientation)
CHER50_P = (0.30, 0.75)  # P(a signal hit is Cherenkov-compatible within 50 m) for tau = 0 and 1
CHER100_EXTRA_P = (0.25, 0.55)  # P(one of the remaining signal hits is compatible within 100 m)
CHER_BACKGROUND_P = (0.04, 0.08)  # P(a background hit is compatible within 50 m / 100 m)
DOM_P = (0.45, 0.70)  # DOMs per signal hit: showers concentrate light, tracks spread it
BETA0_SCALE = 0.8  # rad; beta0 ~ BETA0_SCALE / sqrt(n_cherenkov_100m + 1) * (2 - 1.5 tau)
BETA_SIGMA = 0.35  # log-normal spread of beta0
NPE_PER_HIT = 1.4  # photo-electrons per hit used in the track fit
LOGL_TRACK = (1.0, 1.6)  # track-fit log-likelihood per Cherenkov hit for tau = 0 and 1
LOGL_SHOWER = (2.0, 1.2)  # shower-fit log-likelihood per hit for tau = 0 and 1
LOGL_NOISE = 2.0  # × sqrt(hits)
CHI2_NDF = 12  # degrees of freedom of the JEnergy fit
CHI2_SHOWER_EXCESS = 1.0  # reduced chi2 excess of the track energy fit for a shower-like event
ENERGY_RES_0, ENERGY_RES_1 = 0.22, 0.25  # sigma(ln E_reco) = RES_0 + RES_1 / sqrt(visible GeV)
FAKE_LENGTH_SHAPE = 1.5  # fit artefact: the length a fit finds in a point-like shower, Gamma(shape, scale)
FAKE_LENGTH_SCALE_0, FAKE_LENGTH_SCALE_1 = 1.5, 8.0  # m, scale = 0 + 1 / GeV: few hits, loose fit
LENGTH_SIGMA_0, LENGTH_SIGMA_1 = 0.1, 1.2  # log-normal smearing of the seen muon length: 0 + 1 / GeV
TRACK_LENGTH_SIGMA = 0.15  # further log-normal resolution of the reported track length
POS_RES_0, POS_RES_1 = 1.5, 5.0  # m, sigma(position) = RES_0 + RES_1 / sqrt(visible GeV) per axis
TIME_RES = 3.0  # ns, vertex time resolution
ANGLE_KINEMATIC = 0.38  # rad / sqrt(E/GeV): ν-lepton scattering angle (direction of the visible light)
ANGLE_SHOWER_FIT = 0.45  # rad / sqrt(visible GeV): shower-fit direction error
MIN_LIGHT = 0.05  # GeV, floor of the visible light in resolution formulas (NC with tiny y)

CHUNK = 1 << 17  # events simulated at a time (bounds the temporary memory)
H5_FORMAT = "neutrino-ray km3net features v1"


# ----------------------------------------------------------------------------------------------
# Helpers
def _lerp(pair: tuple[float, float], t: np.ndarray) -> np.ndarray:
    """pair[0] at t = 0 to pair[1] at t = 1."""
    return pair[0] + (pair[1] - pair[0]) * t


def _isotropic(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 3) unit vectors uniform on the sphere."""
    cos_t = rng.uniform(-1.0, 1.0, n)
    phi = rng.uniform(0.0, 2 * np.pi, n)
    sin_t = np.sqrt(1.0 - cos_t**2)
    return np.column_stack([sin_t * np.cos(phi), sin_t * np.sin(phi), cos_t])


def _perturb(rng: np.random.Generator, d: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Unit vectors d turned by a Rayleigh(sigma) angle in a uniform azimuth around d."""
    helper = np.where(np.abs(d[:, 2:3]) < 0.9, np.array([0.0, 0.0, 1.0]), np.array([1.0, 0.0, 0.0]))
    u = np.cross(d, helper)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    v = np.cross(d, u)
    alpha = sigma * np.sqrt(-2.0 * np.log1p(-rng.random(len(d))))
    phi = rng.uniform(0.0, 2 * np.pi, len(d))
    out = (np.cos(alpha)[:, None] * d
           + np.sin(alpha)[:, None] * (np.cos(phi)[:, None] * u + np.sin(phi)[:, None] * v))
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def _exit_distance(pos: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Distance from points inside the detector cylinder to its surface along unit directions d."""
    a = d[:, 0] ** 2 + d[:, 1] ** 2
    b = pos[:, 0] * d[:, 0] + pos[:, 1] * d[:, 1]
    c = pos[:, 0] ** 2 + pos[:, 1] ** 2 - DETECTOR_RADIUS**2  # <= 0 inside
    with np.errstate(divide="ignore", invalid="ignore"):
        t_side = np.where(a > 1e-12, (-b + np.sqrt(np.maximum(b * b - a * c, 0.0))) / a, np.inf)
        t_cap = np.where(d[:, 2] > 1e-12, (DETECTOR_HALF_HEIGHT - pos[:, 2]) / d[:, 2],
                         np.where(d[:, 2] < -1e-12, (-DETECTOR_HALF_HEIGHT - pos[:, 2]) / d[:, 2], np.inf))
    return np.maximum(np.minimum(t_side, t_cap), 0.0)


def _hadronic_light(e_had: np.ndarray) -> np.ndarray:
    """Shower-equivalent light (GeV) of a hadronic shower of energy e_had."""
    f = 1.0 - (1.0 - HAD_F0) * (np.maximum(e_had, HAD_E0) / HAD_E0) ** -HAD_M
    return f * e_had


# ----------------------------------------------------------------------------------------------
# Simulation
def _truth(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """True energy, direction, vertex, interaction and y, and the visible components of each event."""
    u = rng.random(n)
    if SPECTRAL_INDEX == 1.0:
        energy = E_MIN * (E_MAX / E_MIN) ** u
    else:
        g = 1.0 - SPECTRAL_INDEX
        energy = (E_MIN**g + u * (E_MAX**g - E_MIN**g)) ** (1.0 / g)
    direction = _isotropic(rng, n)
    r = DETECTOR_RADIUS * np.sqrt(rng.random(n))
    phi = rng.uniform(0.0, 2 * np.pi, n)
    vertex = np.column_stack([r * np.cos(phi), r * np.sin(phi),
                              rng.uniform(-DETECTOR_HALF_HEIGHT, DETECTOR_HALF_HEIGHT, n)])

    kind = rng.choice(len(INTERACTIONS), size=n, p=INTERACTION_P)
    numu_cc, nue_cc, nutau_cc, nc = (kind == k for k in range(len(INTERACTIONS)))
    nutau_cc &= energy > TAU_THRESHOLD
    nc |= (kind == 2) & ~nutau_cc  # ν_τ below threshold: NC only
    nc_flavour = np.array([12, 14, 16])[rng.integers(0, 3, n)]
    flavour = np.select([numu_cc, nue_cc, kind == 2], [14, 12, 16], nc_flavour)
    anti = rng.random(n) < ANTI_FRACTION
    pdgid = np.where(anti, -flavour, flavour).astype(np.int64)
    y = np.where(anti, rng.beta(*Y_BETA_NUBAR, n), rng.beta(*Y_BETA_NU, n))
    y = np.clip(y, 1e-4, 1.0 - 1e-4)

    e_had = y * energy
    e_lepton = np.where(nc, 0.0, (1.0 - y) * energy)
    tau_decay = rng.choice(3, size=n, p=TAU_BR)
    e_tau_vis = TAU_VISIBLE_FRACTION * e_lepton
    e_mu = np.where(numu_cc, e_lepton, np.where(nutau_cc & (tau_decay == 0), e_tau_vis, 0.0))
    e_em = np.where(nue_cc, e_lepton, np.where(nutau_cc & (tau_decay == 1), e_tau_vis, 0.0))
    e_had = e_had + np.where(nutau_cc & (tau_decay == 2), e_tau_vis, 0.0)

    mu_length = np.maximum(e_mu - MUON_MASS, 0.0) * MUON_M_PER_GEV
    visible_length = np.minimum(mu_length, _exit_distance(vertex, direction))
    light = _hadronic_light(e_had) + e_em + visible_length / MUON_M_PER_GEV
    return {"energy": energy, "direction": direction, "vertex": vertex, "pdgid": pdgid,
            "is_cc": ~nc, "bjorkeny": y, "length": visible_length, "light": light}


def _reconstruct(rng: np.random.Generator, t: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Reconstruction features from the true quantities (see the module docstring)."""
    n = len(t["energy"])
    length, light = t["length"], np.maximum(t["light"], MIN_LIGHT)
    inv_sqrt_light = 1.0 / np.sqrt(light)
    inv_light = 1.0 / np.maximum(light, FAINT_LIGHT)

    # what the detector makes of the track: the resolved muon length smeared (hit statistics, geometry) plus
    # the few metres that any fit finds in a shower; the track-ness tau that drives the fit quality follows it
    resolved = np.maximum(length - UNRESOLVED_LENGTH, 0.0)
    seen_length = (resolved * rng.lognormal(0.0, LENGTH_SIGMA_0 + LENGTH_SIGMA_1 * inv_light)
                   + rng.gamma(FAKE_LENGTH_SHAPE, FAKE_LENGTH_SCALE_0 + FAKE_LENGTH_SCALE_1 * inv_light))
    s = seen_length / (seen_length + TRACK_SCALE)
    tau = np.clip(s + (TAU_NOISE_0 + TAU_NOISE_1 * inv_light) * rng.standard_normal(n), 0.0, 1.0)

    # hit counts
    n_signal = rng.poisson(HITS_PER_GEV * t["light"] * rng.lognormal(0.0, HITS_GEOMETRY_SIGMA, n))
    n_background = rng.poisson(HITS_BACKGROUND, n)
    n_hits = n_signal + n_background
    n_doms = rng.binomial(n_signal, _lerp(DOM_P, tau)) + n_background
    cher50_signal = rng.binomial(n_signal, _lerp(CHER50_P, tau))
    cher50_bg = rng.binomial(n_background, CHER_BACKGROUND_P[0])
    n_cher50 = cher50_signal + cher50_bg
    n_cher100 = (n_cher50 + rng.binomial(n_signal - cher50_signal, _lerp(CHER100_EXTRA_P, tau))
                 + rng.binomial(n_background - cher50_bg, CHER_BACKGROUND_P[1] - CHER_BACKGROUND_P[0]))

    # track fit (JGandalf + JEnergy)
    beta0 = np.minimum(BETA0_SCALE / np.sqrt(n_cher100 + 1.0) * (2.0 - 1.5 * tau)
                       * rng.lognormal(0.0, BETA_SIGMA, n), np.pi)
    beta1 = beta0 * rng.beta(4.0, 2.0, n)
    npe = n_cher100 * NPE_PER_HIT * rng.lognormal(0.0, 0.15, n)
    logl_track = n_cher100 * _lerp(LOGL_TRACK, tau) + LOGL_NOISE * np.sqrt(n_cher100 + 1.0) * rng.standard_normal(n)
    chi2 = (1.0 + CHI2_SHOWER_EXCESS * (1.0 - tau)) * rng.chisquare(CHI2_NDF, n) / CHI2_NDF
    track_length = seen_length * rng.lognormal(0.0, TRACK_LENGTH_SIGMA, n)
    energy_sigma = ENERGY_RES_0 + ENERGY_RES_1 * inv_sqrt_light
    track_energy = light * rng.lognormal(0.0, energy_sigma)

    # shower fit (JShower)
    logl_shower = n_hits * _lerp(LOGL_SHOWER, tau) + LOGL_NOISE * np.sqrt(n_hits + 1.0) * rng.standard_normal(n)
    shower_energy = light * rng.lognormal(0.0, energy_sigma)

    # geometry: the track fit starts at the vertex; the shower fit is pulled along the track towards
    # the light centroid (half the visible track, weighted by the muon's share of the light)
    d, vertex = t["direction"], t["vertex"]
    sigma_kin = ANGLE_KINEMATIC / np.sqrt(t["energy"])
    track_dir = _perturb(rng, d, np.hypot(sigma_kin, beta0))
    shower_dir = _perturb(rng, d, np.hypot(sigma_kin, ANGLE_SHOWER_FIT * inv_sqrt_light))
    pos_sigma = (POS_RES_0 + POS_RES_1 * inv_sqrt_light)[:, None]
    muon_share = np.minimum(seen_length / MUON_M_PER_GEV / light, 1.0)
    offset = 0.5 * seen_length * muon_share
    track_pos = vertex + pos_sigma * rng.standard_normal((n, 3))
    shower_pos = vertex + offset[:, None] * d + pos_sigma * rng.standard_normal((n, 3))
    delta = shower_pos - track_pos
    distance = np.linalg.norm(delta, axis=1)
    dt = np.einsum("ij,ij->i", delta, track_dir) / C_VACUUM + TIME_RES * rng.standard_normal(n)

    return {
        "n_hits": n_hits, "n_doms": n_doms, "n_hits_cherenkov_50m": n_cher50, "n_hits_cherenkov_100m": n_cher100,
        "gandalf_beta0": beta0, "gandalf_beta1": beta1, "gandalf_energy_chi2": chi2, "gandalf_npe": npe,
        "gandalf_likelihood": logl_track, "track_length": track_length, "track_energy": track_energy,
        "shower_likelihood": logl_shower, "shower_energy": shower_energy,
        **{f"track_pos_{a}": track_pos[:, i] for i, a in enumerate("xyz")},
        **{f"track_dir_{a}": track_dir[:, i] for i, a in enumerate("xyz")},
        **{f"shower_pos_{a}": shower_pos[:, i] for i, a in enumerate("xyz")},
        **{f"shower_dir_{a}": shower_dir[:, i] for i, a in enumerate("xyz")},
        "track_shower_distance": distance, "track_shower_dt": dt,
    }


def simulate_events(seed: int, n_events: int, first_event_id: int = 0) -> pa.Table:
    """``n_events`` simulated ORCA events as a table with exactly ``features.SCHEMA``; deterministic per seed."""
    if n_events < 0:
        raise InputError(f"n_events must be >= 0, got {n_events}")
    rng = np.random.default_rng(seed)
    parts: list[dict[str, np.ndarray]] = []
    for start in range(0, n_events, CHUNK):
        truth = _truth(rng, min(CHUNK, n_events - start))
        parts.append({**_reconstruct(rng, truth), **{k: truth[k] for k in ("pdgid", "is_cc", "bjorkeny", "energy")}})
    columns: dict[str, np.ndarray] = {"event_id": np.arange(first_event_id, first_event_id + n_events, dtype=np.int64)}
    for field in SCHEMA:
        if field.name != "event_id":
            values = [p[field.name] for p in parts]
            columns[field.name] = np.concatenate(values) if values else np.zeros(0)
    return pa.table({f.name: pa.array(columns[f.name].astype(f.type.to_pandas_dtype()), type=f.type)
                     for f in SCHEMA}, schema=SCHEMA)


# ----------------------------------------------------------------------------------------------
# HDF5 I/O
def write_h5(path_or_fileobj: Any, table: pa.Table) -> None:
    """Write the SCHEMA columns of ``table`` in the layout of the module docstring (extra columns are dropped)."""
    missing = [f.name for f in SCHEMA if f.name not in table.column_names]
    if missing:
        raise InputError(f"write_h5: table is missing columns {missing}")
    table = table.select(SCHEMA.names).cast(SCHEMA)
    with h5py.File(path_or_fileobj, "w") as f:
        group = f.create_group("events")
        group.attrs["format"] = H5_FORMAT
        group.attrs["n_events"] = len(table)
        for field in SCHEMA:
            values = table.column(field.name).to_numpy(zero_copy_only=False)
            group.create_dataset(field.name, data=values.astype(field.type.to_pandas_dtype()),
                                 compression="gzip", shuffle=True)


def read_h5(path_or_fileobj: Any, where: str) -> pa.Table:
    """Inverse of ``write_h5``; any unreadable or malformed file is an InputError naming ``where``."""
    try:
        with h5py.File(path_or_fileobj, "r") as f:
            group = f.get("events")
            if not isinstance(group, h5py.Group):
                raise InputError(f"{where}: no /events group (not a neutrino-ray km3net features file)")
            fmt = group.attrs.get("format")
            if fmt is not None and (fmt.decode() if isinstance(fmt, bytes) else str(fmt)) != H5_FORMAT:
                raise InputError(f"{where}: /events has format {fmt!r}, expected {H5_FORMAT!r}")
            missing = [c for c in SCHEMA.names if not isinstance(group.get(c), h5py.Dataset)]
            if missing:
                raise InputError(f"{where}: /events is missing columns {missing}")
            not_1d = {c: group[c].shape for c in SCHEMA.names if group[c].ndim != 1}
            if not_1d:
                raise InputError(f"{where}: /events columns must be 1-D, got shapes {not_1d}")
            lengths = {c: group[c].shape[0] for c in SCHEMA.names}
            if len(set(lengths.values())) > 1:
                common = max(set(lengths.values()), key=list(lengths.values()).count)
                odd = {c: n for c, n in lengths.items() if n != common}
                raise InputError(f"{where}: /events columns have different lengths: {common} for most, {odd}")
            n_attr = group.attrs.get("n_events")
            n = lengths[SCHEMA.names[0]]
            if n_attr is not None and int(n_attr) != n:
                raise InputError(f"{where}: /events has n_events = {int(n_attr)} but the columns hold {n} rows")
            columns = {c: group[c][()] for c in SCHEMA.names}
    except OSError as e:
        raise InputError(f"{where}: not a readable HDF5 file ({e})") from e
    try:
        return pa.table({f.name: pa.array(columns[f.name], type=f.type) for f in SCHEMA}, schema=SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as e:
        raise InputError(f"{where}: /events columns cannot be read as the canonical types: {e}") from e
