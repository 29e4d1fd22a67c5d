#!/usr/bin/env python3
"""How much of the interaction mode the visible energy alone gives: the cheap yardstick of issue 27's mode goal.

    .venv/bin/python tools/nova_energy_mode.py TRAIN_DIR TEST_DIR [--bins 40]

TRAIN_DIR and TEST_DIR hold course-layout HDF5 files (``neutrino-ray simulate nova``, e.g. ``make nova-proxy``'s
``train`` and ``test``). An event's visible energy is its pixel sum (both views) × ``GEV_PER_COUNT``. The
classifier: the training set's CC events in ``--bins`` quantile bins of visible energy; each bin is given the mode
with the most class-balanced training events there (each mode's counts divided by its total, as undersampling to
the rarest mode would), no network. Printed: its natural accuracy on the CC events of the test set (the figure the
course CNN's mode classifier is held to: 0.33-0.50 on the real files), each mode's recall, and each mode's median
visible energy. A course CNN that scores near this figure reads the mode off the event's size (docs/nova.md,
"What the mode classifier reads, measured").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import h5py
import numpy as np

from neutrino_ray.nova import format as fmt
from neutrino_ray.nova import simulate as sim

CHUNK = 2_000  # events read at a time (bounds the memory)


def visible_and_mode(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """(visible energy in GeV, CC mode 0-3 or -1) of every event of the folder's HDF5 files."""
    vis, mode = [], []
    files = sorted(folder.glob("*.h5"))
    if not files:
        raise SystemExit(f"no .h5 files in {folder}")
    for path in files:
        with h5py.File(path, "r") as h:
            inter = h[fmt.GROUP]["interaction"][()][:, 0].astype(np.int64)
            image = h[fmt.IMAGE]
            for lo in range(0, len(inter), CHUNK):
                vis.append(image[lo:lo + CHUNK].sum(axis=1, dtype=np.int64) * sim.GEV_PER_COUNT)
            mode.append(np.where(inter <= 11, inter % 4, -1))  # CC codes 0-11: family × 4 + mode
    return np.concatenate(vis), np.concatenate(mode)


def classify(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], bins: int
             ) -> tuple[np.ndarray, np.ndarray]:
    """(predicted mode, true mode) of the test set's CC events."""
    x, y = train[0][train[1] >= 0], train[1][train[1] >= 0]
    edges = np.quantile(x, np.linspace(0.0, 1.0, bins + 1))[1:-1]
    counts = np.zeros((bins, 4))
    np.add.at(counts, (np.searchsorted(edges, x), y), 1.0)
    label = (counts / np.maximum(counts.sum(axis=0, keepdims=True), 1.0)).argmax(axis=1)
    cc = test[1] >= 0
    return label[np.searchsorted(edges, test[0][cc])], test[1][cc]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    ap.add_argument("train", type=Path)
    ap.add_argument("test", type=Path)
    ap.add_argument("--bins", type=int, default=40)
    args = ap.parse_args(argv)
    train, test = visible_and_mode(args.train), visible_and_mode(args.test)
    pred, true = classify(train, test, args.bins)
    names = fmt.MODES
    recall = " ".join(f"{names[m]} {np.mean(pred[true == m] == m):.3f}" for m in range(4) if (true == m).any())
    medians = " ".join(f"{names[m]} {np.median(test[0][test[1] == m]):.2f}" for m in range(4) if (test[1] == m).any())
    print(f"visible energy alone: natural accuracy {np.mean(pred == true):.3f} on {len(true)} CC test events "
          f"({int((train[1] >= 0).sum())} CC training events, {args.bins} bins); recall {recall}")
    print(f"median visible energy (GeV) of the test set's CC events: {medians}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
