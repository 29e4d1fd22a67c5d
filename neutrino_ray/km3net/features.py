"""The canonical KM3NeT per-event feature table: column names, types, the label, and validation.

Every source (simulated HDF5, Parquet, real KM3NeT offline ROOT files read with km3io) produces this
table. Models record the FEATURES they were trained on and refuse tables that do not match.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from neutrino_ray.errors import InputError

KEYS = ("event_id",)  # int64, unique within a source file
SOURCE = "source"  # string: the file an event came from (added by the readers)

FEATURES = (
    # hit counts
    "n_hits",  # triggered hits
    "n_doms",  # DOMs with a triggered hit
    "n_hits_cherenkov_50m",  # hits within 50 m of the track that satisfy the Cherenkov time condition
    "n_hits_cherenkov_100m",  # the same within 100 m
    # JGandalf-style track fit
    "gandalf_beta0",  # rad, angular error estimate (major axis)
    "gandalf_beta1",  # rad, angular error estimate (minor axis)
    "gandalf_energy_chi2",  # chi2 of the track energy fit (JEnergy)
    "gandalf_npe",  # number of photo-electrons used in the track fit
    "gandalf_likelihood",  # track fit log-likelihood (larger is better)
    "track_length",  # m
    "track_energy",  # GeV, reconstructed
    # JShower-style shower fit
    "shower_likelihood",  # shower fit log-likelihood (larger is better)
    "shower_energy",  # GeV, reconstructed
    # geometry of both fits (m, unit vectors)
    "track_pos_x", "track_pos_y", "track_pos_z",
    "track_dir_x", "track_dir_y", "track_dir_z",
    "shower_pos_x", "shower_pos_y", "shower_pos_z",
    "shower_dir_x", "shower_dir_y", "shower_dir_z",
    "track_shower_distance",  # m, between the track start and the shower vertex
    "track_shower_dt",  # ns, shower vertex time minus track start time
)
TRUTH = ("pdgid", "is_cc", "bjorkeny", "energy")  # int64, bool, float64, float64 (true neutrino energy, GeV)
LABEL = "is_shower"
LABEL_DEFINITION = "is_shower = not (abs(pdgid) == 14 and is_cc)"

SCHEMA = pa.schema(
    [(k, pa.int64()) for k in KEYS]
    + [(f, pa.float64()) for f in FEATURES]
    + [("pdgid", pa.int64()), ("is_cc", pa.bool_()), ("bjorkeny", pa.float64()), ("energy", pa.float64())]
)


def label(pdgid: np.ndarray, is_cc: np.ndarray) -> np.ndarray:
    """True for shower-like events (ν_e CC, NC, …); False for tracks (ν_μ CC)."""
    return ~((np.abs(pdgid) == 14) & is_cc.astype(bool))


def validate(table: pa.Table, where: str, need_truth: bool = True, skip_bad: bool = False
             ) -> tuple[pa.Table, int]:
    """Check columns and finiteness; returns (table cast to the canonical types, rows skipped).

    Non-finite features are an error naming ``where``, the row and the column, unless ``skip_bad``
    drops those rows (and the count is returned for reporting).
    """
    need = list(KEYS) + list(FEATURES) + (list(TRUTH) if need_truth else [])
    missing = [c for c in need if c not in table.column_names]
    if missing:
        hint = " (no MC truth: training and evaluation need labelled events)" if set(missing) <= set(TRUTH) else ""
        raise InputError(f"{where}: missing columns {missing}{hint}")
    extra = [c for c in table.column_names if c not in need and c != SOURCE]
    table = table.drop_columns(extra)
    types = {f.name: f.type for f in SCHEMA}
    try:
        table = pa.table({c: table.column(c).cast(types.get(c, table.schema.field(c).type))
                          for c in table.column_names})
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise InputError(f"{where}: columns cannot be read as the canonical types: {e}") from e
    x = np.column_stack([table.column(f).to_numpy(zero_copy_only=False) for f in FEATURES]) if len(table) \
        else np.zeros((0, len(FEATURES)))
    bad_rows = ~np.isfinite(x).all(axis=1)
    if need_truth:
        for c in ("pdgid", "is_cc"):
            if table.column(c).null_count:
                raise InputError(f"{where}: column {c} has {table.column(c).null_count} nulls")
    if bad_rows.any():
        if not skip_bad:
            r = int(np.flatnonzero(bad_rows)[0])
            col = FEATURES[int(np.flatnonzero(~np.isfinite(x[r]))[0])]
            raise InputError(f"{where}: row {r} (event_id {table.column('event_id')[r].as_py()}) has a non-finite "
                             f"{col} ({x[r, FEATURES.index(col)]}); {int(bad_rows.sum())} such rows "
                             f"(use --skip-bad to drop them)")
        table = table.filter(pa.array(~bad_rows))
    return table, int(bad_rows.sum())


def feature_matrix(table: pa.Table) -> np.ndarray:
    """(n_events, n_features) float64 in FEATURES order."""
    return np.column_stack([table.column(f).to_numpy(zero_copy_only=False) for f in FEATURES]).astype(np.float64)
