"""The bins, variables and JSON numbers the NOvA analysis report is tabulated in.

Shared by :mod:`.analysis` (which computes the report) and :mod:`.analysis_render` (which draws and writes
it), so that neither imports the other's internals and the two agree on the bins.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

ENERGY_EDGES = np.array([0, 0.5, 1, 1.5, 2, 2.5, 3, 4, 5, 7, 10, 20, 80, np.inf])  # GeV; last bin 80+
ENERGY_VARIABLES = {"nuenergy": "true ν energy (GeV)", "lepenergy": "true lepton energy (GeV)",
                    "visible_energy": "visible (total) energy (GeV)"}


def json_number(x: Any) -> float | None:
    """Plain float for JSON; None for NaN/inf (undefined)."""
    v = float(x)
    return v if math.isfinite(v) else None
