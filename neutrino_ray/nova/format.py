"""The NOvA course-data HDF5 layout, the contract every reader and writer here honours.

A file ``neutrino{i}.h5`` holds N events:

- ``cvnmap``: (N, 16000) uint8. Event k reshapes (C order) to (2, 100, 80) = (view, plane, cell);
  view 0 is the x–z projection, view 1 the y–z projection. Reshaping to (100, 80, 2) scrambles them.
- group ``neutrino``: the 16 datasets of :data:`FIELDS`, each (N, 1) with the dtype given there.
"""

from __future__ import annotations

from typing import IO, Any

import numpy as np

IMAGE = "cvnmap"
GROUP = "neutrino"
VIEWS, PLANES, CELLS = 2, 100, 80
PIXELS = VIEWS * PLANES * CELLS  # 16000
VIEW_NAMES = ("x-z", "y-z")

FIELDS: dict[str, np.dtype[Any]] = {
    "cycle": np.dtype(np.int32),
    "evt": np.dtype(np.uint32),
    "finalstate": np.dtype(np.uint32),
    "finalstateprong": np.dtype(np.uint32),
    "interaction": np.dtype(np.uint32),
    "lepenergy": np.dtype(np.float32),
    "nuenergy": np.dtype(np.float32),
    "parent": np.dtype(np.uint32),
    "particles": np.dtype(np.uint32),
    "rec.training.trainingdata_idx": np.dtype(np.uint32),
    "run": np.dtype(np.uint32),
    "subevt": np.dtype(np.uint16),
    "subrun": np.dtype(np.uint32),
    "vtxx": np.dtype(np.float64),
    "vtxy": np.dtype(np.float64),
    "vtxz": np.dtype(np.float64),
}

# interaction: 0-3 ν_μ CC, 4-7 ν_e CC, 8-11 ν_τ CC (each QE, RES, DIS, other), 12 ν-on-e elastic, 13 NC,
# 14 cosmic, 15 other.
MODES = ("QE", "RES", "DIS", "other")
NUMU_CC = range(0, 4)
NUE_CC = range(4, 8)
NUTAU_CC = range(8, 12)
NU_ON_E, NC, COSMIC, OTHER = 12, 13, 14, 15
INTERACTION_NAMES = tuple(
    [f"numu-CC-{m}" for m in MODES] + [f"nue-CC-{m}" for m in MODES] + [f"nutau-CC-{m}" for m in MODES]
    + ["nu-on-e", "NC", "cosmic", "other"])

# finalstate: ν_μ CC 0-15, ν_e CC 16-31, NC 32-47, each 4 * tracks(0, 1, 2, 3+) + showers(0, 1, 2, 3+);
# cosmic 48, other 49.
FS_COSMIC, FS_OTHER = 48, 49


def finalstate_code(family: np.ndarray, tracks: np.ndarray, showers: np.ndarray) -> np.ndarray:
    """finalstate for family 0 (ν_μ CC), 1 (ν_e CC) or 2 (NC) and prong counts (capped at 3)."""
    return (16 * family + 4 * np.minimum(tracks, 3) + np.minimum(showers, 3)).astype(np.uint32)


def finalstate_name(code: int) -> str:
    if code == FS_COSMIC:
        return "cosmic"
    if code >= 48:
        return "other"
    family = ("numu-CC", "nue-CC", "NC")[code // 16]
    t, s = (code % 16) // 4, code % 4
    return f"{family} {t if t < 3 else '3+'}trk {s if s < 3 else '3+'}shw"


def write_h5(f: str | IO[bytes], cvnmap: np.ndarray, fields: dict[str, np.ndarray], chunk_events: int = 256,
             compression: str | None = "gzip") -> None:
    """Write one file in the course layout. ``cvnmap`` is (N, 16000) or (N, 2, 100, 80) uint8."""
    import h5py

    n = len(cvnmap)
    maps = np.ascontiguousarray(cvnmap, dtype=np.uint8).reshape(n, PIXELS)
    missing = sorted(set(FIELDS) - set(fields))
    if missing:
        raise ValueError(f"missing fields {missing}")
    with h5py.File(f, "w") as h:
        h.create_dataset(IMAGE, data=maps, chunks=(max(1, min(chunk_events, n)), PIXELS) if n else None,
                         compression=compression if n else None)
        g = h.create_group(GROUP)
        for name, dtype in FIELDS.items():
            col = np.asarray(fields[name])
            if len(col) != n:
                raise ValueError(f"field {name}: {len(col)} rows for {n} events")
            g.create_dataset(name, data=col.astype(dtype).reshape(n, 1))
