"""The simulator's difficulty, measured like the real files were: the course CNN trained the course way.

``python -m neutrino_ray.nova.calibrate --train-events N --test-events M [--epochs E | --patience 5]`` simulates
a training sample and a held-out test sample at the natural mix (:class:`~.simulate.Mix`, the real files'),
undersamples the training classes to balance (as the notebooks and ``nova train`` do), trains
:class:`~.models.CourseCNN` with the course recipe (:data:`~.models.COURSE_RECIPE`: Adam at a constant
learning rate, batch 256, cross-entropy; the last 10 % of the balanced sample validates, as Keras'
``validation_split``), and prints the notebook figures of :func:`~.analysis.notebook_figures` on the test
sample, with its spectrum (median and maximum E_ν, median E_lepton of ν_μ CC events) as JSON.

This is the calibration instrument, not a second training path: users train with ``nova train --model
course-cnn`` (the one scaffold, on Ray Train); this in-process loop uses the same model, loss, optimiser
(:func:`~neutrino_ray.training.make_optimizer`) and early-stopping rule (:func:`~neutrino_ray.training.early_stop`)
on in-memory arrays, so that calibration iterations need no files and no Ray. Two budgets:

- the **proxy** (for calibration iterations): ``--train-events 40000 --test-events 10000 --epochs 3``
  (about 4,400 balanced ν_μ CC / other events each);
- the **target** measurement (issue 27): at least 30,000 balanced training events (≈ 140,000 simulated at
  the natural mix, 11 % NC) and at least 40,000 test events, to early stopping (``--patience 5``).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from neutrino_ray import training
from neutrino_ray.nova import analysis, models, simulate, targets
from neutrino_ray.nova import format as fmt


def spectrum(fields: dict[str, np.ndarray]) -> dict[str, float]:
    """Median and maximum E_ν of the neutrino events, median E_lepton of the ν_μ CC events (GeV)."""
    e = fields["nuenergy"][fields["nuenergy"] > 0]
    numu = fields["interaction"] <= fmt.NUMU_CC[-1]
    return {"median_nuenergy": float(np.median(e)), "max_nuenergy": float(e.max()),
            "median_lepenergy_numu_cc": float(np.median(fields["lepenergy"][numu]))}


def _predict(model: torch.nn.Module, x: np.ndarray, batch: int = 1024) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        out = [model(torch.from_numpy(x[i:i + batch])).argmax(dim=1).numpy() for i in range(0, len(x), batch)]
    model.train()
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def measure(train_events: int, test_events: int, target: str = "numu-cc", epochs: int = 3,
            patience: int | None = None, seed: int = 0, threads: int | None = None,
            mix: simulate.Mix | None = None, log: bool = True) -> dict[str, Any]:
    """Train the course CNN on a balanced subsample of ``train_events`` simulated events and test it on
    ``test_events`` others (natural mix); the notebook figures, the spectrum and the timings."""
    if threads:
        torch.set_num_threads(threads)
    t0 = time.monotonic()
    x_pool, f_pool = simulate.simulate_events(seed, train_events, mix)
    x_test, f_test = simulate.simulate_events(seed + 7919, test_events, mix, first_index=train_events)
    sim_s = time.monotonic() - t0
    y_pool, ok = targets.targets(target, f_pool)
    pool = np.flatnonzero(ok)
    bal = pool[analysis.balanced_subsample(y_pool[pool], seed)]
    rng = np.random.default_rng(seed)
    rng.shuffle(bal)
    n_val = max(1, len(bal) // 10)
    tr, va = bal[:-n_val], bal[-n_val:]
    recipe = models.COURSE_RECIPE
    s = training.Settings(out="", optimizer=str(recipe["optimizer"]), schedule=str(recipe["schedule"]),
                          lr=float(recipe["lr"]), batch_size=int(recipe["batch_size"]), patience=patience,
                          epochs=epochs)
    torch.manual_seed(seed)
    model = models.CourseCNN(len(targets.CLASSES[target]))
    opt = training.make_optimizer(model.parameters(), s)
    x_tr, y_tr = torch.from_numpy(x_pool[tr]), torch.from_numpy(y_pool[tr])
    x_va, y_va = torch.from_numpy(x_pool[va]), torch.from_numpy(y_pool[va])
    history: list[dict[str, Any]] = []
    best_state, best_loss = None, math.inf
    t1 = time.monotonic()
    for epoch in range(1, s.epochs + 1):
        perm = torch.from_numpy(rng.permutation(len(tr)))
        loss_sum = 0.0
        for i in range(0, len(tr), s.batch_size):
            b = perm[i:i + s.batch_size]
            loss = F.cross_entropy(model(x_tr[b]), y_tr[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += float(loss.detach()) * len(b)
        model.eval()
        with torch.no_grad():
            val_loss = sum(float(F.cross_entropy(model(x_va[i:i + 1024]), y_va[i:i + 1024], reduction="sum"))
                           for i in range(0, len(va), 1024)) / len(va)
        model.train()
        history.append({"epoch": epoch, "train_loss": loss_sum / len(tr), "val_loss": val_loss,
                        "minutes": round((time.monotonic() - t1) / 60, 2)})
        if log:
            print(json.dumps(history[-1]), flush=True)
        if val_loss < best_loss:
            best_loss, best_state = val_loss, {k: v.clone() for k, v in model.state_dict().items()}
        if training.early_stop(history, patience, epoch):
            break
    if patience is not None and best_state is not None:  # Keras' restore_best_weights
        model.load_state_dict(best_state)
    train_s = time.monotonic() - t1
    y_test, ok_test = targets.targets(target, f_test)
    pred = _predict(model, x_test[ok_test])
    truth = {k: np.asarray(v)[ok_test] for k, v in f_test.items() if k in ("interaction", "nuenergy", "lepenergy")}
    return {"target": target, "seed": seed, "simulated_train_events": train_events, "balanced_train_events": len(tr),
            "val_events": len(va), "test_events": int(ok_test.sum()), "epochs": len(history),
            "patience": patience, "history": history, "simulate_seconds": round(sim_s, 1),
            "train_minutes": round(train_s / 60, 2), "torch_threads": torch.get_num_threads(),
            "spectrum": spectrum(f_test), **analysis.notebook_figures(y_test[ok_test], pred, truth)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m neutrino_ray.nova.calibrate", description=__doc__.split("\n\n")[0])
    p.add_argument("--train-events", type=int, default=40_000, help="simulated at the natural mix, then balanced")
    p.add_argument("--test-events", type=int, default=10_000)
    p.add_argument("--target", choices=list(targets.CLASSES), default="numu-cc")
    p.add_argument("--epochs", type=int, default=3, help="maximum epochs (the proxy: exactly these)")
    p.add_argument("--patience", type=int, default=None, help="early stopping on val_loss (the target run: 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    r = measure(a.train_events, a.test_events, a.target, a.epochs, a.patience, a.seed, a.threads)
    print(json.dumps(r, indent=1))


if __name__ == "__main__":
    main()
