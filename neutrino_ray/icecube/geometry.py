"""IceCube-86 in-ice geometry and South Pole ice properties, built from small shipped tables of facts.

Sensor ids follow the Kaggle convention ``sensor_id = (string - 1) * 60 + (dom_number - 1)``,
so 5,160 sensors, 0..5159.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

N_STRINGS = 86
DOMS_PER_STRING = 60
N_SENSORS = N_STRINGS * DOMS_PER_STRING
# Depth below the ice surface of the detector origin (z = 0), in metres.
ORIGIN_DEPTH = 1948.07


def _read_resource(name: str) -> pa.Table:
    """A shipped CSV table; its leading ``#`` lines say what it is and where it comes from."""
    path = files("neutrino_ray.icecube") / "resources" / name
    skip = 0
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        skip += 1
    return pacsv.read_csv(
        str(path), parse_options=pacsv.ParseOptions(ignore_empty_lines=True),
        read_options=pacsv.ReadOptions(skip_rows=skip),
    )


@dataclass(frozen=True)
class Geometry:
    """Per-sensor arrays indexed by sensor_id."""

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    string: np.ndarray  # 1..86
    dom_number: np.ndarray  # 1..60

    @property
    def xyz(self) -> np.ndarray:
        return np.stack([self.x, self.y, self.z], axis=1)

    def to_table(self) -> pa.Table:
        """Kaggle ``sensor_geometry.csv`` columns: sensor_id, x, y, z."""
        return pa.table({
            "sensor_id": pa.array(np.arange(N_SENSORS, dtype=np.int64)),
            "x": pa.array(self.x), "y": pa.array(self.y), "z": pa.array(self.z),
        })


@lru_cache(maxsize=1)
def icecube86() -> Geometry:
    """Expand the shipped segment table (DOM positions linear along stretches of each string, exact to
    0.05 m against the real positions) into the 5,160 in-ice sensor positions."""
    seg = _read_resource("icecube86_strings.csv").to_pydict()
    x = np.full(N_SENSORS, np.nan)
    y = np.full(N_SENSORS, np.nan)
    z = np.full(N_SENSORS, np.nan)
    for s, first, last, x0, y0, z0, dx, dy, dz in zip(
        seg["string"], seg["dom_first"], seg["dom_last"], seg["x_first"], seg["y_first"], seg["z_first"],
        seg["dx"], seg["dy"], seg["dz"], strict=True,
    ):
        doms = np.arange(first, last + 1)
        ids = (s - 1) * DOMS_PER_STRING + (doms - 1)
        x[ids], y[ids], z[ids] = x0 + dx * (doms - first), y0 + dy * (doms - first), z0 + dz * (doms - first)
    if np.isnan(x).any() or np.isnan(y).any() or np.isnan(z).any():
        raise ValueError("icecube86_strings.csv does not cover every DOM of 86 strings x 60")
    sensor = np.arange(N_SENSORS)
    return Geometry(
        x=np.round(x, 2), y=np.round(y, 2), z=np.round(z, 2),
        string=sensor // DOMS_PER_STRING + 1, dom_number=sensor % DOMS_PER_STRING + 1,
    )


@dataclass(frozen=True)
class Ice:
    """Effective scattering and absorption lengths (m) versus depth below the surface (m)."""

    depth: np.ndarray
    scattering_len: np.ndarray
    absorption_len: np.ndarray

    def at_z(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(scattering, absorption) lengths at detector coordinate z (depth = ORIGIN_DEPTH - z)."""
        d = ORIGIN_DEPTH - np.asarray(z, dtype=np.float64)
        return (np.interp(d, self.depth, self.scattering_len), np.interp(d, self.depth, self.absorption_len))


@lru_cache(maxsize=1)
def south_pole_ice() -> Ice:
    t = _read_resource("south_pole_ice.csv").to_pydict()
    return Ice(*(np.asarray(t[c], dtype=np.float64) for c in ("depth", "scattering_len", "absorption_len")))
