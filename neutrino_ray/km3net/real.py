"""Real KM3NeT offline ROOT files (read with km3io) → the canonical per-event feature table.

One row per event, columns exactly :data:`features.SCHEMA`. Every fit quantity is looked up by name in
``km3io.definitions``; the best fits are km3io's ``tools.best_jmuon`` / ``tools.best_jshower`` (longest
reconstruction chain within the JMUON / JSHOWER stage range, then the largest ``lik``).

Mapping (our column ← km3io):

- ``event_id`` ← ``events.id``; hits: ``n_hits`` ← hits with ``trig != 0``, ``n_doms`` ← distinct
  ``hits.dom_id`` among those.
- best JMuon track: ``gandalf_beta0/1`` ← fitinf JGANDALF_BETA0_RAD / JGANDALF_BETA1_RAD,
  ``gandalf_energy_chi2`` ← JENERGY_CHI2, ``gandalf_npe`` ← JGANDALF_NUMBER_OF_HITS (the number of hits
  the JGandalf fit used: offline files store no p.e. sum for the fit), ``gandalf_likelihood`` ← ``lik``,
  ``track_length`` ← JSTART_LENGTH_METRES (``len`` is 0 in Jpp output), ``track_energy`` ← JENERGY_ENERGY,
  ``track_pos_*`` / ``track_dir_*`` ← ``pos_*`` / ``dir_*``.
- best JShower: ``shower_likelihood`` ← ``lik``, ``shower_energy`` ← ``E``, ``shower_pos/dir_*`` ← ``pos/dir_*``;
  ``track_shower_distance`` = |shower pos − track pos|, ``track_shower_dt`` = shower ``t`` − track ``t``.
- truth: the first ``mc_tracks`` entry with status TRK_ST_PRIMARYNEUTRINO gives ``pdgid`` and ``energy`` (``E``);
  ``w2list[W2LIST_GSEAGEN_CC] == 2`` (gSeaGen INTER code Weak[CC], the rule of ``km3io.tools.is_cc``) gives
  ``is_cc``, ``w2list[W2LIST_GSEAGEN_BY]`` gives ``bjorkeny`` (the W2LIST_GENHEN_* names for genhen files).

Cherenkov counts: triggered hits whose perpendicular distance to the best track (an infinite line, as in
JGandalf) is below 50 m / 100 m and whose time residual to the direct Cherenkov photon arrival is within
[-10, +20] ns (θc = arccos(1/1.35) ≈ 42.2°, photons at the group velocity c/1.38).

Missing fits are filled so every feature is finite (counts are logged): without a JMuon fit the track takes
the shower's position/direction/time, β0 = β1 = π and the other track quantities 0; without a JShower fit the
shower takes the track's position/direction/time and likelihood = energy = 0; with neither, both sit at
the triggered-hit barycentre (mean hit time) pointing up (0, 0, 1). A fit parameter missing from a present
fit gets the same default as a missing fit.

InputError (naming ``where``) for files that are not ROOT, not offline files, lack a needed branch, have no
JMuon or no JShower fit in any event, have hits without positions (uncalibrated), or lack MC truth.

ROOT files are read from a local path or a seekable binary file object; S3 objects are downloaded to a
temporary file by the caller (see ``data.read_file``).
"""

from __future__ import annotations

import logging
import os
import zlib
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa

from neutrino_ray.errors import InputError
from neutrino_ray.km3net import features

log = logging.getLogger("neutrino_ray")

SAMPLE = ("offline/KM3NeT_00000049_00011291.mc.gsg_neutrinos.km3sim_sirene_merged.jterbr."
          "jppmuon_jppshower_static.offline.v9.2.sample.root")

C_LIGHT = 0.299792458  # m/ns
N_PHASE = 1.35  # sea-water phase index: cos θc = 1/N_PHASE, θc ≈ 42.2°
N_GROUP = 1.38  # sea-water group index: photons travel at C_LIGHT / N_GROUP
RESIDUAL_WINDOW = (-10.0, 20.0)  # ns, accepted time residual to the direct Cherenkov arrival
CHERENKOV_RADII = (50.0, 100.0)  # m, for n_hits_cherenkov_50m / _100m
GSEAGEN_WEAK_CC = 2  # gSeaGen INTER code "Weak[CC]" stored at W2LIST_*_CC (3 is Weak[NC])

