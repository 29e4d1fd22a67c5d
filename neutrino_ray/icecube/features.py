"""Per-event pulse selection and per-pulse features, vectorised over whole blocks of events.

Events travel as Arrow rows whose list columns hold their pulses (flat value arrays plus per-event
offsets), so an event can never be split across blocks. Everything here is plain numpy/Arrow.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

DEFAULT_MAX_PULSES = 256
FEATURE_NAMES = ("x", "y", "z", "t", "log_charge", "auxiliary")
N_FEATURES = len(FEATURE_NAMES)
POSITION_SCALE = 500.0  # m
TIME_OFFSET, TIME_SCALE = 1.0e4, 3.0e4  # ns
CHARGE_LOG_SCALE = 3.0

PULSE_COLUMNS = ("sensor_id", "time", "charge", "auxiliary")
SEED = "seed"  # featurised column of the seeded models: the event's Kaggle LineFit direction (linefit.seed_column)


def list_offsets(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Offsets (n_events + 1, starting at 0) of a list column, chunks combined."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    off = arr.offsets.to_numpy().astype(np.int64)
    return off - off[0]


def list_values(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    return arr.flatten().to_numpy(zero_copy_only=False)


def flat_pulses(events: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(offsets, sensor_id, time, charge, auxiliary as bool) of a table of events with pulse list columns."""
    return (list_offsets(events.column("sensor_id")), list_values(events.column("sensor_id")),
            list_values(events.column("time")), list_values(events.column("charge")),
            list_values(events.column("auxiliary")).astype(bool))


def event_index(offsets: np.ndarray) -> np.ndarray:
    """For each flat element, the index of its event."""
    counts = np.diff(offsets)
    return np.repeat(np.arange(len(counts)), counts)


def select_pulses(offsets: np.ndarray, time: np.ndarray, auxiliary: np.ndarray,
                  max_pulses: int) -> tuple[np.ndarray, np.ndarray]:
    """Choose at most ``max_pulses`` pulses per event.

    Rule: keep every pulse of an event that has at most ``max_pulses``; otherwise prefer
    non-auxiliary (locally coincident) pulses, and among equals the earliest. Kept pulses stay in
    their original (time) order. Returns (flat indices of the kept pulses, new offsets).
    """
    counts = np.diff(offsets)
    new_counts = np.minimum(counts, max_pulses)
    new_offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(new_counts, out=new_offsets[1:])
    big = counts > max_pulses
    if not big.any():
        return np.arange(offsets[-1]), new_offsets
    # Only pulses of events over the cap need ranking; everything else is kept.
    in_big = np.repeat(big, counts)
    sub = np.flatnonzero(in_big)
    sub_counts = counts[big]
    sub_off = np.zeros(len(sub_counts) + 1, dtype=np.int64)
    np.cumsum(sub_counts, out=sub_off[1:])
    keep = ~in_big
    keep[sub[_keep_in_capped_events(sub_off, sub_counts, time[sub], auxiliary[sub].astype(bool),
                                    max_pulses)]] = True
    return np.flatnonzero(keep), new_offsets


def _keep_in_capped_events(offsets: np.ndarray, counts: np.ndarray, time: np.ndarray, aux: np.ndarray,
                           cap: int) -> np.ndarray:
    """Boolean mask of kept pulses for events that all exceed the cap."""
    starts = np.zeros(len(time), dtype=bool)
    starts[offsets[:-1]] = True
    if (np.diff(time) < 0)[~starts[1:]].any():  # not time-ordered within events: sort explicitly
        ev = np.repeat(np.arange(len(counts)), counts)
        order = np.lexsort((time, aux, ev))  # by event, then non-auxiliary first, then time
        rank = np.empty(len(order), dtype=np.int64)
        rank[order] = np.arange(len(order)) - offsets[ev[order]]
        return rank < cap
    # Kaggle order (event, time): ranks are running counts, no sort needed.
    clean = ~aux
    c_incl = np.cumsum(clean, dtype=np.int64)
    c_excl = c_incl - clean  # clean pulses before this one (whole array)
    clean_before = np.repeat(c_excl[offsets[:-1]], counts)  # clean pulses before the event
    n_clean = np.repeat(c_incl[offsets[1:] - 1] - c_excl[offsets[:-1]], counts)
    clean_rank = c_excl - clean_before  # rank among the event's clean pulses
    pos = np.arange(len(time)) - np.repeat(offsets[:-1], counts)
    aux_rank = pos - clean_rank  # rank among the event's auxiliary pulses
    return np.where(clean, clean_rank < cap, aux_rank < cap - n_clean)


def pulse_features(xyz: np.ndarray, time: np.ndarray, charge: np.ndarray, auxiliary: np.ndarray) -> np.ndarray:
    """(P, 6) float32: x/500, y/500, z/500, (t − 1e4)/3e4, log10(charge)/3, auxiliary."""
    out = np.empty((len(time), N_FEATURES), dtype=np.float32)
    out[:, :3] = xyz / POSITION_SCALE
    out[:, 3] = (time - TIME_OFFSET) / TIME_SCALE
    out[:, 4] = np.log10(charge) / CHARGE_LOG_SCALE
    out[:, 5] = auxiliary
    return out


def positions_and_times(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Undo the feature scaling: positions (m) and times (ns) for reconstruction."""
    xyz = features[:, :3].astype(np.float64) * POSITION_SCALE
    t = features[:, 3].astype(np.float64) * TIME_SCALE + TIME_OFFSET
    return xyz, t


def featurise(events: pa.Table, geometry_xyz: np.ndarray, max_pulses: int = DEFAULT_MAX_PULSES) -> pa.Table:
    """Events with pulse list columns → event_id, n_pulses, n_selected, features (list of 6-vectors).

    ``geometry_xyz`` is the (n_sensors, 3) position table indexed by sensor_id; sensor ids were
    validated on ingest.
    """
    offsets, sensor, time, charge, aux = flat_pulses(events)
    keep, new_offsets = select_pulses(offsets, time, aux, max_pulses)
    feats = pulse_features(geometry_xyz[sensor[keep]], time[keep], charge[keep], aux[keep])
    per_pulse = pa.FixedSizeListArray.from_arrays(pa.array(feats.reshape(-1)), N_FEATURES)
    return pa.table({
        "event_id": events.column("event_id"),
        "n_pulses": pa.array(np.diff(offsets)),
        "n_selected": pa.array(np.diff(new_offsets)),
        "features": pa.ListArray.from_arrays(pa.array(new_offsets.astype(np.int32)), per_pulse),
    })


def features_from_table(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """The flat (P, 6) feature matrix and the per-event offsets of a featurised table."""
    col = table.column("features")
    offsets = list_offsets(col)
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    flat = arr.flatten().flatten().to_numpy(zero_copy_only=False).reshape(-1, N_FEATURES)
    return flat, offsets


def seeds_from_table(table: pa.Table) -> np.ndarray:
    """The (N, 3) float32 seed directions of a featurised table with a ``seed`` column."""
    col = table.column(SEED)
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    return arr.flatten().to_numpy(zero_copy_only=False).reshape(-1, 3).astype(np.float32)
