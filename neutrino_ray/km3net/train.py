"""Cross-validated hyperparameter search on Ray, refit of the best pipeline, and an atomic model artefact.

Every (candidate, fold) trial is a Ray task; at most ``workers`` run at once, so the same code spreads
over a laptop's cores or a cluster. The held-out test split never enters the search.
Artefact at OUT: ``model.pkl`` (pickled estimator), ``metadata.json`` (features, label definition,
params, metrics, versions), ``cv_results.json``, and the analysis of the test split under ``analysis/``.
"""

from __future__ import annotations

import json
import logging
import platform
import time
from typing import Any

import numpy as np
import pyarrow as pa
import ray
import sklearn
from sklearn.metrics import accuracy_score, roc_auc_score
from sklearn.model_selection import ParameterGrid, ParameterSampler, StratifiedKFold, train_test_split

import neutrino_ray
from neutrino_ray import runtime, storage
from neutrino_ray.errors import InputError
from neutrino_ray.km3net import features, models
from neutrino_ray.km3net.artefact import FORMAT, write_model
from neutrino_ray.km3net.data import load_table
from neutrino_ray.km3net.evaluate import analyse

log = logging.getLogger("neutrino_ray")



def _scores(model: Any, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(continuous score for ROC, predicted class)."""
    s = model.decision_function(x) if hasattr(model, "decision_function") else models.shower_probability(model, x)
    return s, model.predict(x)


def fit(name: str, params: dict[str, Any], x: np.ndarray, y: np.ndarray, w: np.ndarray | None, seed: int) -> Any:
    return models.fit_weighted(models.make_pipeline(name, seed, params), x, y, w)


@ray.remote(num_cpus=1)
def _trial(name: str, params: dict[str, Any], x: np.ndarray, y: np.ndarray, w: np.ndarray | None,
           train_idx: np.ndarray, val_idx: np.ndarray, seed: int) -> dict[str, float]:
    """Fit on one fold's training rows, score on its validation rows."""
    t0 = time.perf_counter()
    model = fit(name, params, x[train_idx], y[train_idx], None if w is None else w[train_idx], seed)
    score, pred = _scores(model, x[val_idx], y[val_idx])
    return {"auc": float(roc_auc_score(y[val_idx], score)), "accuracy": float(accuracy_score(y[val_idx], pred)),
            "fit_seconds": time.perf_counter() - t0}


def candidates(name: str, search: str, n_iter: int, seed: int) -> list[dict[str, Any]]:
    if search == "grid":
        return list(ParameterGrid(models.GRIDS[name]))
    return [{k: (v.item() if isinstance(v, np.generic) else v) for k, v in p.items()}
            for p in ParameterSampler(models.SPACES[name], n_iter=n_iter, random_state=seed)]


def search_cv(name: str, cands: list[dict[str, Any]], x: np.ndarray, y: np.ndarray, w: np.ndarray | None,
              cv: int, workers: int, seed: int) -> list[dict[str, Any]]:
    """Run every (candidate, fold) trial as a Ray task, at most ``workers`` at a time; log each trial."""
    folds = list(StratifiedKFold(cv, shuffle=True, random_state=seed).split(x, y))
    x_ref, y_ref, w_ref = ray.put(x), ray.put(y), ray.put(w)
    pending = [(c, k) for c in range(len(cands)) for k in range(cv)]
    running: dict[Any, tuple[int, int]] = {}
    results: dict[tuple[int, int], dict[str, float]] = {}
    n_trials = len(pending)
    while pending or running:
        while pending and len(running) < workers:
            c, k = pending.pop(0)
            ref = _trial.remote(name, cands[c], x_ref, y_ref, w_ref, folds[k][0], folds[k][1], seed)
            running[ref] = (c, k)
        done, _ = ray.wait(list(running), num_returns=1)
        c, k = running.pop(done[0])
        results[c, k] = ray.get(done[0])
        r = results[c, k]
        log.info("trial %d/%d  %s fold %d/%d %s: AUC %.4f, accuracy %.4f (%.1f s)", len(results), n_trials, name,
                 k + 1, cv, cands[c], r["auc"], r["accuracy"], r["fit_seconds"])
    table = []
    for c, params in enumerate(cands):
        aucs = [results[c, k]["auc"] for k in range(cv)]
        accs = [results[c, k]["accuracy"] for k in range(cv)]
        table.append({"params": params, "mean_auc": float(np.mean(aucs)), "std_auc": float(np.std(aucs)),
                      "mean_accuracy": float(np.mean(accs)), "fold_auc": aucs,
                      "fit_seconds": float(sum(results[c, k]["fit_seconds"] for k in range(cv)))})
    return table


def refit(name: str, params: dict[str, Any], x: np.ndarray, y: np.ndarray, w: np.ndarray | None, cv: int,
          seed: int) -> Any:
    """The best pipeline on all training rows; SVMs also get a Platt sigmoid from out-of-fold scores."""
    pipe = models.make_pipeline(name, seed, params)
    model = models.PlattScaled(pipe, cv, seed + 1) if models.needs_platt(name) else pipe
    return models.fit_weighted(model, x, y, w)


def split_and_balance(table: pa.Table, test_fraction: float, balance: str, seed: int,
                      max_train_events: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(train row indices, test row indices, training sample weights or None).

    The split is stratified by (particle type, is_cc) and fixed by the seed; balancing (equal tracks
    and showers) touches training rows only.
    """
    pdg = table.column("pdgid").to_numpy()
    cc = table.column("is_cc").to_numpy(zero_copy_only=False)
    groups = models.interaction_groups(pdg, cc)
    y = features.label(pdg, cc)
    idx = np.arange(len(table))
    _, counts = np.unique(groups, return_counts=True)
    strat = groups if counts.min() >= 2 else None
    train_idx, test_idx = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=strat)
    train_idx = np.sort(train_idx)
    if balance == "undersample":
        train_idx = train_idx[models.undersample(y[train_idx], seed)]
    if max_train_events and len(train_idx) > max_train_events:
        rng = np.random.default_rng(seed)
        train_idx = np.sort(rng.choice(train_idx, max_train_events, replace=False))
    weights = models.balanced_weights(y[train_idx]) if balance == "weights" else None
    return train_idx, np.sort(test_idx), weights


def _group_counts(table: pa.Table, rows: np.ndarray) -> dict[str, int]:
    """Training events per (|pdgid|, is_cc), e.g. {"14_cc": 7000, "12_nc": 900}."""
    pdg = np.abs(table.column("pdgid").to_numpy()[rows])
    cc = table.column("is_cc").to_numpy(zero_copy_only=False)[rows]
    keys, counts = np.unique([f"{p}_{'cc' if c else 'nc'}" for p, c in zip(pdg, cc, strict=True)],
                             return_counts=True)
    return {str(k): int(n) for k, n in zip(keys, counts, strict=True)}


def train(data: str, model: str, out: str, workers: int = 1, search: str = "grid", n_iter: int = 8, cv: int = 3,
          balance: str = "undersample", test_fraction: float = 0.25, seed: int = 42,
          max_train_events: int | None = 20_000, skip_bad: bool = False,
          command: list[str] | None = None) -> dict[str, Any]:
    """Search, refit, evaluate on the held-out split, and publish the model artefact atomically."""
    if model not in models.MODELS:
        raise InputError(f"unknown model {model!r}; expected one of {models.MODELS}")
    if balance not in models.BALANCING:
        raise InputError(f"unknown balancing {balance!r}; expected one of {models.BALANCING}")
    started = time.time()
    table, skipped = load_table(data, need_truth=True, skip_bad=skip_bad)
    runtime.init_ray()
    x_all = features.feature_matrix(table)
    y_all = features.label(table.column("pdgid").to_numpy(), table.column("is_cc").to_numpy(zero_copy_only=False))
    if len(np.unique(y_all)) < 2:
        raise InputError(f"{data}: training needs both tracks and showers; found only "
                         f"{'showers' if y_all[0] else 'tracks'}")
    train_idx, test_idx, w = split_and_balance(table, test_fraction, balance, seed, max_train_events)
    x, y = x_all[train_idx], y_all[train_idx]
    cands = candidates(model, search, n_iter, seed)
    log.info("%s: %d events (%d train after %s balancing, %d test); %d candidates x %d folds on %d Ray workers",
             model, len(table), len(train_idx), balance, len(test_idx), len(cands), cv, workers)
    t0 = time.perf_counter()
    cv_table = search_cv(model, cands, x, y, w, cv, workers, seed)
    tune_s = time.perf_counter() - t0
    best = max(cv_table, key=lambda r: r["mean_auc"])
    t1 = time.perf_counter()
    final = refit(model, best["params"], x, y, w, cv, seed)
    refit_s = time.perf_counter() - t1
    test = table.take(pa.array(test_idx))
    analysis, pngs = analyse(final, model, test)
    meta = {
        "format": FORMAT, "model": model, "params": best["params"], "features": list(features.FEATURES),
        "label": features.LABEL, "label_definition": features.LABEL_DEFINITION,
        "balance": balance, "seed": seed, "cv_folds": cv, "search": search, "n_candidates": len(cands),
        "data": data, "n_events": len(table), "n_train": len(train_idx), "n_test": len(test_idx),
        "skipped_events": skipped,
        "train_groups": _group_counts(table, train_idx), "cv_best": best, "test_metrics": analysis["summary"],
        "timing": {"workers": workers, "tune_seconds": round(tune_s, 2), "refit_seconds": round(refit_s, 2)},
        "versions": {"neutrino_ray": neutrino_ray.__version__, "scikit-learn": sklearn.__version__,
                     "numpy": np.__version__, "python": platform.python_version()},
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    with storage.Output(out, command=command, inputs=[data], started=started) as output:
        write_model(output, final, meta)
        output.write("cv_results.json", json.dumps(cv_table, indent=2, default=str).encode())
        output.write("analysis/report.json", json.dumps(analysis, indent=2, default=str).encode())
        for name, png in pngs.items():
            output.write(f"analysis/{name}", png)
        manifest = output.commit(kind="km3net-train", model=model, rows={"train": len(train_idx),
                                                                          "test": len(test_idx)},
                                 events=len(table), test_metrics=analysis["summary"], timing=meta["timing"])
    s = analysis["summary"]
    log.info("%s: best %s (CV AUC %.4f ± %.4f); test accuracy %.4f, AUC %.4f; tuning %.1f s on %d workers; "
             "model at %s", model, best["params"], best["mean_auc"], best["std_auc"], s["accuracy"], s["roc_auc"],
             tune_s, workers, out)
    return {**manifest, "metadata": meta}