# Raw E/Evt branches this reader needs, by what they are used for.
NEEDED_BRANCHES = {
    "fits": ("trks/trks.rec_stages", "trks/trks.fitinf", "trks/trks.lik", "trks/trks.E", "trks/trks.t",
             "trks/trks.pos.x", "trks/trks.dir.x"),
    "hits": ("hits/hits.t", "hits/hits.trig", "hits/hits.dom_id", "hits/hits.pos.x", "hits/hits.pos.y",
             "hits/hits.pos.z"),
    "MC truth": ("mc_trks/mc_trks.type", "mc_trks/mc_trks.status", "mc_trks/mc_trks.E", "w2list"),
}

TRACK_DEFAULTS = {"gandalf_beta0": np.pi, "gandalf_beta1": np.pi, "gandalf_energy_chi2": 0.0, "gandalf_npe": 0.0,
                  "gandalf_likelihood": 0.0, "track_length": 0.0, "track_energy": 0.0}
SHOWER_DEFAULTS = {"shower_likelihood": 0.0, "shower_energy": 0.0}
XYZ = ("x", "y", "z")


def sample_file() -> str:
    """The 30-event ORCA (det_id 49) offline sample in km3net-testdata: 14 ν_μ CC tracks, 16 showers."""
    import km3net_testdata

    return km3net_testdata.data_path(SAMPLE)


def read_offline(path_or_fileobj: str | os.PathLike | BinaryIO, where: str, require_truth: bool = True) -> pa.Table:
    """One row per event of an offline ROOT file, columns exactly ``features.SCHEMA``.

    With ``require_truth=False`` a file without MC truth (real data) yields the keys and features only.
    """
    km3io, reader = _open(path_or_fileobj, where, require_truth)  # checks that km3io and uproot import
    import uproot

    with reader:
        if len(reader) == 0:
            return features.SCHEMA.empty_table()
        try:  # the branches' baskets are read here: a corrupt file fails now, not at open
            ev = reader.events
            ids = np.asarray(ev.id, dtype=np.int64)
            if len(np.unique(ids)) != len(ids):
                raise InputError(f"{where}: event ids are not unique")
            track = _best_fit(km3io.tools.best_jmuon(ev.tracks), km3io, track=True)
            shower = _best_fit(km3io.tools.best_jshower(ev.tracks), km3io, track=False)
            hits = _hits(ev.hits, where)
            try:
                truth: dict[str, np.ndarray] | None = _truth(ev, reader, km3io, where)
            except InputError:
                if require_truth:
                    raise
                truth = None  # real data: no truth, features only
        except (OSError, EOFError, zlib.error, uproot.DeserializationError) as e:
            raise InputError(f"{where}: corrupt ROOT file, cannot read its events ({e})") from e
    for kind, fit in (("JMuon (JGandalf) track", track), ("JShower", shower)):
        if not fit["ok"].any():
            raise InputError(f"{where}: lacks fits: no {kind} fit in any event (both kinds are needed)")
    _fill_missing(track, shower, hits, where)
    cols: dict[str, Any] = {"event_id": ids, "n_hits": hits["n_hits"], "n_doms": hits["n_doms"]}
    for radius, name in zip(CHERENKOV_RADII, ("n_hits_cherenkov_50m", "n_hits_cherenkov_100m"), strict=True):
        cols[name] = _cherenkov_count(hits, track, radius)
    cols.update({k: track[k] for k in TRACK_DEFAULTS})
    cols.update({k: shower[k] for k in SHOWER_DEFAULTS})
    for part, fit in (("track", track), ("shower", shower)):
        cols.update({f"{part}_{q}_{a}": fit[f"{q}_{a}"] for q in ("pos", "dir") for a in XYZ})
    delta = np.stack([shower[f"pos_{a}"] - track[f"pos_{a}"] for a in XYZ])
    cols["track_shower_distance"] = np.linalg.norm(delta, axis=0)
    cols["track_shower_dt"] = shower["t"] - track["t"]
    schema = features.SCHEMA
    if truth is None:
        schema = pa.schema([f for f in schema if f.name not in features.TRUTH])
    else:
        cols.update(truth)
    return pa.table({f.name: pa.array(cols[f.name], f.type) for f in schema}, schema=schema)


def _open(src: str | os.PathLike | BinaryIO, where: str, require_truth: bool = True) -> tuple[Any, Any]:
    """(km3io module, OfflineReader) after checking that the file is an offline file with the needed branches."""
    try:
        import km3io
        import uproot
    except ImportError as e:
        raise InputError(f"{where}: reading KM3NeT offline ROOT files needs km3io ({e})") from e
    try:
        root = uproot.open(os.fspath(src) if isinstance(src, str | os.PathLike) else src)
    except Exception as e:  # uproot raises ValueError, OSError, … for non-ROOT input
        raise InputError(f"{where}: not a readable ROOT file ({type(e).__name__}: {e})") from e
    try:
        _check_branches(root, where, require_truth)
    except InputError:
        root.close()
        raise
    return km3io, km3io.OfflineReader(root)


