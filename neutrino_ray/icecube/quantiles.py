"""Exact quantiles out of core, in two passes over the same values (evaluate's and compare's percentiles).

Pass 1 counts the values in a fixed histogram of ``t = v / (1 + v)`` (monotone, so ranks are preserved, and
any v ≥ 0 fits in [0, 1)); the ranks that ``np.quantile``'s linear interpolation needs are located in their
bins; pass 2 keeps only the values in those bins, sorts them and picks the ranks. Memory: the histograms plus
the values of a few bins.
"""

from __future__ import annotations

from typing import Any

import numpy as np

HIST_BINS = 1 << 14


def _bin(values: np.ndarray) -> np.ndarray:
    t = values / (1.0 + values)
    return np.clip((t * HIST_BINS).astype(np.int64), 0, HIST_BINS - 1)


class Quantiles:
    """Exact quantiles (``np.quantile``, linear) of non-negative values under named keys, in two passes over
    the same values: :meth:`add` every chunk, then :meth:`collect` every chunk again, then :meth:`result`."""

    def __init__(self, qs: tuple[float, ...]):
        self.qs = qs
        self.counts: dict[Any, np.ndarray] = {}
        self.wanted: dict[Any, dict[int, list[np.ndarray]]] | None = None

    def add(self, key: Any, values: np.ndarray) -> None:
        if len(values):
            c = np.bincount(_bin(values), minlength=HIST_BINS)
            self.counts[key] = self.counts[key] + c if key in self.counts else c

    def _ranks(self, key: Any) -> list[tuple[int, float]]:
        n = int(self.counts[key].sum())
        out = []
        for q in self.qs:
            h = (n - 1) * q
            lo = int(np.floor(h))
            out.append((lo, h - lo))
        return out

    def collect(self, key: Any, values: np.ndarray) -> None:
        if self.wanted is None:  # end of pass 1: the bins that hold the ranks we need
            self.wanted = {}
            for k, c in self.counts.items():
                cum = np.cumsum(c)
                n = int(cum[-1])
                bins = {int(np.searchsorted(cum, r, side="right")) for lo, _ in self._ranks(k)
                        for r in (lo, min(lo + 1, n - 1))}
                self.wanted[k] = {b: [] for b in bins}
        if key not in self.wanted or not len(values):
            return
        b = _bin(values)
        for wb, kept in self.wanted[key].items():  # a few bins
            sel = values[b == wb]
            if len(sel):
                kept.append(sel)

    def result(self, key: Any) -> list[float]:
        assert self.wanted is not None, "collect() every chunk before result()"
        cum = np.cumsum(self.counts[key])
        n = int(cum[-1])
        sorted_bins = {b: np.sort(np.concatenate(v)) if v else np.empty(0) for b, v in self.wanted[key].items()}

        def at(r: int) -> float:
            b = int(np.searchsorted(cum, r, side="right"))
            start = int(cum[b - 1]) if b else 0
            return float(sorted_bins[b][r - start])

        out = []
        for lo, frac in self._ranks(key):
            a = at(lo)
            out.append(a if frac == 0 or lo + 1 >= n else a + frac * (at(lo + 1) - a))
        return out
