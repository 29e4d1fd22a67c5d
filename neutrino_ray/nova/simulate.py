"""Fast, vectorised simulator of NOvA-like dual-view pixel maps in the course HDF5 layout (:mod:`.format`).

A parametric event generator, not GEANT: each event's truth (flavour, interaction mode, energy,
inelasticity, vertex) is turned into particles, the particles into straight tracks and point clouds
of deposited energy, and those into two 100 × 80 images with readout noise. It is physics-inspired,
so that the course tasks (ν_μ CC, flavour, mode, energy, y) are learnable but not trivial.

Physics model (our choices, each with its reason; the targets are the real course files, ``neutrino{i}.h5``:
median E_ν ≈ 16 GeV (the analysts split the sample in halves there), highest E_ν ≈ 80 GeV, median lepton
energy ≈ 3.8 GeV, 87–88 % ν_μ CC, ≤ 2 % ν_e, no ν_τ, DIS over half and QE ~12 % of CC events):

* Event spectrum = one flux × cross sections. The flux φ(E) has two parts: the off-axis π-decay peak
  (log-normal, median 2 GeV, σ_ln 0.35: the NOvA narrow band) and, with :data:`FLUX_K_FRACTION` = 16 % of the
  flux, the K-decay component (Gamma(2.5, 13 GeV)): kaons are heavier, so their neutrinos are far less
  suppressed off axis and reach tens of GeV. The cross sections σ_k(E) (:func:`cross_section`) follow the
  ν_μ CC shapes of Formaggio & Zeller, Rev. Mod. Phys. 84 (2012) 1307, Fig. 9 (issue 27, replacing flat
  σ_QE/RES/MEC with a σ_DIS ∝ E part and a 15 % "low-W" knob): σ_QE and σ_RES rise to plateaus (0.45 and
  0.55 × 10^-38 cm² per nucleon), σ_DIS rises from the W > 1.7 GeV threshold through the RES/DIS transition
  (26 % of σ_tot at 2 GeV, 48 % at 3 GeV, 85 % at 10 GeV) to σ/E = 0.67 (the measured inclusive slope). Each
  mode's events follow φ(E) σ_k(E); the mode mix is the one asked for (:class:`Mix`, default the files': 88 %
  ν_μ CC, 1 % ν_e CC, 11 % NC; CC modes DIS 55 %, RES 28 %, QE 12 %, other 5 %), i.e. σ_k is scaled by a
  constant c_k per mode. One flux × these σ_k alone gives far more DIS and less RES than the files' mix (their
  generator's mode labels, or their selection: not known), so c_RES > 1 > c_DIS. Where DIS events sit in energy
  follows: E_ν from the one flux, the DIS share rising with E as σ_DIS/σ_tot. With the files' mix, QE/RES/MEC
  (45 % of CC; σ flat, so their events follow the flux) sit in the 2 GeV peak, and a median E_ν of 14–18 GeV
  with a median E_lepton of 3.3–4.3 GeV needs the K component's DIS events at tens of GeV: a scan of the flux
  found no flux in both bands that puts DIS much lower (the scan, the c_k and the resulting spectra: docs/nova.md,
  "Issue 27", fifth session). E_ν is cut to 0.5–80 GeV (the files' range).
  Before issue 27 (σ_DIS ∝ E only, y ~ Beta(1, 1.25), 18.5 % K flux) the E_lepton median was 4.4–4.7 GeV:
  the Beta shape had too few high-y DIS events (P(y > 0.9) 5.6 % against 9 % from the quark-parton
  dσ/dy below). Why two components: a
  single broad peak at 16 GeV gives median E_lepton ≈ 7–8 GeV with the y distributions below (DIS mean y
  ≈ 0.5); the files' 3.8 GeV needs about half the events at low energy. The cost: the median lies in
  the sparse valley between the two parts (only ~5 % of events have 10–20 GeV), so it moves by ±1 GeV
  from sample to sample of a few thousand events.
* Kinematics by kind (NC elastic, RES-like and DIS-like NC events like their CC kinds), not fixed
  y shapes: QE ν = Q²/2M and MEC (the CC "other" mode, 2p2h) ν = Q²/2M + 0.05–0.3 GeV, with Q² from the
  dipole axial form factor dσ/dQ² ∝ (1 + Q²/M_A²)^-4 (M_A = 1.0 GeV): Q² stays below ~1 GeV², so y =
  ν/E falls as 1/E and QE/MEC leptons carry nearly all the energy (mean y 0.10, MEC 0.17). RES: W from a
  Breit–Wigner Δ(1232) (1.08–1.6 GeV), M_A = 1.1 GeV, ν = (W² - M² + Q²)/2M (mean y 0.26). DIS: dσ/dy ∝ q +
  q̄ (1 - y)², q̄/q = 0.2 (:func:`_dis_y`: flat from the quarks, (1 - y)² from the antiquarks), x ~ Beta(0.9,
  2.4), Q² = 2MExy, W > 1.7 GeV (mean y ≈ 0.5). Draws outside the physical range (ν > E - m_lep, |cos θ| > 1) are
  redrawn. The lepton angle follows from Q² = 2E(E_l - p_l cos θ) - m_l²; the hadronic system recoils against it.
  ``lepenergy = (1 - y) nuenergy`` is the charged lepton (CC) or the outgoing, invisible neutrino (NC),
  so the course target ``lepenergy / nuenergy`` is 1 - y and the hadronic system carries
  ``(1 - lepenergy/nuenergy) · E``.
* Hadrons: QE a proton (or an invisible neutron); MEC two nucleons; RES a nucleon and a π± or π0;
  DIS a nucleon and 1 + Poisson(0.4 + 1.3 ln W²) pions (the ln W² growth of the measured ν p
  multiplicities, as in GENIE's AGKY model; up to ~6 at 40 GeV), 1/3 of them π0, plus a compact nuclear
  "blob". Charged pions and protons are straight tracks that either stop (range) or end after an
  exponential length, the inelastic interaction length in ~1 g/cm³ of CH2 + PVC (λ_π = 1.1 m, λ_p =
  0.8 m). The interaction starts a hadronic cascade (issue 27, :func:`_hadron_tracks`): a leading hadron
  (0.3 of the energy on average, charged 2/3 of the time) goes on as a new, kinked track, a third of the rest
  goes into π0 showers, the rest into a cloud whose depth grows with ln E; up to 3 interactions in a chain.
  A 10 GeV π± then leaves 2.1 tracks (0.8 of them over 1 m) and 39 % of its energy in EM showers (f_em, 32 %
  at 2 GeV, 40 % at 30 GeV; Wigmans' 1 - (E/1 GeV)^-0.18: 34 % at 10 GeV), visible 76 % (was one track, one
  cloud, 61 %); its deposits' 95 % depth 6.1 m (was 4.1; the PDG's t_max + 2.5 λ_att with λ = λ_π 1.1 m:
  5.0 m). Long pion tracks that mimic muons come out of the many energetic pions of NC DIS events and their
  leading hadrons, not from a stretched λ, and (issue 27, fifth session) from two processes of the pion itself:
  quasi-elastic π–nucleus scattering (:data:`PION_QE_P` = 35 % of its reactions: the pion knocks out one
  nucleon and goes on, kinked, so its track does not end at its first reaction; Ashery et al. 1981) and
  π → μ ν decay in flight (βγcτ, cτ = 7.8 m: ~2 % of 1 GeV pions decay before they interact, and the muon,
  57–100 % of the pion's energy, goes on without interacting: a real muon in an NC event);
  the π0 showers and crossing tracks of a DIS event's cascade hide
  its muon near the vertex. π0 → γγ, each photon converts after an exponential gap (9/7 X0) into
  an EM shower: NC π0 mimics ν_e CC. Hadronic showers carry 60 % of their energy visibly (neutrons,
  binding, quenching).
* Muons are minimum-ionising tracks (2 MeV/cm, range 5 m/GeV: a ~1.5 GeV muon crosses the window,
  a 0.3 GeV one spans ~15 planes). Electrons are EM showers (X0 = 38 cm, longitudinal Gamma profile
  with t_max = ln(E/E_c) - 0.5, core + halo lateral spread), denser per pixel than tracks.
* The window crops, as NOvA's CVN pixel map does: the map is a fixed 100 planes × 80 cells (6.6 m ×
  3.1 m) placed around the vertex (below), and whatever lies outside is dropped (tracks are clipped to
  the window's planes and cells, shower points outside it are lost). So every muon above ~1.5 GeV
  (most ν_μ CC events now: median E_lepton 4.5 GeV) leaves through the last plane or the side and looks the
  same in the map whatever its energy; a DIS shower of tens of GeV can reach past plane 100 as well.
  The detector's side walls (issue 27): the window is centred on the vertex, but the detector is only
  :data:`DET_CELLS` cells (3.8 m) wide, so for a vertex off the axis part of the window lies outside it; a
  track or shower point beyond a side wall (|x| or |y| > 190 cm) deposits nothing, in either view, and a
  pixel there has no channel (no noise hit). A muon at an angle then leaves through the wall after a short
  visible track, as in the real, partly contained slices (before, tracks went on through air to the
  window's edge). The front and back (issue 27, sixth session, :func:`_muon_catcher`): the Near Detector is
  :data:`ACTIVE_PLANES` = 192 fully active planes (12.7 m), then the muon catcher, 22 scintillator planes between
  10 cm steel plates, then nothing. Vertices lie up to 11.5 m deep, and the window reaches 80-95 planes past the
  vertex, so for ~35 % of events (vertex beyond ~6.5 m) the window's far end lies in the catcher or behind the
  detector: there hadronic and EM showers stop in the first steel plate (0.6 λ, 5.7 X0), a muon goes on plane by
  plane through the catcher (its planes 11.6 cm apart in z, 72 MeV lost in each: a compressed, then ending track),
  and no pixel reads out behind the catcher. Reason: a DIS event's muon is told from an NC event's shower by where
  it goes on alone past the shower's end; near the back the detector ends first, and a ν_μ CC muon is cut to the
  length of a pion track (before, every muon went on to the window's last plane). Not modelled: the catcher's
  shorter vertical planes. What stays hard: ν_μ CC events whose muon is short (low E_lepton, or leaving through a
  wall or the back) or hidden in the hadronic shower of a high-y DIS event, and NC DIS events with a long pion
  track or a long hadronic shower.
* ν_τ CC (E > 3.5 GeV): hadronic system plus the τ decay (μ, e or hadrons). ν-on-e: one forward
  electron shower. Cosmics: a steep, through-going muon entering through the top (``nuenergy`` 0,
  ``lepenergy`` the muon energy). "other": a few low-energy neutron-like blobs (``lepenergy`` 0).
* Slices: the files hold reconstructed slices, so an event with fewer than 10 hit pixels (an NC
  elastic event on a neutron, a soft recoil) is redrawn within its own class; the class mix stays exact.
* Readout: a 3-D deposit is shared equally by the two views (NOvA's planes alternate between x and
  y readout), so the image sum over both views × :data:`GEV_PER_COUNT` is the deposited energy in the
  window (below saturation). Each hit pixel fluctuates (Poisson-like photostatistics, 8 % calibration
  spread), ~4 noise hits per event are added, pixels below 3 counts are dropped, values are rounded
  and clipped to 0..255 (the 8-bit pixel saturates in shower cores). A muon crossing one plane gives ~16
  counts per view.
* Fibre attenuation and dead channels (issue 27, the detector effects the real maps carry; reason: the course
  CNN found our maps easier than the real ones, and on the real detector a track's hits are neither uniform
  nor gap-free). Each cell is read out at one end through its fibre; light made far from that end is
  attenuated (:data:`ATTENUATION_CM`), so it has fewer photoelectrons, larger relative fluctuations and is
  more often under the threshold, which acts on the light; the calibration then divides the attenuation out
  (NOvA's attenuation-corrected energies), so the mean pixel value is unchanged. Where along the cell the
  light was made is not in the cell's own view; it is taken from the other view at the same plane (its
  charge-weighted mean cell), as reconstruction matches the two views plane by plane. And a fixed 2 %
  (:data:`DEAD_FRACTION`) of the detector's channels are dead in every event (one seeded map in detector
  coordinates), leaving gaps in tracks and showers. Not done: a per-channel gain map beyond the 8 % spread.
* Pile-up (issue 27): :data:`OVERLAY_P` = 3 % of the neutrino slices carry a steep through-going muon (a rock
  muon or cosmic in the slice's time window) that is not theirs: an NC event can then show a long track, and
  the network cannot call every event with a long track ν_μ CC. And beam pile-up (issue 27, sixth session):
  :data:`BEAM_OVERLAY_P` = 8 % of the neutrino slices carry a forward-going muon of another interaction of the
  same spill that the slicer merged into them (the Near Detector sees several interactions and rock muons per
  10 µs spill; the estimate is at the constant): half rock muons through the window's front, half a muon that
  starts anywhere in the window. Mostly forward, unlike the steep overlays, so near an NC event's vertex it looks
  like that event's own muon.

Pixel mapping (detector coordinates in cm: x, y ∈ ±190, z from 0 at the front, beam along +z):
detector plane index ``z / PLANE_PITCH_CM``, detector cell indices ``(x + 190) / CELL_PITCH_CM`` and
``(y + 190) / CELL_PITCH_CM``. Each event's window starts at whole detector planes/cells chosen so that
the vertex lies in plane 5..20 (cosmics: 10..90) and cell ~40 ± 4 of both views (cosmics: top cell of
view 1). Pixel (view 0, p, c) covers detector plane P0 + p and x cell X0 + c; (view 1, p, c) plane
P0 + p and y cell Y0 + c. :func:`render_track` works in these continuous pixel coordinates: a point at
(x, y, z) cm has plane = z / PLANE_PITCH_CM - P0, cell_x = (x + 190) / CELL_PITCH_CM - X0, likewise y.

``simulate_events`` is pure (no I/O, no Ray) and deterministic for a given seed and arguments.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar

import numpy as np

from neutrino_ray.nova import format as fmt

# ----------------------------------------------------------------------------------------------
# Geometry and energy scale
PLANE_PITCH_CM = 6.6  # z extent of one image plane (NOvA plane pitch)
CELL_PITCH_CM = 3.9  # transverse extent of one cell (NOvA cell width)
DET_HALF_WIDTH_CM = 190.0  # active |x|, |y| (the Near Detector is ~3.8 m wide)
DET_CELLS = int(2 * DET_HALF_WIDTH_CM / CELL_PITCH_CM)  # cells per detector plane (97): the side walls
VERTEX_HALF_WIDTH_CM = 160.0  # generated vertices: |x|, |y| < 160 cm
VERTEX_Z_CM = (30.0, 1150.0)  # and 30 cm < z < 1150 cm
# The detector's front and back (issue 27, sixth session; NOvA Near Detector): ACTIVE_PLANES fully active planes
# (12.7 m) from z = 0, then the muon catcher: MC_PLANES scintillator planes, two after each 10 cm steel plate, so
# one of its planes spans MC_PITCH_CM of z and a muon crossing one loses MC_GEV_PER_PLANE (5 cm of steel at
# 11.7 MeV/cm, PDG's muon dE/dx in iron, plus the plane's 13 MeV); no detector before plane 0 or after the catcher.
ACTIVE_PLANES = 192
MC_PLANES = 22
MC_PITCH_CM = 11.6
MC_GEV_PER_PLANE = 0.072
VERTEX_PLANE = (5, 20)  # the vertex lies in window plane 5..20
VERTEX_CELL, VERTEX_CELL_JITTER = 40, 4.0  # ... and around cell 40 of both views
MIP_GEV_PER_CM = 0.002  # minimum-ionising dE/dx (range 5 m/GeV)
GEV_PER_COUNT = 4.0e-4  # deposited GeV per pixel count (both views summed)
MIP_COUNTS_PER_CM = MIP_GEV_PER_CM / GEV_PER_COUNT  # 5 counts/cm: ~16.5 per view per plane crossed
SAMPLES_PER_PIXEL = 4  # track sample points per pixel crossed (along the fastest-changing axis)
COUNTS_PER_POINT = 4.0  # counts carried by one sample point of a shower cloud
MAX_POINTS = 1200  # ... at most this many points per cloud (a big shower's points then carry more counts each)

# ----------------------------------------------------------------------------------------------
# Particles
M_N, M_MU, M_PI, M_PI0, M_E, M_TAU = 0.9383, 0.10566, 0.13957, 0.13498, 0.000511, 1.777  # GeV
X0_CM = 38.0  # radiation length (NOvA scintillator + PVC)
EM_CRITICAL_GEV = 0.08
CONVERSION_CM = 9.0 / 7.0 * X0_CM  # mean photon conversion length
EM_CORE_CM, EM_HALO_CM, EM_HALO_FRACTION = 2.0, 9.0, 0.2  # EM lateral profile (Molière radius ~10 cm)
# Mean length of a straight π± (p) track before it ends in a hadronic shower: the pion (proton) inelastic
# interaction length in NOvA's ~1 g/cm³ of CH2 + PVC (~110 (~80) g/cm² → 1.1 m; the proton's shorter
# range stops most protons first). Long muon-like pion tracks in NC events come from the many energetic pions
# of DIS events, not from a stretched λ.
PION_LAMBDA_CM = 110.0
PROTON_LAMBDA_CM = 80.0
PROTON_RANGE_A, PROTON_RANGE_P = 0.0022, 1.77  # range(cm) = A * T(MeV)^P (Bragg–Kleeman, water-like)
PROTON_QUENCH = 0.65  # Birks quenching of the dense proton ionisation
HADRON_VISIBLE = 0.6  # visible share of the energy of hadronic showers and nuclear blobs
# The hadronic cascade (issue 27, :func:`_hadron_tracks`): at each inelastic interaction with more than
# CASCADE_MIN_GEV left, a leading hadron takes z ~ U(LEADING_Z) of the energy (charged with probability 2/3, the
# isospin share; else charge exchange), a third of the rest goes into π0s, the rest into the interaction's cloud;
# up to CASCADE_GENERATIONS interactions per primary hadron (then the energy left goes into one cloud).
CASCADE_MIN_GEV = 0.3
LEADING_Z = (0.1, 0.5)
LEADING_CHARGED_P = 2.0 / 3.0
PI0_SHARE = 1.0 / 3.0
CASCADE_PT_GEV = 0.35  # typical transverse momentum of a produced hadron
CASCADE_GENERATIONS = 3
# Quasi-elastic π–nucleus scattering (:func:`_hadron_tracks`): of a charged pion's reactions in the detector's
# nuclei (the λ above is the reaction length), PION_QE_P are quasi-elastic: the pion knocks out one nucleon
# (kinetic energy ~ U(PION_QE_NUCLEON_GEV)) and goes on, turned by p_T ~ PION_QE_PT_GEV (the Fermi momentum):
# still a track, kinked. The share: π±–¹²C channels, Ashery et al., Phys. Rev. C 23 (1981) 2173 (quasi-elastic
# ≈ 40 % of the reaction cross section at 125–315 MeV) and the quasi-free peak that persists at GeV energies
# (GENIE's hA model keeps a π-survival channel of ~30 % there); our choice, 0.35.
PION_QE_P = 0.35
# π± → μ ν decay in flight (:func:`_hadron_tracks`): cτ = 7.80 m (PDG), so a pion of momentum p decays after an
# exponential length of mean (p / m_π) cτ (55 m at 1 GeV/c, 18 m at 0.3): ~2-5 % of pions decay before they
# interact, and the decay muon (57-100 % of the pion's energy) goes on without interacting: in an NC event, a
# real muon from the hadronic system, the classic background of ν_μ CC selections.
PION_CTAU_CM = 780.45
PION_QE_MIN_GEV = 0.15  # a slower pion is absorbed or ranges out in the knock-out instead
PION_QE_NUCLEON_GEV = (0.03, 0.25)
PION_QE_PT_GEV = 0.2
MIN_TRACK_CM = 10.0  # a track prong needs this length
MIN_SHOWER_GEV = 0.05  # a shower prong needs this energy
TAU_DECAY_P = (0.174, 0.178, 0.648)  # τ → μ, e, hadrons

# ----------------------------------------------------------------------------------------------
# Generator
# Event spectrum = flux × cross section (see the module docstring): the flux has an off-axis π-decay peak
# (log-normal) and a broad K-decay component (Gamma); the cross sections σ_k(E) below; each mode's events follow
# φ(E) σ_k(E), the mode mix is the one asked for (the files' mix: see the module docstring).
FLUX_PI_MEDIAN, FLUX_PI_SIGMA = 2.0, 0.35  # GeV, the π-decay peak
FLUX_K_SHAPE, FLUX_K_SCALE = 2.5, 13.0  # GeV, the K-decay component: Gamma(shape, scale), mean 32.5 GeV
FLUX_K_FRACTION = 0.16  # of the flux (not of the events: σ_DIS ∝ E makes the K component dominate DIS)
# ν_μ CC cross sections per nucleon of an isoscalar target, in 10^-38 cm², after the shapes of Formaggio & Zeller,
# Rev. Mod. Phys. 84 (2012) 1307, Fig. 9 (σ/E of QE, RES, DIS and their sum): σ_k(E) = SIGMA_PLATEAU[k]
# (1 - exp(-(E - E_th)/E_rise)) for QE, RES and MEC (flat above a few GeV: σ_QE ≈ 0.45, σ_RES ≈ 0.55; MEC ~ a
# quarter of QE, the 2p2h models' share); σ_DIS(E) = SIGMA_DIS_SLOPE E (1 - exp(-(E - 1.2 GeV)/2.5 GeV)): zero
# below the W > 1.7 GeV threshold (ν ≳ 1.1 GeV), 28 % of σ_tot at 2 GeV, half at 3 GeV (the RES/DIS transition
# at a few GeV), 85 % at 10 GeV, → σ/E = 0.67 (the measured inclusive σ_CC/E ≈ 0.68, PDG) at high E.
SIGMA_PLATEAU = {0: 0.45, 1: 0.55, 3: 0.12}  # QE, RES, MEC
SIGMA_THRESHOLD_GEV = {0: 0.0, 1: 0.28, 2: 1.2, 3: 0.0}  # by kind QE, RES, DIS, MEC
SIGMA_RISE_GEV = {0: 0.3, 1: 0.8, 2: 2.5, 3: 0.5}
SIGMA_DIS_SLOPE = 0.67
E_MIN, E_MAX = 0.5, 80.0
TAU_THRESHOLD = 3.5
OTHER_E = (0.1, 1.5)  # GeV, "other" (low-energy junk)
COSMIC_E = (1.0, 100.0)  # GeV, E^-2
QE, RES, DIS, MEC = 0, 1, 2, 3  # hadronic-system kinds (MEC = the CC "other" mode)
M_A_GEV = {QE: 1.0, RES: 1.1, MEC: 1.0}  # axial masses: dσ/dQ² ∝ (1 + Q²/M_A²)^-4 (dipole form factor squared)
M_DELTA, GAMMA_DELTA = 1.232, 0.117  # GeV, the Δ(1232) resonance (RES invariant mass W)
W_RES = (1.08, 1.6)  # GeV, the RES W range
W_DIS_MIN = 1.7  # GeV, DIS starts above the resonances
# DIS dσ/dy ∝ q + q̄ (1 - y)² (ν on an isoscalar target): flat from the quarks, (1 - y)² from the antiquarks,
# q̄/q ≈ 0.2 at NOvA's x (the sea). Mean y ≈ 0.47 and P(y > 0.9) ≈ 9 % (high-y DIS: a soft, short muon under
# a hard hadronic shower).
QBAR_OVER_Q = 0.2
X_DIS_BETA = (0.9, 2.4)  # DIS Bjorken x ~ Beta (valence-like)
MEC_EXTRA_NU = (0.05, 0.3)  # GeV, 2p2h: energy transfer beyond Q²/2M
NC_MODE_P = (0.2, 0.35, 0.45)  # NC elastic, RES-like, DIS-like
PI0_FRACTION_RES = (0.35, 0.45)  # π0 share of the RES pion: CC, NC
PROTON_FRACTION = {QE: 0.85, RES: 0.6, DIS: 0.5, MEC: 0.3}  # nucleon is a proton (else a neutron)
N_PI_A, N_PI_B, N_PI_MAX = 0.4, 1.3, 12.0  # DIS pions: 1 + Poisson(A + B ln W²) (AGKY-like ⟨n⟩ ≈ ln W² growth)

# ----------------------------------------------------------------------------------------------
# Readout
PHOTO_VARIANCE = 1.0  # variance of a pixel per count (Poisson-like photostatistics)
CALIB_SIGMA = 0.08  # relative pixel-to-pixel calibration spread
NOISE_HITS = 4.0  # mean noise pixels per event
NOISE_MEAN_COUNTS = 4.0  # exponential noise amplitude (counts)
THRESHOLD = 3.0  # pixels below this much light (counts at the cell's middle) read 0
# Fibre attenuation (issue 27): a cell's light travels along its wavelength-shifting fibre to the readout at
# one end (view-0 cells, which measure x, are read out at y = +190 cm; view-1 cells at x = +190 cm) and is
# attenuated on the way, exp(-d / ATTENUATION_CM) relative to the cell's middle (0.78-1.29 over a 3.8 m
# cell: far end / near end 0.60). Our assumption for the Near Detector's short cells; the calibration
# (NOvA's attenuation-corrected PECorr) restores the mean but not the photostatistics or the threshold.
ATTENUATION_CM = 750.0
# Dead channels (issue 27): a fixed share of the detector's (view, plane, cell) channels reads nothing, in
# every event (one map for the detector, seeded: DEAD_SEED), so a track crossing one has a gap.
DEAD_FRACTION = 0.02
DEAD_SEED = 27
DEAD_MAP_SHAPE = (2, 512, 128)  # (view, detector plane, detector cell), indices wrapped onto it
# Pile-up: a rock muon or cosmic crossing the window in the slice's time window (the slicer separates most in
# time, not all): this share of neutrino slices carries a steep through-going muon track that is not theirs.
OVERLAY_P = 0.03
# Beam pile-up (issue 27, sixth session): NOvA's Near Detector sees several neutrino interactions in the detector
# and more rock muons (from interactions in the rock upstream) in every 10 µs spill; the slicer clusters hits in
# space and time, and where another interaction's activity overlaps a slice in both it is merged into it (the
# files' truth is the slice's main interaction). Our estimate of the share of slices with such a forward-going
# muon inside their window: slices ~0.3 µs long among ~10-20 activities per spill overlap another in time for
# ~15 %, within the window's part of the detector for about half of those: BEAM_OVERLAY_P = 8 %; half are rock
# muons (through-going from the window's front, ROCK_SPREAD_RAD around the beam), half the muon of another
# interaction in the detector (starting anywhere in the window, E_μ ~ U(PILEUP_MUON_GEV), its hadrons outside
# the window or in another slice).
BEAM_OVERLAY_P = 0.08
ROCK_SPREAD_RAD = 0.2
PILEUP_MUON_GEV = (0.5, 5.0)
MIN_SLICE_HITS = 10  # an event needs this many hit pixels (both views) to be a slice in the files
MAX_REDRAWS = 50  # ... redrawn at most this often (then kept as it is)
CHUNK = 512  # events rendered at a time (bounds the temporary memory)

# Particle kinds of the internal particle table
MUON, ELECTRON, PI_CH, PROTON, PI0, NEUTRON, BLOB = range(7)
# Families, in Mix order
F_NUMU, F_NUE, F_NUTAU, F_NC, F_NU_ON_E, F_COSMIC, F_OTHER = range(7)


# ----------------------------------------------------------------------------------------------
# Mix
@dataclass(frozen=True)
class Mix:
    """Event-class fractions (normalised when used): interaction families, and modes of CC events."""

    numu_cc: float = 0.88
    nue_cc: float = 0.01
    nutau_cc: float = 0.0
    nc: float = 0.11
    nu_on_e: float = 0.0
    cosmic: float = 0.0
    other: float = 0.0
    qe: float = 0.12
    res: float = 0.28
    dis: float = 0.55
    other_mode: float = 0.05

    FAMILIES: ClassVar[tuple[str, ...]] = ("numu_cc", "nue_cc", "nutau_cc", "nc", "nu_on_e", "cosmic", "other")
    MODES: ClassVar[tuple[str, ...]] = ("qe", "res", "dis", "other_mode")

    def __post_init__(self) -> None:
        for k, v in asdict(self).items():
            if not np.isfinite(v) or v < 0:
                raise ValueError(f"mix: {k}={v} must be a finite fraction >= 0")
        if sum(getattr(self, k) for k in self.FAMILIES) <= 0:
            raise ValueError(f"mix: all family fractions are zero (families: {', '.join(self.FAMILIES)})")
        if sum(getattr(self, k) for k in self.MODES) <= 0:
            raise ValueError(f"mix: all CC mode fractions are zero (modes: {', '.join(self.MODES)})")

    @classmethod
    def parse(cls, text: str) -> Mix:
        """'numu_cc=0.5,nue_cc=0.25,nc=0.25': families not named are 0 if any is named; modes keep defaults."""
        values: dict[str, float] = {}
        for item in text.split(","):
            if not item.strip():
                continue
            key, sep, val = item.partition("=")
            key = key.strip().lower().replace("-", "_")
            if not sep:
                raise ValueError(f"mix: {item.strip()!r} is not key=value")
            if key not in cls.FAMILIES + cls.MODES:
                raise ValueError(f"mix: unknown key {key!r}; families: {', '.join(cls.FAMILIES)}; "
                                 f"CC modes: {', '.join(cls.MODES)}")
            if key in values:
                raise ValueError(f"mix: {key!r} given twice")
            try:
                values[key] = float(val)
            except ValueError:
                raise ValueError(f"mix: {key}={val.strip()!r} is not a number") from None
        kwargs = dict(values)
        if any(k in values for k in cls.FAMILIES):
            kwargs.update({k: values.get(k, 0.0) for k in cls.FAMILIES})
        return cls(**kwargs)

    def family_fractions(self) -> dict[str, float]:
        total = sum(getattr(self, k) for k in self.FAMILIES)
        return {k: getattr(self, k) / total for k in self.FAMILIES}

    def mode_fractions(self) -> dict[str, float]:
        total = sum(getattr(self, k) for k in self.MODES)
        return {k: getattr(self, k) / total for k in self.MODES}

    def __str__(self) -> str:
        """Parseable by :meth:`parse`: non-zero families, then all modes."""
        fam = [f"{k}={getattr(self, k):g}" for k in self.FAMILIES if getattr(self, k) > 0]
        return ",".join(fam + [f"{k}={getattr(self, k):g}" for k in self.MODES])


# ----------------------------------------------------------------------------------------------
# Rendering
def _deposit(images: np.ndarray, idx: np.ndarray, w: np.ndarray) -> None:
    """images.flat[idx] += w (repeated indices add up)."""
    if not images.flags.c_contiguous:
        raise ValueError("images must be C-contiguous")
    flat = images.reshape(-1)
    if len(idx) > flat.size // 16:
        flat += np.bincount(idx, w, minlength=flat.size).astype(flat.dtype, copy=False)
    elif len(idx):
        np.add.at(flat, idx, w.astype(flat.dtype, copy=False))


def _deposited(shape: tuple[int, ...], idx: np.ndarray, w: np.ndarray) -> np.ndarray:
    """New float32 images of ``shape`` holding the deposits: ``_deposit`` into zeros, without the zeros (with many
    points, the float64 sums cast straight to float32: no second image-sized buffer and pass)."""
    size = int(np.prod(shape))
    if len(idx) > size // 16:
        return np.bincount(idx, w, minlength=size).astype(np.float32).reshape(shape)
    images = np.zeros(shape, np.float32)
    _deposit(images, idx, w)
    return images


def _point_indices(shape: tuple[int, ...], event: np.ndarray, plane: np.ndarray, cell_x: np.ndarray,
                   cell_y: np.ndarray, w: np.ndarray, walls: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices into (N, 2, P, C) images and weights of points seen in view 0 (plane, x) and 1 (plane, y).

    ``walls`` (N, 4) or (N, 6): each event's detector side walls in its window's cell coordinates (x low, x high,
    y low, y high) and optionally its front and back in window planes (low, high); a point outside them is outside
    the detector and deposits nothing, in either view.

    Per point, the work is a few comparisons against its event's bounds: the window's planes and the walls folded
    into one (low, high) pair per event (``p >= 0 and p >= wall`` is ``p >= max(0, wall)``), each gathered from a
    one-row-per-event table as a 1-D array (a wide (points, 6) gather and its strided columns cost more than the
    rest of the function)."""
    n_events, _, n_planes, n_cells = shape
    dt = cell_x.dtype  # compared in the points' own precision (int64 walls would promote float32 to float64)
    if walls is None:
        in_p = (plane >= 0) & (plane < n_planes)
        ok0 = in_p & (cell_x >= 0) & (cell_x < n_cells)
        ok1 = in_p & (cell_y >= 0) & (cell_y < n_cells)
    else:
        wl = walls.astype(dt)
        p_lo = np.maximum(wl[:, 4], 0) if wl.shape[1] > 4 else np.zeros(len(wl), dt)
        p_hi = np.minimum(wl[:, 5], n_planes) if wl.shape[1] > 4 else np.full(len(wl), n_planes, dt)
        x_lo, x_hi, y_lo, y_hi = (np.ascontiguousarray(wl[:, j]) for j in range(4))
        inside = ((plane >= p_lo[event]) & (plane < p_hi[event]) & (cell_x >= x_lo[event]) & (cell_x < x_hi[event])
                  & (cell_y >= y_lo[event]) & (cell_y < y_hi[event]))
        ok0 = inside & (cell_x >= 0) & (cell_x < n_cells)
        ok1 = inside & (cell_y >= 0) & (cell_y < n_cells)
    # pixel = floor(coordinate): truncation, where it matters (coordinates >= 0); int32 where the images allow
    it = np.dtype(np.int32 if n_events * 2 * n_planes * n_cells < 2**31 else np.int64)
    base: np.ndarray = (event.astype(it) * np.asarray(2 * n_planes * n_cells, it)
                        + plane.astype(it) * np.asarray(n_cells, it))
    idx = np.concatenate([(base + cell_x.astype(it))[ok0],
                          (base + np.asarray(n_planes * n_cells, it) + cell_y.astype(it))[ok1]])
    return idx, np.concatenate([w[ok0], w[ok1]])