def _check_branches(root: Any, where: str, require_truth: bool = True) -> None:
    """InputError unless ``root`` has the E/Evt tree with every branch in NEEDED_BRANCHES."""
    if "E" not in root or "Evt" not in root["E"]:
        raise InputError(f"{where}: not a KM3NeT offline file (no E/Evt tree)")
    have = {k.removeprefix("Evt/") for k in root["E"].keys()}
    if "id" not in have:
        raise InputError(f"{where}: not a KM3NeT offline file (E/Evt has no id branch)")
    for use, names in NEEDED_BRANCHES.items():
        if use == "MC truth" and not require_truth:
            continue
        missing = [n for n in names if n not in have]
        if missing and root["E"].num_entries:
            raise InputError(f"{where}: lacks {use}: no branches {missing}")


def _np(arr: Any) -> np.ndarray:
    """Flat awkward array, possibly with missing entries → float64 numpy, missing → NaN."""
    import awkward as ak

    return ak.to_numpy(ak.fill_none(arr, np.nan)).astype(np.float64)


def _fitinf(best: Any, name: str, km3io: Any) -> np.ndarray:
    """A fit parameter of the best fits by its km3io name; NaN where the fit or the parameter is missing."""
    import awkward as ak

    idx = km3io.definitions.fitparameters[name]
    return _np(ak.pad_none(best.fitinf, idx + 1, axis=1)[:, idx])


def _best_fit(best: Any, km3io: Any, track: bool) -> dict[str, np.ndarray]:
    """Geometry, time and the features of the best JMuon (``track``) or JShower fit per event (NaN = missing)."""
    import awkward as ak

    out = {f"{q}_{a}": _np(getattr(best, f"{q}_{a}")) for q in ("pos", "dir") for a in XYZ}
    out["t"] = _np(best.t)
    geometry = np.stack([out[k] for k in out])
    out["ok"] = ~ak.to_numpy(ak.is_none(best.lik)) & np.isfinite(geometry).all(axis=0)  # a usable fit
    if track:
        out.update(gandalf_beta0=_fitinf(best, "JGANDALF_BETA0_RAD", km3io),
                   gandalf_beta1=_fitinf(best, "JGANDALF_BETA1_RAD", km3io),
                   gandalf_energy_chi2=_fitinf(best, "JENERGY_CHI2", km3io),
                   gandalf_npe=_fitinf(best, "JGANDALF_NUMBER_OF_HITS", km3io),
                   gandalf_likelihood=_np(best.lik),
                   track_length=_fitinf(best, "JSTART_LENGTH_METRES", km3io),
                   track_energy=_fitinf(best, "JENERGY_ENERGY", km3io))
    else:
        out.update(shower_likelihood=_np(best.lik), shower_energy=_np(best.E))
    return out


def _hits(hits: Any, where: str) -> dict[str, np.ndarray]:
    """Triggered hits flattened (event index, position, time) and the per-event counts."""
    import awkward as ak

    trig = hits.trig
    n_events = len(trig)
    per_event = ak.to_numpy(ak.num(trig, axis=1))
    keep = ak.to_numpy(ak.flatten(trig)) != 0
    out = {"event": np.repeat(np.arange(n_events), per_event)[keep]}
    out.update({k: ak.to_numpy(ak.flatten(getattr(hits, k)))[keep].astype(np.float64)
                for k in ("pos_x", "pos_y", "pos_z", "t")})
    if keep.any() and not any(out[f"pos_{a}"].any() for a in XYZ):
        raise InputError(f"{where}: hits have no positions (uncalibrated file): Cherenkov counts need them")
    out["n_hits"] = np.bincount(out["event"], minlength=n_events).astype(np.float64)
    dom = ak.to_numpy(ak.flatten(hits.dom_id))[keep].astype(np.int64)
    event_dom = np.unique(out["event"].astype(np.int64) << 32 | (dom & 0xFFFFFFFF))
    out["n_doms"] = np.bincount(event_dom >> 32, minlength=n_events).astype(np.float64)
    return out