def _slab(p0: np.ndarray, rate: np.ndarray, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """Parameter interval [t0, t1] where p0 + t * rate lies in [0, hi] (empty: t0 > t1)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        a = (0.0 - p0) / rate
        b = (hi - p0) / rate
    still = rate == 0
    inside = (p0 >= 0) & (p0 <= hi)
    t0 = np.where(still, np.where(inside, -np.inf, np.inf), np.minimum(a, b))
    t1 = np.where(still, np.where(inside, np.inf, -np.inf), np.maximum(a, b))
    return t0, t1


def _track_deposits(shape: tuple[int, ...], event: np.ndarray, plane0: np.ndarray, cell0_x: np.ndarray,
                    cell0_y: np.ndarray, direction: np.ndarray, length_cm: np.ndarray,
                    counts_per_cm: np.ndarray, walls: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices and weights of straight tracks sampled at sub-pixel steps (the in-window part only; inside
    ``walls``, see :func:`_point_indices`)."""
    _, _, n_planes, n_cells = shape
    d = np.asarray(direction, np.float64).reshape(-1, 3)
    rx, ry, rz = d[:, 0] / CELL_PITCH_CM, d[:, 1] / CELL_PITCH_CM, d[:, 2] / PLANE_PITCH_CM  # pixels per cm
    p0, x0, y0 = (np.asarray(a, np.float64) for a in (plane0, cell0_x, cell0_y))
    tz0, tz1 = _slab(p0, rz, n_planes)
    tx0, tx1 = _slab(x0, rx, n_cells)
    ty0, ty1 = _slab(y0, ry, n_cells)
    t0 = np.maximum.reduce([np.zeros_like(p0), tz0, np.minimum(tx0, ty0)])
    t1 = np.minimum.reduce([np.asarray(length_cm, np.float64), tz1, np.maximum(tx1, ty1)])
    span = np.where(t1 > t0, t1 - t0, 0.0)
    fastest = np.maximum.reduce([np.abs(rx), np.abs(ry), np.abs(rz)])  # pixels per cm along the track
    n = np.ceil(span * fastest * SAMPLES_PER_PIXEL).astype(np.int64)
    step = np.divide(span, n, out=np.zeros_like(span), where=n > 0)
    track = np.repeat(np.arange(len(n)), n)
    k = np.arange(len(track)) - np.repeat(np.cumsum(n) - n, n)
    t = t0[track] + (k + 0.5) * step[track]
    w = (0.5 * np.asarray(counts_per_cm, np.float64) * step)[track]  # half of the deposit to each view
    return _point_indices(shape, np.asarray(event)[track], p0[track] + t * rz[track], x0[track] + t * rx[track],
                          y0[track] + t * ry[track], w, walls)


def render_track(images: np.ndarray, event: np.ndarray, plane0: np.ndarray, cell0_x: np.ndarray, cell0_y: np.ndarray,
                 direction: np.ndarray, length_cm: np.ndarray, counts_per_cm: np.ndarray) -> None:
    """Add straight tracks to float ``images`` (N, 2, P, C) in place, vectorised over tracks.

    Track i starts at pixel coordinates (plane0, cell0_x, cell0_y) (continuous; the pixel's lower edge is
    the integer), runs ``length_cm`` along the 3-D unit ``direction`` (dx, dy, dz) and deposits
    ``counts_per_cm`` counts per cm, half into view 0 (z → plane, x → cell) and half into view 1 (z → plane,
    y → cell) of ``images[event[i]]``. Deposits outside the window are dropped.
    """
    idx, w = _track_deposits(images.shape, np.asarray(event), plane0, cell0_x, cell0_y, direction, length_cm,
                             counts_per_cm)
    _deposit(images, idx, w)


def _orthonormal(d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two unit vectors perpendicular to the unit vectors d (k, 3) and to each other."""
    helper = np.where(np.abs(d[:, 2:3]) < 0.9, np.array([0.0, 0.0, 1.0]), np.array([1.0, 0.0, 0.0]))
    u = np.cross(d, helper)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    return u, np.cross(d, u)


def _turn(d: np.ndarray, angle: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """Unit vectors d turned by ``angle`` at azimuth ``phi`` around themselves."""
    u, v = _orthonormal(d)
    out = (np.cos(angle)[:, None] * d
           + np.sin(angle)[:, None] * (np.cos(phi)[:, None] * u + np.sin(phi)[:, None] * v))
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def _perturb(rng: np.random.Generator, d: np.ndarray, sigma: np.ndarray | float) -> np.ndarray:
    """Unit vectors d turned by a Rayleigh(sigma) angle in a uniform azimuth."""
    angle = np.broadcast_to(sigma, len(d)) * np.sqrt(-2.0 * np.log1p(-rng.random(len(d))))
    return _turn(d, angle, rng.uniform(0.0, 2 * np.pi, len(d)))


def _cloud_deposits(shape: tuple[int, ...], rng: np.random.Generator, event: np.ndarray, plane0: np.ndarray,
                    cell0_x: np.ndarray, cell0_y: np.ndarray, direction: np.ndarray, counts: np.ndarray,
                    depth_shape: np.ndarray, depth_scale_cm: np.ndarray, core_cm: np.ndarray, halo_cm: np.ndarray,
                    halo_fraction: np.ndarray, walls: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Showers as random point clouds: depth ~ Gamma(shape, scale) along the axis, Gaussian core + halo across."""
    k = np.clip(np.ceil(counts / COUNTS_PER_POINT), 3, MAX_POINTS).astype(np.int64)
    n = int(k.sum())
    f32 = np.float32  # per-point work in single precision (positions to ~1e-5 cm; the simulator's speed goal)

    def per_point(x: np.ndarray | float, dtype: type = f32) -> np.ndarray:
        """A per-cloud value for each of the cloud's points: np.repeat, a copy (faster than a gather by cloud)."""
        return np.repeat(np.asarray(x, dtype), k)

    depth = rng.standard_gamma(per_point(depth_shape), dtype=f32)
    depth *= per_point(depth_scale_cm)
    sigma = np.where(rng.random(n, dtype=f32) < per_point(halo_fraction), per_point(halo_cm), per_point(core_cm))
    a, b = rng.standard_normal((2, n), dtype=f32) * sigma
    u, v = _orthonormal(direction)
    scale = np.array([CELL_PITCH_CM, CELL_PITCH_CM, PLANE_PITCH_CM])  # cm → pixels, per axis (x, y, z)
    d_px, u_px, v_px = ((m / scale).astype(f32) for m in (direction, u, v))
    start = np.column_stack([cell0_x, cell0_y, plane0]).astype(f32)
    pos = []  # pixels, axis by axis (cell x, cell y, plane): start + depth d + a u + b v, in that order
    for i in range(3):
        p = depth * per_point(d_px[:, i])
        p += per_point(start[:, i])
        p += a * per_point(u_px[:, i])
        p += b * per_point(v_px[:, i])
        pos.append(p)
    w = np.repeat(0.5 * counts / k, k)
    return _point_indices(shape, np.repeat(event, k), pos[2], pos[0], pos[1], w, walls)


# ----------------------------------------------------------------------------------------------
# Particles → tracks and clouds
class _Table:
    """Growing columns of equal length, concatenated on demand."""

    def __init__(self, *names: str) -> None:
        self.cols: dict[str, list[np.ndarray]] = {k: [] for k in names}

    def add(self, **cols: np.ndarray | float) -> None:
        n = max(np.shape(v)[0] for v in cols.values() if np.ndim(v) > 0)
        for k, parts in self.cols.items():
            v = np.asarray(cols[k])
            parts.append(np.broadcast_to(v, (n, *v.shape[1:])) if v.ndim == 0 else v)

    def get(self) -> dict[str, np.ndarray]:
        out = {}
        for k, parts in self.cols.items():
            out[k] = np.concatenate(parts) if parts else np.zeros((0, 3) if k in ("dir", "off") else 0)
        return out


def _particles() -> _Table:
    return _Table("ev", "kind", "e", "dir", "off")


def _em_cloud(clouds: _Table, ev: np.ndarray, off: np.ndarray, d: np.ndarray, e: np.ndarray, c: float) -> None:
    t_max = np.maximum(np.log(np.maximum(e, 1e-3) / EM_CRITICAL_GEV) + c, 0.3)
    clouds.add(ev=ev, off=off, dir=d, counts=e / GEV_PER_COUNT, shape=0.5 * t_max + 1.0, scale=X0_CM / 0.5,
               core=EM_CORE_CM, halo=EM_HALO_CM, halo_f=EM_HALO_FRACTION)


def _had_cloud(clouds: _Table, ev: np.ndarray, off: np.ndarray, d: np.ndarray, e_visible: np.ndarray,
               compact: bool) -> None:
    if compact:  # nuclear fragments, neutron recoils
        mean = 8.0 + 8.0 * np.log1p(e_visible / 0.2)
        clouds.add(ev=ev, off=off, dir=d, counts=e_visible / GEV_PER_COUNT, shape=1.5, scale=mean / 1.5,
                   core=5.0, halo=15.0, halo_f=0.35)
    else:  # the shower of an interacting hadron
        mean = 20.0 + 20.0 * np.log1p(e_visible / 0.3)
        clouds.add(ev=ev, off=off, dir=d, counts=e_visible / GEV_PER_COUNT, shape=2.0, scale=mean / 2.0,
                   core=7.0, halo=22.0, halo_f=0.45)


def _pi0_showers(rng: np.random.Generator, clouds: _Table, ev: np.ndarray, off: np.ndarray, d: np.ndarray,
                 e: np.ndarray) -> np.ndarray:
    """π0s (total energy ``e``) → γγ, flat energy sharing, opening angle from the π0 mass, each photon an EM
    shower after an exponential conversion gap; returns the number of showers above MIN_SHOWER_GEV each."""
    big_e = np.maximum(e, M_PI0 * 1.0001)
    beta = np.sqrt(1.0 - (M_PI0 / big_e) ** 2)
    e1 = 0.5 * big_e * (1.0 + beta * rng.uniform(-1.0, 1.0, len(big_e)))
    e2 = big_e - e1
    opening = np.arccos(np.clip(1.0 - M_PI0**2 / (2.0 * np.maximum(e1 * e2, 1e-9)), -1.0, 1.0))
    phi = rng.uniform(0.0, 2 * np.pi, len(big_e))
    n_showers = np.zeros(len(e), np.int64)
    for eg, angle, az in ((e1, opening * e2 / big_e, phi), (e2, opening * e1 / big_e, phi + np.pi)):
        dg = _turn(d, angle, az)
        gap = rng.exponential(CONVERSION_CM, len(eg))
        _em_cloud(clouds, ev, off + gap[:, None] * dg, dg, eg, 0.5)
        n_showers += eg >= MIN_SHOWER_GEV
    return n_showers


def _hadron_tracks(rng: np.random.Generator, tracks: _Table, clouds: _Table, secondaries: _Table, ev: np.ndarray,
                   hadron: int, t: np.ndarray, off: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Charged pions or protons (``hadron``, kinetic energy ``t``) as straight tracks that stop (range) or end in
    an inelastic interaction after an exponential length (λ); returns whether each is a track prong.

    The interaction (the hadronic cascade, issue 27): with kinetic energy ``left`` > CASCADE_MIN_GEV left, it
    makes a leading particle carrying a share z ~ U(LEADING_Z) of ``left`` (the leading-particle effect of
    hadron–nucleus collisions: one fast hadron carries on a good part of the energy; our assumption, mean 0.3
    on carbon-like nuclei, where the hadron–proton figure is ~0.5; the range was chosen with the shower depths
    in the module docstring), charged with
    probability LEADING_CHARGED_P (a π± or p that goes on as a track of its own, kinked by p_T ≈
    CASCADE_PT_GEV; else charge exchange: a π0 for a pion, a neutron for a proton); a third (PI0_SHARE) of the
    rest in π0s (EM showers: the EM fraction of hadronic showers, which grows with energy as the cascade
    goes on, Wigmans, *Calorimetry*, ch. 2); the rest in the interaction's hadronic cloud (soft hadrons,
    nuclear break-up; HADRON_VISIBLE of it visible). Secondaries go into ``secondaries`` for the next
    generation (:func:`_to_deposits`). Why: without it a pion's whole remaining energy went into one compact
    cloud, while a real hadronic shower in NOvA's ~1 g/cm³ is a chain of interactions several λ long (PDG:
    95 % containment ≈ t_max + 2.5 λ (E/GeV)^0.13, ≈ 4.5 λ at 10 GeV) with track-like leading hadrons and
    dense π0 showers: the tracks mimic a muon in NC events, the showers hide one in DIS events (figures in
    the module docstring)."""
    if hadron == PI_CH:
        full = t / MIP_GEV_PER_CM
        lam = PION_LAMBDA_CM
    else:
        full = PROTON_RANGE_A * (1000.0 * t) ** PROTON_RANGE_P
        lam = PROTON_LAMBDA_CM
    length = np.minimum(full, rng.exponential(lam, len(t)))
    decays = np.zeros(len(t), bool)
    if hadron == PI_CH:  # π → μ ν in flight, before the pion interacts or stops: βγcτ
        decay_at = rng.exponential(PION_CTAU_CM * np.sqrt(t * (t + 2 * M_PI)) / M_PI)
        decays = decay_at < length
        length = np.where(decays, decay_at, length)
        left = t - length * MIP_GEV_PER_CM
        cpc = np.full(len(t), MIP_COUNTS_PER_CM)
    else:
        left = ((full - length) / PROTON_RANGE_A) ** (1.0 / PROTON_RANGE_P) / 1000.0
        cpc = PROTON_QUENCH * np.divide(t - left, length, out=np.zeros_like(t), where=length > 0) / GEV_PER_COUNT
    left = np.maximum(left, 0.0)
    tracks.add(ev=ev, off=off, dir=d, length=length, cpc=cpc, mu=False)
    end = off + length[:, None] * d
    if hadron == PI_CH:
        # the decay muon: E_μ = γ (E* + β p* cos θ*), cos θ* uniform (a spin-0 two-body decay); it goes on as a muon
        e_pi = np.maximum(left[decays], 0.0) + M_PI
        gamma, beta = e_pi / M_PI, np.sqrt(np.maximum(1.0 - (M_PI / e_pi) ** 2, 0.0))
        e_star = (M_PI**2 + M_MU**2) / (2 * M_PI)
        p_star = (M_PI**2 - M_MU**2) / (2 * M_PI)
        e_mu = gamma * (e_star + beta * p_star * rng.uniform(-1.0, 1.0, len(e_pi)))
        p_mu = np.sqrt(np.maximum(e_mu**2 - M_MU**2, 1e-6))
        tracks.add(ev=ev[decays], off=end[decays], dir=_perturb(rng, d[decays], np.clip(p_star / p_mu, 0.0, 1.0)),
                   length=np.maximum(e_mu - M_MU, 0.0) / MIP_GEV_PER_CM, cpc=MIP_COUNTS_PER_CM, mu=True)
        left = np.where(decays, 0.0, left)
        # quasi-elastic π–nucleus scattering: the pion survives, kinked, less a knocked-out nucleon
        qe = ~decays & (length < full) & (left > PION_QE_MIN_GEV) & (rng.random(len(t)) < PION_QE_P)
        t_n = np.minimum(rng.uniform(*PION_QE_NUCLEON_GEV, int(qe.sum())), 0.5 * left[qe])
        e_pi = left[qe] - t_n
        secondaries.add(ev=ev[qe], kind=PI_CH, e=e_pi, off=end[qe],
                        dir=_perturb(rng, d[qe], np.clip(PION_QE_PT_GEV / np.maximum(e_pi, 0.05), 0.02, 1.0)))
        proton = rng.random(len(t_n)) < 0.5
        secondaries.add(ev=ev[qe][proton], kind=PROTON, e=t_n[proton], off=end[qe][proton],
                        dir=_perturb(rng, d[qe][proton], 0.8))
        _had_cloud(clouds, ev[qe][~proton], end[qe][~proton], d[qe][~proton], HADRON_VISIBLE * 0.3 * t_n[~proton],
                   compact=True)
        left = np.where(qe, 0.0, left)
    cascade = left > CASCADE_MIN_GEV
    e_lead = np.where(cascade, rng.uniform(*LEADING_Z, len(t)) * left, 0.0)
    charged = cascade & (rng.random(len(t)) < LEADING_CHARGED_P)
    lead_dir = _perturb(rng, d, np.clip(CASCADE_PT_GEV / np.maximum(e_lead, 0.05), 0.02, 1.0))
    rest = left - e_lead
    e_pi0 = np.where(cascade, PI0_SHARE * rest, 0.0)
    if hadron == PI_CH:
        secondaries.add(ev=ev[charged], kind=PI_CH, e=np.maximum(e_lead[charged] - M_PI, 0.0), dir=lead_dir[charged],
                        off=end[charged])
        exchange = cascade & ~charged
        secondaries.add(ev=ev[exchange], kind=PI0, e=e_lead[exchange], dir=lead_dir[exchange], off=end[exchange])
        e_cloud = rest - e_pi0
    else:  # a leading neutron's energy goes into the cloud's
        secondaries.add(ev=ev[charged], kind=PROTON, e=e_lead[charged], dir=lead_dir[charged], off=end[charged])
        e_cloud = np.where(charged, rest, left) - e_pi0
    secondaries.add(ev=ev[cascade], kind=PI0, e=e_pi0[cascade], dir=_perturb(rng, d[cascade], 0.3), off=end[cascade])
    hit = e_cloud > 0.01
    _had_cloud(clouds, ev[hit], end[hit], d[hit], HADRON_VISIBLE * e_cloud[hit], compact=False)
    return length >= MIN_TRACK_CM


def _to_deposits(rng: np.random.Generator, p: dict[str, np.ndarray], n: int
                 ) -> tuple[_Table, _Table, np.ndarray, np.ndarray]:
    """Tracks and clouds (offsets in cm from the vertex) of the particles, and visible track / shower prongs."""
    tracks = _Table("ev", "off", "dir", "length", "cpc", "mu")  # mu: a muon (goes on through the muon catcher)
    clouds = _Table("ev", "off", "dir", "counts", "shape", "scale", "core", "halo", "halo_f")
    is_track = np.zeros(len(p["ev"]), bool)
    n_showers = np.zeros(len(p["ev"]), np.int64)
    kind, e = p["kind"], p["e"]

    m = kind == MUON
    length = np.maximum(e[m] - M_MU, 0.0) / MIP_GEV_PER_CM
    tracks.add(ev=p["ev"][m], off=p["off"][m], dir=p["dir"][m], length=length, cpc=MIP_COUNTS_PER_CM, mu=True)
    is_track[m] = length >= MIN_TRACK_CM

    sec = _particles()  # the cascade's secondaries (see _hadron_tracks): not prongs of the event's truth
    for hadron in (PI_CH, PROTON):  # tracks that stop or interact
        m = kind == hadron
        is_track[m] = _hadron_tracks(rng, tracks, clouds, sec, p["ev"][m], hadron, e[m], p["off"][m], p["dir"][m])
    for _ in range(CASCADE_GENERATIONS - 1):  # the secondaries' own interactions
        s, sec = sec.get(), _particles()
        for hadron in (PI_CH, PROTON):
            m = s["kind"] == hadron
            _hadron_tracks(rng, tracks, clouds, sec, s["ev"][m], hadron, s["e"][m], s["off"][m], s["dir"][m])
        _pi0_showers(rng, clouds, s["ev"][s["kind"] == PI0], s["off"][s["kind"] == PI0], s["dir"][s["kind"] == PI0],
                     s["e"][s["kind"] == PI0])
    s = sec.get()  # the last generation's: their energy goes into the hadronic cloud at their start
    h = s["kind"] != PI0
    _had_cloud(clouds, s["ev"][h], s["off"][h], s["dir"][h], HADRON_VISIBLE * s["e"][h], compact=False)
    _pi0_showers(rng, clouds, s["ev"][~h], s["off"][~h], s["dir"][~h], s["e"][~h])

    m = kind == ELECTRON
    _em_cloud(clouds, p["ev"][m], p["off"][m], p["dir"][m], e[m], -0.5)
    n_showers[m] = e[m] >= MIN_SHOWER_GEV

    m = kind == PI0
    n_showers[m] = _pi0_showers(rng, clouds, p["ev"][m], p["off"][m], p["dir"][m], e[m])

    m = kind == NEUTRON  # invisible, or one recoil-proton blob some way off
    hit = rng.random(int(m.sum())) < 0.6
    ev, d, t = p["ev"][m][hit], p["dir"][m][hit], e[m][hit]
    off = p["off"][m][hit] + rng.exponential(70.0, len(t))[:, None] * d
    _had_cloud(clouds, ev, off, d, HADRON_VISIBLE * t * rng.uniform(0.1, 0.5, len(t)), compact=True)

    m = kind == BLOB
    _had_cloud(clouds, p["ev"][m], p["off"][m], p["dir"][m], e[m], compact=True)

    n_tracks = np.bincount(p["ev"], is_track, minlength=n).astype(np.int64)
    return tracks, clouds, n_tracks, np.bincount(p["ev"], n_showers, minlength=n).astype(np.int64)


def _muon_catcher(t: dict[str, np.ndarray], vtx_z: np.ndarray) -> dict[str, np.ndarray]:
    """Tracks (``t``: offsets in cm from their event's vertex, at detector z ``vtx_z``) at the back of the fully
    active detector (:data:`ACTIVE_PLANES`): every track ends there (a hadron stops or showers in the first steel
    plate, 0.6 λ and 5.7 X0), and a muon goes on through the muon catcher for as many planes as its energy crosses
    (:data:`MC_GEV_PER_PLANE` each), at most :data:`MC_PLANES`. The map's planes are detector planes, so there a
    plane spans MC_PITCH_CM of z instead of PLANE_PITCH_CM: the catcher's part is a new track in coordinates whose
    z is compressed by PLANE_PITCH_CM / MC_PITCH_CM (the renderer stays linear), depositing a MIP's counts per
    plane crossed. A track that starts beyond the active detector (in the steel) is dropped."""
    z_end = ACTIVE_PLANES * PLANE_PITCH_CM
    z0 = vtx_z[t["ev"]] + t["off"][:, 2]
    d = t["dir"]
    with np.errstate(divide="ignore", invalid="ignore"):
        t_cross = np.where(d[:, 2] > 0, (z_end - z0) / d[:, 2], np.inf)
    t_cross = np.where(z0 > z_end, 0.0, t_cross)
    on = t["mu"].astype(bool) & (t["length"] > t_cross) & (z0 <= z_end)  # muons that reach the catcher
    e_left = (t["length"][on] - t_cross[on]) * MIP_GEV_PER_CM
    z_travel = np.minimum(e_left / MC_GEV_PER_PLANE, MC_PLANES) * MC_PITCH_CM
    k = PLANE_PITCH_CM / MC_PITCH_CM
    v = d[on] * np.array([1.0, 1.0, k])
    norm = np.linalg.norm(v, axis=1)
    out = dict(t, length=np.minimum(t["length"], t_cross))
    extra = {"ev": t["ev"][on], "off": t["off"][on] + t_cross[on, None] * d[on], "dir": v / norm[:, None],
             "length": z_travel / d[on, 2] * norm, "cpc": MIP_COUNTS_PER_CM * k / norm, "mu": t["mu"][on]}
    return {key: np.concatenate([out[key], extra[key]]) for key in out}


# ----------------------------------------------------------------------------------------------
# Event generation
def _flux_energies(rng: np.random.Generator, n: int, linear: bool) -> np.ndarray:
    """n draws from the flux φ(E) (``linear``: from φ(E) · E, the DIS event spectrum).

    φ = (1 - f) LogNormal(median, σ) + f Gamma(k, θ); times E the log-normal's median moves to median · e^σ²,
    the Gamma's shape to k + 1, and each part is weighted by its mean energy."""
    mu = np.log(FLUX_PI_MEDIAN) + (FLUX_PI_SIGMA**2 if linear else 0.0)
    k = FLUX_K_SHAPE + (1.0 if linear else 0.0)
    w_pi, w_k = 1.0 - FLUX_K_FRACTION, FLUX_K_FRACTION
    if linear:
        w_pi *= FLUX_PI_MEDIAN * np.exp(0.5 * FLUX_PI_SIGMA**2)
        w_k *= FLUX_K_SHAPE * FLUX_K_SCALE
    pi = rng.random(n) < w_pi / (w_pi + w_k)
    return np.where(pi, np.exp(mu + FLUX_PI_SIGMA * rng.standard_normal(n)), rng.gamma(k, FLUX_K_SCALE, n))


def _sigma_ceiling(kind: np.ndarray, e: np.ndarray) -> np.ndarray:
    """What σ_k(E) rises to: the plateau of QE, RES and MEC, the slope × E of DIS (:func:`cross_section`)."""
    return np.where(kind == DIS, SIGMA_DIS_SLOPE * e, np.select(
        [kind == QE, kind == RES], [SIGMA_PLATEAU[QE], SIGMA_PLATEAU[RES]], SIGMA_PLATEAU[MEC]))


def cross_section(kind: np.ndarray, e: np.ndarray) -> np.ndarray:
    """σ_k(E) per nucleon (10^-38 cm², ν_μ CC) of hadronic-system kinds ``kind`` at energies ``e`` (GeV): the
    Formaggio & Zeller shapes above (NC kinds use the CC shapes: only the shape matters here)."""
    kind, e = np.asarray(kind), np.asarray(e, np.float64)
    th = np.select([kind == k for k in range(4)], [SIGMA_THRESHOLD_GEV[k] for k in range(4)])
    rise = np.select([kind == k for k in range(4)], [SIGMA_RISE_GEV[k] for k in range(4)])
    return _sigma_ceiling(kind, e) * np.maximum(1.0 - np.exp(-(e - th) / rise), 0.0)


def _energies(rng: np.random.Generator, kind: np.ndarray, lo: float = E_MIN) -> np.ndarray:
    """Event energies (GeV) for hadronic-system kinds ``kind``: φ(E) σ_kind(E), E in [max(lo, E_MIN), E_MAX].

    Rejection sampling: candidates from φ (QE, RES, MEC: σ flat at high E) or φ · E (DIS), accepted with
    σ_kind(E) over its plateau (slope)."""
    e = np.zeros(len(kind))
    todo = np.arange(len(kind))
    lo = max(lo, E_MIN)
    while len(todo):
        k = kind[todo]
        dis = k == DIS
        cand = np.where(dis, _flux_energies(rng, len(todo), True), _flux_energies(rng, len(todo), False))
        ok = (cand >= lo) & (cand <= E_MAX) & (rng.random(len(todo)) * _sigma_ceiling(k, cand) < cross_section(k, cand))
        e[todo[ok]] = cand[ok]
        todo = todo[~ok]
    return e


def _dis_y(rng: np.random.Generator, n: int) -> np.ndarray:
    """n draws of DIS inelasticity from dσ/dy ∝ 1 + r (1 - y)², r = q̄/q: a mixture of a flat part (weight 1)
    and (1 - y)² (weight r/3), the latter by inversion y = 1 - u^(1/3)."""
    flat = rng.random(n) < 1.0 / (1.0 + QBAR_OVER_Q / 3.0)
    return np.where(flat, rng.random(n), 1.0 - rng.random(n) ** (1.0 / 3.0))


def _dipole_q2(rng: np.random.Generator, m_a: np.ndarray | float, n: int) -> np.ndarray:
    """Q² (GeV²) from dσ/dQ² ∝ (1 + Q²/M_A²)^-4: inverse CDF M_A² (u^(-1/3) - 1)."""
    return np.asarray(m_a) ** 2 * (rng.random(n) ** (-1.0 / 3.0) - 1.0)


def _kinematics(rng: np.random.Generator, kind: np.ndarray, energy: np.ndarray, m_lep: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """(y, Q²) per event. QE: ν = Q²/2M; MEC: ν = Q²/2M + a 2p2h excess; RES: ν = (W² - M² + Q²)/2M with W a
    Breit–Wigner Δ; DIS: y ~ Beta, x ~ Beta, W above the resonances, Q² = 2MExy. Draws outside the kinematic
    range (ν > E - m_lep, or a lepton angle beyond 180°) are redrawn (after 20 tries: clipped)."""
    n = len(energy)
    y, q2 = np.zeros(n), np.zeros(n)
    todo = np.arange(n)
    for attempt in range(21):
        k, e = kind[todo], energy[todo]
        t = len(todo)
        m_a = np.select([k == RES], [M_A_GEV[RES]], M_A_GEV[QE])
        q2_ff = _dipole_q2(rng, m_a, t)
        w = np.clip(M_DELTA + 0.5 * GAMMA_DELTA * np.tan(np.pi * (rng.random(t) - 0.5)), *W_RES)
        nu_res = (w**2 - M_N**2 + q2_ff) / (2 * M_N)
        x = rng.beta(*X_DIS_BETA, t)
        y_dis = _dis_y(rng, t)
        nu = np.select([k == QE, k == MEC, k == RES],
                       [q2_ff / (2 * M_N), q2_ff / (2 * M_N) + rng.uniform(*MEC_EXTRA_NU, t), nu_res], y_dis * e)
        qq = np.where(k == DIS, 2 * M_N * e * x * y_dis, q2_ff)
        e_l = e - nu
        w2_dis = M_N**2 + 2 * M_N * nu * (1 - x)
        p_l = np.sqrt(np.maximum(e_l**2 - m_lep[todo] ** 2, 0.0))
        cos_l = (2 * e * e_l - m_lep[todo] ** 2 - qq) / np.maximum(2 * e * p_l, 1e-12)
        ok = (e_l > m_lep[todo] + 0.02) & (cos_l >= -1.0) & ((k != DIS) | (w2_dis >= W_DIS_MIN**2))
        if attempt == 20:
            ok[:] = True
        y[todo[ok]], q2[todo[ok]] = nu[ok] / e[ok], qq[ok]
        todo = todo[~ok]
        if not len(todo):
            break
    y = np.clip(y, 1e-4, np.minimum(0.995, 1.0 - (m_lep + 0.02) / energy))
    return y, q2


def _hadron_spread(e: np.ndarray) -> np.ndarray:
    """Rayleigh angle (rad) of a hadron of energy e (GeV) around the hadronic-system direction."""
    return np.clip(0.1 + 0.3 / np.sqrt(np.maximum(e, 0.05)), 0.15, 1.2)


def _hadrons(rng: np.random.Generator, out: _Table, ev: np.ndarray, nu: np.ndarray, q2: np.ndarray,
             direction: np.ndarray, kind: np.ndarray, nc: np.ndarray) -> None:
    """The hadronic system (energy nu, GeV, along ``direction``) of events ev as particles."""
    zero = np.zeros((len(ev), 3))
    for mode in (QE, MEC):
        m = kind == mode
        n_nucleons = 1 if mode == QE else 2
        share = rng.uniform(0.2, 0.8, int(m.sum())) if mode == MEC else np.ones(int(m.sum()))
        t_all = nu[m] * rng.uniform(0.85, 1.0, int(m.sum()))
        out.add(ev=ev[m], kind=BLOB, e=HADRON_VISIBLE * (nu[m] - t_all), dir=direction[m], off=zero[m])
        for i in range(n_nucleons):
            t = t_all * (share if i == 0 else 1.0 - share)
            proton = rng.random(len(t)) < (PROTON_FRACTION[mode] if i else max(PROTON_FRACTION[mode], 0.85))
            out.add(ev=ev[m], kind=np.where(proton, PROTON, NEUTRON), e=t,
                    dir=_perturb(rng, direction[m], 0.15 if mode == QE else 0.5), off=zero[m])

    m = kind == RES
    k = int(m.sum())
    e_pi = np.minimum(np.maximum(nu[m] * rng.uniform(0.4, 0.8, k), M_PI + 0.02), nu[m])
    pi0 = rng.random(k) < np.where(nc[m], PI0_FRACTION_RES[1], PI0_FRACTION_RES[0])
    out.add(ev=ev[m], kind=np.where(pi0, PI0, PI_CH), e=np.where(pi0, e_pi, np.maximum(e_pi - M_PI, 0.0)),
            dir=_perturb(rng, direction[m], _hadron_spread(e_pi)), off=zero[m])
    t_n = np.maximum(nu[m] - e_pi, 0.0)
    proton = rng.random(k) < PROTON_FRACTION[RES]
    out.add(ev=ev[m], kind=np.where(proton, PROTON, NEUTRON), e=0.9 * t_n, dir=_perturb(rng, direction[m], 0.5),
            off=zero[m])
    out.add(ev=ev[m], kind=BLOB, e=HADRON_VISIBLE * 0.1 * t_n, dir=direction[m], off=zero[m])

    m = kind == DIS
    w2 = np.maximum(M_N**2 + 2 * M_N * nu[m] - q2[m], 1.2)
    n_mesons = 1 + rng.poisson(np.clip(N_PI_A + N_PI_B * np.log(w2), 0.2, N_PI_MAX))
    mev = np.repeat(np.flatnonzero(m), n_mesons)  # positions into ev of each meson
    s_meson = rng.gamma(0.5, size=len(mev))
    s_nucleon, s_blob = rng.gamma(0.4, size=int(m.sum())), rng.gamma(0.5, size=int(m.sum()))
    total = np.bincount(mev, s_meson, minlength=len(ev))[m] + s_nucleon + s_blob
    norm = np.zeros(len(ev))
    norm[m] = nu[m] / total
    e_m = s_meson * norm[mev]
    pi0 = rng.random(len(mev)) < 1.0 / 3.0
    real = e_m > np.where(pi0, M_PI0, M_PI)  # too soft for a pion: goes to the blob
    spread = _hadron_spread(e_m)
    out.add(ev=ev[mev][real], kind=np.where(pi0, PI0, PI_CH)[real], e=np.where(pi0, e_m, e_m - M_PI)[real],
            dir=_perturb(rng, direction[mev], spread)[real], off=zero[mev][real])
    soft = np.bincount(mev, np.where(real, 0.0, e_m), minlength=len(ev))[m]
    proton = rng.random(int(m.sum())) < PROTON_FRACTION[DIS]
    out.add(ev=ev[m], kind=np.where(proton, PROTON, NEUTRON), e=s_nucleon * norm[m],
            dir=_perturb(rng, direction[m], 0.6), off=zero[m])
    out.add(ev=ev[m], kind=BLOB, e=HADRON_VISIBLE * (s_blob * norm[m] + soft), dir=direction[m], off=zero[m])


def _parents(rng: np.random.Generator, family: np.ndarray, energy: np.ndarray) -> np.ndarray:
    """Neutrino parent codes: ν_μ mostly from π (211), K (321) growing with energy, a few μ (13);
    ν_e from μ (13), K (321) and K0L (130); cosmics 0."""
    u = rng.random(len(family))
    p_k = np.clip(0.06 + 0.02 * energy, 0.0, 0.6)
    numu = np.where(u < p_k, 321, np.where(u < p_k + 0.02, 13, 211))
    nue = np.where(u < 0.5, 13, np.where(u < 0.92, 321, 130))
    return np.select([family == F_NUE, family == F_COSMIC], [nue, 0], numu).astype(np.uint32)


def _classes(rng: np.random.Generator, n: int, mix: Mix) -> np.ndarray:
    """(3, n): each event's family, CC mode and NC mode."""
    return np.stack([rng.choice(7, size=n, p=np.array(list(mix.family_fractions().values()))),
                     rng.choice(4, size=n, p=np.array(list(mix.mode_fractions().values()))),
                     rng.choice(3, size=n, p=np.array(NC_MODE_P))])


def _chunk(rng: np.random.Generator, classes: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Events of the given classes (:func:`_classes`): (n, 2, 100, 80) uint8 images and the truth fields that
    depend on the physics."""
    family, cc_mode, nc_mode = classes
    n = int(classes.shape[1])
    is_cc = family <= F_NUTAU
    had_kind = np.where(family == F_NC, nc_mode, cc_mode)

    tau = family == F_NUTAU
    other = family == F_OTHER
    nu_on_e = family == F_NU_ON_E
    spectrum_kind = np.where(tau | nu_on_e, DIS, had_kind)  # ν-e elastic: σ ∝ E like DIS
    energy = np.zeros(n)
    energy[~tau] = _energies(rng, spectrum_kind[~tau])
    energy[tau] = _energies(rng, spectrum_kind[tau], TAU_THRESHOLD)
    energy[other] = rng.uniform(*OTHER_E, int(other.sum()))

    m_lep = np.select([family == F_NUMU, family == F_NUE, tau], [M_MU, M_E, M_TAU], 0.0)
    y, q2 = _kinematics(rng, had_kind, energy, m_lep)
    e_lep = (1.0 - y) * energy
    nu = y * energy
    beam = np.tile([0.0, 0.0, 1.0], (n, 1))
    p_lep = np.sqrt(np.maximum(e_lep**2 - m_lep**2, 0.0))
    cos_l = np.clip((2 * energy * e_lep - m_lep**2 - q2) / np.maximum(2 * energy * p_lep, 1e-12), -1.0, 1.0)
    lep_dir = _turn(beam, np.arccos(cos_l), rng.uniform(0.0, 2 * np.pi, n))
    p_had = energy[:, None] * beam - p_lep[:, None] * lep_dir
    had_dir = p_had / np.maximum(np.linalg.norm(p_had, axis=1, keepdims=True), 1e-9)

    parts = _particles()
    zero = np.zeros((n, 3))
    ids = np.arange(n)
    for fam, kind in ((F_NUMU, MUON), (F_NUE, ELECTRON)):
        s = family == fam
        parts.add(ev=ids[s], kind=kind, e=e_lep[s], dir=lep_dir[s], off=zero[s])
    hadronic = is_cc | (family == F_NC)
    _hadrons(rng, parts, ids[hadronic], nu[hadronic], q2[hadronic], had_dir[hadronic], had_kind[hadronic],
             family[hadronic] == F_NC)
    # τ decays: μ, e or hadrons (π± and maybe a π0); the neutrinos are invisible
    decay = rng.choice(3, size=n, p=np.array(TAU_DECAY_P))
    for channel, kind, lo, hi in ((0, MUON, 0.15, 0.7), (1, ELECTRON, 0.1, 0.7), (2, PI_CH, 0.2, 0.6)):
        s = tau & (decay == channel)
        e_d = e_lep[s] * rng.uniform(lo, hi, int(s.sum()))
        parts.add(ev=ids[s], kind=kind, e=np.maximum(e_d, M_MU + 0.01) if kind == MUON else e_d,
                  dir=_perturb(rng, lep_dir[s], 0.05), off=zero[s])
    tau_pi0 = tau & (decay == 2) & (rng.random(n) < 0.6)
    parts.add(ev=ids[tau_pi0], kind=PI0, e=e_lep[tau_pi0] * rng.uniform(0.1, 0.35, int(tau_pi0.sum())),
              dir=_perturb(rng, lep_dir[tau_pi0], 0.1), off=zero[tau_pi0])
    # ν-on-e: one very forward electron
    s = family == F_NU_ON_E
    y_e = rng.uniform(0.05, 1.0, int(s.sum()))
    e_e = y_e * energy[s]
    e_lep[s] = e_e
    parts.add(ev=ids[s], kind=ELECTRON, e=e_e, dir=_perturb(rng, beam[s], np.sqrt(2 * M_E * (1 - y_e) / e_e)),
              off=zero[s])
    # other: a few low-energy blobs around the vertex
    n_blobs = np.where(other, rng.integers(1, 4, n), 0)
    bev = np.repeat(ids, n_blobs)
    iso = rng.standard_normal((len(bev), 3))
    iso /= np.linalg.norm(iso, axis=1, keepdims=True)
    parts.add(ev=bev, kind=BLOB, e=rng.uniform(0.01, 0.15, len(bev)), dir=iso,
              off=iso * rng.uniform(0.0, 80.0, len(bev))[:, None])
    e_lep[other] = 0.0

    p = parts.get()
    tracks, clouds, n_tracks, n_showers = _to_deposits(rng, p, n)

    # cosmics: a steep through-going muon entering through the top of the window (cos² zenith)
    cosmic = family == F_COSMIC
    k = int(cosmic.sum())
    cos_z = rng.random(k) ** (1.0 / 3.0)
    sin_z, az = np.sqrt(1.0 - cos_z**2), rng.uniform(0.0, 2 * np.pi, k)
    cdir = np.column_stack([sin_z * np.cos(az), -cos_z, sin_z * np.sin(az)])
    tracks.add(ev=ids[cosmic], off=zero[cosmic], dir=cdir, length=5000.0, cpc=MIP_COUNTS_PER_CM, mu=True)
    n_tracks[cosmic] = 1
    e_mu = 1.0 / (1.0 / COSMIC_E[0] - rng.random(k) * (1.0 / COSMIC_E[0] - 1.0 / COSMIC_E[1]))  # E^-2
    e_lep[cosmic] = e_mu
    energy[cosmic] = 0.0

    # vertices and windows (see the module docstring)
    vtx = np.column_stack([rng.uniform(-VERTEX_HALF_WIDTH_CM, VERTEX_HALF_WIDTH_CM, (n, 2)),
                           rng.uniform(*VERTEX_Z_CM, n)])
    vtx[cosmic, 1] = DET_HALF_WIDTH_CM - rng.uniform(0.0, CELL_PITCH_CM, k)
    det_p = vtx[:, 2] / PLANE_PITCH_CM
    det_x, det_y = (vtx[:, :2] + DET_HALF_WIDTH_CM).T / CELL_PITCH_CM
    win_p = np.where(cosmic, rng.integers(10, 91, n), rng.integers(VERTEX_PLANE[0], VERTEX_PLANE[1] + 1, n))
    cell_jitter = np.rint(rng.normal(0.0, VERTEX_CELL_JITTER, (2, n))).astype(np.int64)
    win_x = VERTEX_CELL + cell_jitter[0]
    win_y = np.where(cosmic, fmt.CELLS - 1, VERTEX_CELL + cell_jitter[1])
    vp = det_p - (np.floor(det_p) - win_p)
    vx = det_x - (np.floor(det_x) - win_x)
    vy = det_y - (np.floor(det_y) - win_y)

    # pile-up overlays (OVERLAY_P): a steep muon entering through the top of the window anywhere along it
    ov = ~cosmic & (rng.random(n) < OVERLAY_P)
    k = int(ov.sum())
    cos_z = rng.random(k) ** (1.0 / 3.0)
    sin_z, az = np.sqrt(1.0 - cos_z**2), rng.uniform(0.0, 2 * np.pi, k)
    start = np.column_stack([(rng.uniform(0, fmt.CELLS, k) - vx[ov]) * CELL_PITCH_CM,
                             (fmt.CELLS - 1e-3 - vy[ov]) * CELL_PITCH_CM,
                             (rng.uniform(0, fmt.PLANES, k) - vp[ov]) * PLANE_PITCH_CM])
    tracks.add(ev=ids[ov], off=start, dir=np.column_stack([sin_z * np.cos(az), -cos_z, sin_z * np.sin(az)]),
               length=5000.0, cpc=MIP_COUNTS_PER_CM, mu=True)
    # beam pile-up (BEAM_OVERLAY_P): a rock muon through the window's front, or another interaction's muon in it
    ov = ~cosmic & (rng.random(n) < BEAM_OVERLAY_P)
    k = int(ov.sum())
    rock = rng.random(k) < 0.5
    start = np.column_stack([(rng.uniform(0, fmt.CELLS, k) - vx[ov]) * CELL_PITCH_CM,
                             (rng.uniform(0, fmt.CELLS, k) - vy[ov]) * CELL_PITCH_CM,
                             (np.where(rock, 0.0, rng.uniform(0, fmt.PLANES, k)) - vp[ov]) * PLANE_PITCH_CM])
    tracks.add(ev=ids[ov], off=start, dir=_perturb(rng, beam[ov], ROCK_SPREAD_RAD), cpc=MIP_COUNTS_PER_CM, mu=True,
               length=np.where(rock, 5000.0, rng.uniform(*PILEUP_MUON_GEV, k) / MIP_GEV_PER_CM))

    shape = (n, fmt.VIEWS, fmt.PLANES, fmt.CELLS)
    origin = np.column_stack([np.floor(det_p) - win_p, np.floor(det_x) - win_x, np.floor(det_y) - win_y]).astype(
        np.int64)
    walls = np.column_stack([-origin[:, 1], DET_CELLS - origin[:, 1], -origin[:, 2], DET_CELLS - origin[:, 2],
                             -origin[:, 0], ACTIVE_PLANES - origin[:, 0]])
    t = _muon_catcher(tracks.get(), vtx[:, 2])
    c = clouds.get()
    track_walls = walls.copy()
    track_walls[:, 5] += MC_PLANES
    ti, tw = _track_deposits(shape, t["ev"], vp[t["ev"]] + t["off"][:, 2] / PLANE_PITCH_CM,
                             vx[t["ev"]] + t["off"][:, 0] / CELL_PITCH_CM, vy[t["ev"]] + t["off"][:, 1] / CELL_PITCH_CM,
                             t["dir"], t["length"], t["cpc"], track_walls)
    ci, cw = _cloud_deposits(shape, rng, c["ev"], vp[c["ev"]] + c["off"][:, 2] / PLANE_PITCH_CM,
                             vx[c["ev"]] + c["off"][:, 0] / CELL_PITCH_CM, vy[c["ev"]] + c["off"][:, 1] / CELL_PITCH_CM,
                             c["dir"], c["counts"], c["shape"], c["scale"], c["core"], c["halo"], c["halo_f"], walls)
    images = _deposited(shape, np.concatenate([ti, ci]), np.concatenate([tw, cw]))
    maps = _readout(rng, images, origin, np.column_stack([vx, vy]).astype(np.float32))

    prongs = n_tracks + n_showers
    fs_family = np.select([family == F_NUMU, family == F_NUE, family == F_NC], [0, 1, 2], -1)
    finalstate = np.where(fs_family >= 0, fmt.finalstate_code(np.maximum(fs_family, 0), n_tracks, n_showers),
                          np.where(cosmic, fmt.FS_COSMIC, fmt.FS_OTHER))
    interaction = np.select(
        [family == F_NUMU, family == F_NUE, tau, family == F_NU_ON_E, family == F_NC, cosmic],
        [cc_mode, 4 + cc_mode, 8 + cc_mode, fmt.NU_ON_E, fmt.NC, fmt.COSMIC], fmt.OTHER)
    visible = p["kind"] != BLOB
    invisible_nu = np.select([family == F_NC, family == F_NU_ON_E, tau & (decay < 2), tau], [1, 1, 2, 1], 0)
    particles = (np.bincount(p["ev"][visible], minlength=n) + np.bincount(p["ev"][p["kind"] == PI0], minlength=n)
                 + invisible_nu + n_blobs + cosmic)  # a π0 counts as its two photons
    return maps, {
        "interaction": interaction.astype(np.uint32), "finalstate": finalstate.astype(np.uint32),
        "finalstateprong": prongs.astype(np.uint32), "particles": particles.astype(np.uint32),
        "lepenergy": e_lep.astype(np.float32), "nuenergy": energy.astype(np.float32),
        "parent": _parents(rng, family, energy), "vtxx": vtx[:, 0], "vtxy": vtx[:, 1], "vtxz": vtx[:, 2],
    }


DEAD_CHANNELS = np.random.default_rng(DEAD_SEED).random(DEAD_MAP_SHAPE) < DEAD_FRACTION


def _light_yield(images: np.ndarray, origin: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """(N, 2, P) light per deposited count, relative to the cell's middle (fibre attenuation).

    A pixel of view 0 at plane p is a cell along y; where along it the light was made is not in that view,
    so it is taken from the other view at the same plane (the charge-weighted mean y cell of view 1 there),
    as reconstruction matches the views plane by plane; ``fallback`` (N, 2), the vertex's window cell in
    each view, where the other view has no charge at that plane. ``origin`` (N, 3): the detector (plane,
    x cell, y cell) of window pixel (0, 0)."""
    cells = np.arange(images.shape[3], dtype=np.float32)
    charge = images.sum(axis=3)
    mean_cell = np.where(charge > 0, (images @ cells) / np.maximum(charge, 1e-9), fallback[:, :, None])
    along = mean_cell[:, ::-1] + origin[:, [2, 1], None] + 0.5  # view 0 ← y from view 1, view 1 ← x from view 0
    distance = DET_HALF_WIDTH_CM - (along * CELL_PITCH_CM - DET_HALF_WIDTH_CM)  # to the readout end at +190 cm
    return np.exp(-(distance - DET_HALF_WIDTH_CM) / ATTENUATION_CM)


def _dead(flat_idx: np.ndarray, shape: tuple[int, ...], origin: np.ndarray) -> np.ndarray:
    """Whether the pixels at these flat indices of (N, 2, P, C) images sit on dead detector channels, or on
    none (beyond the detector's side walls, before its first plane or after the muon catcher: no cell, so no noise
    hit either)."""
    _, views, planes, cells = shape
    rest, cell = np.divmod(flat_idx, cells)
    rest, plane = np.divmod(rest, planes)
    event, view = np.divmod(rest, views)
    det_plane = origin[event, 0] + plane
    det_cell = origin[event, 1 + view] + cell
    return (DEAD_CHANNELS[view, det_plane % DEAD_MAP_SHAPE[1], det_cell % DEAD_MAP_SHAPE[2]] | (det_cell < 0)
            | (det_cell >= DET_CELLS) | (det_plane < 0) | (det_plane >= ACTIVE_PLANES + MC_PLANES))


def _readout(rng: np.random.Generator, images: np.ndarray, origin: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """Deposited counts → quantised pixels: attenuated light with fluctuations, noise hits, threshold on the
    light, the attenuation calibrated out, dead channels, rounding, 0..255 (see the module docstring)."""
    light = _light_yield(images, origin, fallback).reshape(-1)
    n_cells = images.shape[3]
    flat = images.reshape(-1)
    hit = np.flatnonzero(flat)
    f_hit = light[hit // n_cells]
    v = flat[hit].astype(np.float64) * f_hit
    v = v * (1.0 + CALIB_SIGMA * rng.standard_normal(len(v))) + np.sqrt(PHOTO_VARIANCE * v) * rng.standard_normal(
        len(v))
    flat[hit] = v  # from here on: light, in counts at the cell's middle
    n_noise = rng.poisson(NOISE_HITS * len(images))
    noise_at = rng.integers(0, flat.size, n_noise)
    np.add.at(flat, noise_at, rng.exponential(NOISE_MEAN_COUNTS, n_noise).astype(np.float32))
    out = np.zeros(flat.size, np.uint8)
    at = np.concatenate([hit, noise_at])  # a noise hit on a hit pixel: the same value written twice
    val = flat[at].astype(np.float64)
    keep = (val >= THRESHOLD) & ~_dead(at, images.shape, origin)
    at, val = at[keep], val[keep] / light[at[keep] // n_cells]  # calibrated: the attenuation divided out
    out[at] = np.clip(np.rint(val), 0, 255).astype(np.uint8)
    return out.reshape(images.shape)


def simulate_events(seed: int, n: int, mix: Mix | None = None, first_index: int = 0, run: int = 1000,
                    subrun: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(cvnmap (n, 2, 100, 80) uint8, fields): every key of ``format.FIELDS`` as a 1-D array of length n with
    that dtype. Same seed and arguments → identical output."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    mix = mix or Mix()
    rng = np.random.default_rng(seed)
    maps = np.zeros((n, fmt.VIEWS, fmt.PLANES, fmt.CELLS), np.uint8)
    parts: list[dict[str, np.ndarray]] = []
    for lo in range(0, n, CHUNK):
        hi = min(n, lo + CHUNK)
        classes = _classes(rng, hi - lo, mix)
        maps[lo:hi], truth = _chunk(rng, classes)
        # the files hold reconstructed slices: an event with too little activity (an NC elastic event on a
        # neutron, a soft recoil) is not in them. It is redrawn in its own class, so that the class mix is
        # the mix of the files' (selected) events.
        bad = np.flatnonzero((maps[lo:hi] > 0).sum(axis=(1, 2, 3)) < MIN_SLICE_HITS)
        for _ in range(MAX_REDRAWS):
            if not len(bad):
                break
            new_maps, new_truth = _chunk(rng, classes[:, bad])
            maps[lo + bad] = new_maps
            for k, v in new_truth.items():
                truth[k][bad] = v
            bad = bad[(new_maps > 0).sum(axis=(1, 2, 3)) < MIN_SLICE_HITS]
        parts.append(truth)
    index = first_index + np.arange(n, dtype=np.int64)
    fields: dict[str, np.ndarray] = {k: np.concatenate([p[k] for p in parts]) if parts else np.zeros(0)
                                     for k in ("interaction", "finalstate", "finalstateprong", "particles",
                                               "lepenergy", "nuenergy", "parent", "vtxx", "vtxy", "vtxz")}
    fields["cycle"] = index // 500
    fields["evt"] = first_index + np.cumsum(rng.integers(1, 4, n))
    fields["subevt"] = rng.integers(0, 6, n)
    fields["rec.training.trainingdata_idx"] = index
    fields["run"] = np.full(n, run)
    fields["subrun"] = np.full(n, subrun)
    return maps, {k: np.asarray(fields[k]).astype(dtype) for k, dtype in fmt.FIELDS.items()}