def _truth(ev: Any, reader: Any, km3io: Any, where: str) -> dict[str, np.ndarray]:
    """pdgid and energy of the primary neutrino; is_cc and bjorkeny from the generator's w2list."""
    import awkward as ak

    mc = ev.mc_tracks
    primary = mc.status == km3io.definitions.trkmembers["TRK_ST_PRIMARYNEUTRINO"]
    pdgid = ak.firsts(mc.pdgid[primary], axis=1)
    if ak.any(ak.is_none(pdgid)):
        n = int(ak.sum(ak.is_none(pdgid)))
        raise InputError(f"{where}: lacks MC truth: {n} events have no primary neutrino in mc_tracks")
    program = str(getattr(getattr(reader.header, "simul", None), "program", "gseagen")).lower()
    names = km3io.definitions.w2list_genhen if "genhen" in program else km3io.definitions.w2list_gseagen
    prefix = "W2LIST_GENHEN" if "genhen" in program else "W2LIST_GSEAGEN"
    cc_idx, by_idx = names[f"{prefix}_CC"], names[f"{prefix}_BY"]
    w2list = ev.w2list
    if ak.any(ak.num(w2list, axis=1) <= max(cc_idx, by_idx)):
        raise InputError(f"{where}: lacks MC truth: w2list has no {prefix}_CC / {prefix}_BY entries")
    return {"pdgid": ak.to_numpy(pdgid).astype(np.int64),
            "is_cc": ak.to_numpy(w2list[:, cc_idx]) == GSEAGEN_WEAK_CC,
            "bjorkeny": ak.to_numpy(w2list[:, by_idx]).astype(np.float64),
            "energy": _np(ak.firsts(mc.E[primary], axis=1))}


def _fill_missing(track: dict, shower: dict, hits: dict, where: str) -> None:
    """Apply the documented fill rules in place and log how many events each rule touched."""
    neither = ~track["ok"] & ~shower["ok"]
    if neither.any():
        count = np.maximum(hits["n_hits"], 1.0)
        for k in ("pos_x", "pos_y", "pos_z", "t"):
            centre = np.bincount(hits["event"], weights=hits[k], minlength=len(count)) / count
            for fit in (track, shower):
                fit[k] = np.where(neither, centre, fit[k])
        for fit in (track, shower):
            for a, value in zip(XYZ, (0.0, 0.0, 1.0), strict=True):
                fit[f"dir_{a}"] = np.where(neither, value, fit[f"dir_{a}"])
    geometry = [f"{q}_{a}" for q in ("pos", "dir") for a in XYZ] + ["t"]
    for fit, other in ((track, shower), (shower, track)):
        for k in geometry:
            fit[k] = np.where(fit["ok"], fit[k], other[k])
    touched = {}
    for fit, defaults in ((track, TRACK_DEFAULTS), (shower, SHOWER_DEFAULTS)):
        for k, value in defaults.items():
            lacking = ~np.isfinite(fit[k]) & fit["ok"]  # the fit exists but lacks this parameter
            if lacking.any():
                touched[k] = int(lacking.sum())
            fit[k] = np.where(fit["ok"] & ~lacking, fit[k], value)
    n = len(track["ok"])
    if (~track["ok"]).any() or (~shower["ok"]).any():
        log.warning("%s: %d of %d events without a JMuon fit, %d without a JShower fit (%d with neither): "
                    "filled by the documented rules", where, int((~track["ok"]).sum()), n,
                    int((~shower["ok"]).sum()), int(neither.sum()))
    if touched:
        log.warning("%s: fits lacking a parameter, defaulted (events per column): %s", where, touched)


def _cherenkov_count(hits: dict, track: dict, radius: float) -> np.ndarray:
    """Triggered hits within ``radius`` of the track whose direct-Cherenkov time residual is in the window."""
    e = hits["event"]
    v = np.stack([hits[f"pos_{a}"] - track[f"pos_{a}"][e] for a in XYZ])
    d = np.stack([track[f"dir_{a}"][e] for a in XYZ])
    d = d / np.maximum(np.linalg.norm(d, axis=0), 1e-12)
    along = (v * d).sum(axis=0)
    rho = np.sqrt(np.maximum((v * v).sum(axis=0) - along**2, 0.0))
    cos_c = 1.0 / N_PHASE
    sin_c = np.sqrt(1.0 - cos_c**2)
    # the muon reaches the emission point at (along - rho / tan θc), the photon then flies rho / sin θc
    t_expected = track["t"][e] + (along - rho * cos_c / sin_c) / C_LIGHT + rho * N_GROUP / (sin_c * C_LIGHT)
    residual = hits["t"] - t_expected
    ok = (rho < radius) & (residual >= RESIDUAL_WINDOW[0]) & (residual <= RESIDUAL_WINDOW[1])
    return np.bincount(e[ok], minlength=len(track["t"])).astype(np.float64)
