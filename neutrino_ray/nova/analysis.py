"""Evaluation of NOvA classifiers and regressors for analysts: a JSON report, PNG plots and a Markdown summary.

Pure numpy/pyarrow + matplotlib (no Ray, no storage): :func:`analyse` takes one task's scored events (truth
fields, ``visible_energy`` and the prediction columns) and returns everything the I/O wrapper publishes. This
module computes the report; :mod:`.analysis_render` draws its plots and writes its Markdown (split by job).

Conventions (also written into each report under ``definitions``):

- Events outside the task (class -1 / target NaN) and events with a non-finite prediction are counted
  and skipped; every metric is over the remaining in-task events.
- numu-cc: the score is ``prob_numu-CC``; an event is selected (called ν_μ CC) when score >= threshold,
  and that decision is the predicted class everywhere (confusion matrix, accuracy). Multi-class tasks use
  the ``predicted`` column (argmax).
- Efficiencies come with the binomial error sqrt(p(1-p)/n) and a central 68.27% Clopper–Pearson interval.
- Energy bins are [lo, hi) in GeV; the last is open-ended (hi = None in JSON); empty bins are left out.
- Regression residual r: (reco − true)/true for energy, reco − true for y (y can be 0). The 68% width is
  half the 16–84% interquantile range of r; RMS is sqrt(mean(r²)) (includes the bias), std excludes it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
from scipy.stats import beta
from sklearn.metrics import roc_auc_score

from neutrino_ray.nova import analysis_render as render
from neutrino_ray.nova import format as fmt
from neutrino_ray.nova import targets
from neutrino_ray.nova.binning import ENERGY_EDGES, ENERGY_VARIABLES
from neutrino_ray.nova.binning import json_number as _num

Y_EDGES = np.round(np.linspace(0, 1, 11), 10)
THRESHOLDS = np.round(np.arange(101) * 0.01, 2)
CL = 0.6827  # central interval of ±1σ
QUANTILES = (0.16, 0.84)
SIGNAL = "numu-CC"


def binomial_efficiency(n: Any, k: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(p, sqrt(p(1-p)/n), 68.27% Clopper–Pearson lo, hi) elementwise for k of n; NaN where n == 0."""
    n = np.asarray(n, np.float64)
    k = np.asarray(k, np.float64)
    if np.any(k < 0) or np.any(k > n):
        raise ValueError("binomial_efficiency needs 0 <= k <= n")
    ok = n > 0
    safe_n = np.where(ok, n, 1.0)
    p = np.where(ok, k / safe_n, np.nan)
    err = np.where(ok, np.sqrt(np.clip(p * (1 - p), 0, None) / safe_n), np.nan)
    alpha = 1 - CL
    with np.errstate(invalid="ignore"):
        lo = np.where(k > 0, beta.ppf(alpha / 2, np.maximum(k, 1), n - k + 1), 0.0)
        hi = np.where(k < n, beta.ppf(1 - alpha / 2, k + 1, np.maximum(n - k, 1)), 1.0)
    return p, err, np.where(ok, lo, np.nan), np.where(ok, hi, np.nan)


def balanced_subsample(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """Sorted indices with every present class (label >= 0) undersampled, without replacement, to the
    smallest present class count; deterministic for a given seed."""
    labels = np.asarray(labels).ravel()
    classes, counts = np.unique(labels[labels >= 0], return_counts=True)
    if not len(classes):
        return np.zeros(0, np.int64)
    m = int(counts.min())
    rng = np.random.default_rng(seed)
    picks = [rng.choice(np.flatnonzero(labels == c), m, replace=False) for c in classes]  # classes, not events
    return np.sort(np.concatenate(picks)).astype(np.int64)


def _efficiency_rows(keys: list[dict[str, Any]], n: np.ndarray, k: np.ndarray) -> list[dict[str, Any]]:
    p, err, lo, hi = binomial_efficiency(n, k)
    return [{**key, "n": int(n[i]), "k": int(k[i]), "efficiency": _num(p[i]), "error": _num(err[i]),
             "interval68": [_num(lo[i]), _num(hi[i])]} for i, key in enumerate(keys)]


def efficiency_table(values: np.ndarray, edges: Sequence[float] | np.ndarray, selected: np.ndarray,
                     in_class: np.ndarray) -> list[dict[str, Any]]:
    """Selection efficiency of the ``in_class`` events in bins [lo, hi) of ``values``: one row per non-empty
    bin with ``bin`` [lo, hi] (hi None when open-ended), n, k (selected), efficiency, error, interval68."""
    edges = np.asarray(edges, np.float64)
    v = np.asarray(values, np.float64).ravel()
    use = np.asarray(in_class, bool).ravel() & np.isfinite(v) & (v >= edges[0]) & (v < edges[-1])
    nb = len(edges) - 1
    idx = np.searchsorted(edges, v[use], side="right") - 1
    n = np.bincount(idx, minlength=nb)
    k = np.bincount(idx, weights=np.asarray(selected, bool).ravel()[use], minlength=nb).round().astype(np.int64)
    bins = np.flatnonzero(n)
    keys = [{"bin": [_num(edges[b]), _num(edges[b + 1])]} for b in bins]
    return _efficiency_rows(keys, n[bins], k[bins])


def efficiency_by_category(codes: np.ndarray, selected: np.ndarray, in_class: np.ndarray,
                           name: Callable[[int], str]) -> list[dict[str, Any]]:
    """Selection efficiency of the ``in_class`` events per category code (rows sorted by code, each with
    code, name, n, k, efficiency, error, interval68)."""
    use = np.asarray(in_class, bool).ravel()
    c = np.asarray(codes).astype(np.int64).ravel()[use]
    u, inv = np.unique(c, return_inverse=True)
    n = np.bincount(inv, minlength=len(u))
    k = np.bincount(inv, weights=np.asarray(selected, bool).ravel()[use], minlength=len(u)).round().astype(np.int64)
    return _efficiency_rows([{"code": int(x), "name": name(int(x))} for x in u], n, k)


def interaction_name(code: int) -> str:
    return fmt.INTERACTION_NAMES[code] if 0 <= code < len(fmt.INTERACTION_NAMES) else f"code {code}"


def resolution_stats(r: np.ndarray) -> dict[str, Any]:
    """n, bias (mean, median), rms (sqrt mean r²), std, 16/84% quantiles and the 68% width (half their gap)."""
    r = np.asarray(r, np.float64).ravel()
    if not len(r):
        return {"n": 0, "bias_mean": None, "bias_median": None, "rms": None, "std": None, "q16": None,
                "q84": None, "width68": None}
    q16, q50, q84 = np.quantile(r, [QUANTILES[0], 0.5, QUANTILES[1]])
    return {"n": len(r), "bias_mean": _num(r.mean()), "bias_median": _num(q50), "rms": _num(np.sqrt(np.mean(r * r))),
            "std": _num(r.std()), "q16": _num(q16), "q84": _num(q84), "width68": _num((q84 - q16) / 2)}


def resolution_table(values: np.ndarray, r: np.ndarray, edges: Sequence[float] | np.ndarray) -> list[dict[str, Any]]:
    """:func:`resolution_stats` of the residuals ``r`` in bins [lo, hi) of ``values``; empty bins left out."""
    edges = np.asarray(edges, np.float64)
    v = np.asarray(values, np.float64).ravel()
    r = np.asarray(r, np.float64).ravel()
    idx = np.where(np.isfinite(v) & (v >= edges[0]) & (v < edges[-1]), np.searchsorted(edges, v, side="right") - 1,
                   -1)
    rows = []
    for b in range(len(edges) - 1):  # bins, not events
        rb = r[idx == b]
        if len(rb):
            rows.append({"bin": [_num(edges[b]), _num(edges[b + 1])], **resolution_stats(rb)})
    return rows


def _column(events: pa.Table, name: str, dtype: Any = np.float64) -> np.ndarray:
    return np.asarray(events.column(name).to_numpy(zero_copy_only=False), dtype)


def _check_columns(events: pa.Table, task: str) -> None:
    need = ["interaction", "finalstate", "nuenergy", "lepenergy", "visible_energy"]
    classes = targets.CLASSES.get(task)
    if classes:
        need += [f"prob_{c}" for c in classes]
        if len(classes) > 2:
            need.append("predicted")
    else:
        need.append("predicted")
    missing = [c for c in need if c not in events.column_names]
    if missing:
        raise ValueError(f"events for task {task!r} lack columns {missing}")


def analyse(task: str, events: pa.Table, threshold: float = 0.5, seed: int = 0
            ) -> tuple[dict[str, Any], dict[str, bytes], str]:
    """(report JSON-able dict, {"name.png": png bytes}, markdown summary) for one task's predictions."""
    targets.check_task(task)
    _check_columns(events, task)
    truth = {"interaction": _column(events, "interaction", np.int64),
             "finalstate": _column(events, "finalstate", np.int64),
             **{name: _column(events, name) for name in ENERGY_VARIABLES}}
    target, in_task = targets.targets(task, truth)
    not_in_task: dict[str, int] = {}
    if targets.is_classification(task):
        scores = np.stack([_column(events, f"prob_{c}") for c in targets.CLASSES[task]], axis=1)
        u, counts = np.unique(truth["interaction"][~in_task], return_counts=True)
        not_in_task.update({interaction_name(int(c)): int(n) for c, n in zip(u, counts)})
        bad = in_task & ~np.isfinite(scores).all(axis=1)
    else:
        scores = _column(events, "predicted")
        e = truth["nuenergy"]
        no_energy = ~(np.isfinite(e) & (e > 0))
        not_in_task["true ν energy <= 0 or not finite"] = int((~in_task & no_energy).sum())
        not_in_task["lepton energy not finite"] = int((~in_task & ~no_energy).sum())
        not_in_task = {k: v for k, v in not_in_task.items() if v}
        bad = in_task & ~np.isfinite(scores)
    skipped = {"not_in_task": not_in_task, "non_finite_prediction": int(bad.sum())}
    keep = in_task & ~bad
    if not keep.any():
        why = f": not in task {not_in_task}, non-finite prediction {int(bad.sum())}" if len(events) else ""
        raise ValueError(f"none of the {len(events)} events can be evaluated for task {task!r}{why}")
    report: dict[str, Any] = {
        "task": task, "task_type": "classification" if targets.is_classification(task) else "regression",
        "n_events": len(events), "n_in_task": int(in_task.sum()), "n_evaluated": int(keep.sum()),
        "n_skipped": int((~keep).sum()), "skipped": skipped, "seed": int(seed)}
    sub = {k: v[keep] for k, v in truth.items()}
    if targets.is_classification(task):
        return _classification(task, report, target[keep].astype(np.int64), scores[keep], sub, threshold, seed,
                                None if task == "numu-cc" else _column(events, "predicted", np.int64)[keep])
    return _regression(task, report, target[keep], scores[keep], sub)


# ---------------------------------------------------------------- classification


def notebook_figures(y: np.ndarray, pred: np.ndarray, truth: dict[str, np.ndarray]) -> dict[str, Any]:
    """The figures the course notebooks (the seed analyses of the real files) quote, on a test file at its
    natural mix, with the decision ``pred`` (threshold 0.5 for numu-cc, argmax otherwise):

    - natural accuracy and balanced accuracy (mean of the per-class recalls);
    - ``by_mode``: per interaction mode (QE, RES, DIS, other), the accuracy on that mode's CC events
      (ν_μ, ν_e and ν_τ CC; for numu-cc a ν_e CC event is right when rejected);
    - ``split``: for E_ν and E_lepton, the accuracy on the CC events above and below the median of the
      test file's CC events (the notebooks' high/low halves), and the median itself.
    """
    inter = truth["interaction"]
    cc = (inter >= 0) & (inter <= fmt.NUTAU_CC[-1])
    right = pred == y
    recalls = [float(np.mean(right[y == c])) for c in np.unique(y)]
    out: dict[str, Any] = {"n": len(y), "accuracy": _num(np.mean(right)),
                           "balanced_accuracy": _num(np.mean(recalls)), "n_cc": int(cc.sum()), "by_mode": {},
                           "split": {}}
    for m, name in enumerate(fmt.MODES):
        sel = cc & (inter % 4 == m)
        out["by_mode"][name] = {"n": int(sel.sum()), "accuracy": _num(np.mean(right[sel])) if sel.any() else None}
    for var in ("nuenergy", "lepenergy"):
        if not cc.any():
            break
        median = float(np.median(truth[var][cc]))
        hi, lo = cc & (truth[var] > median), cc & (truth[var] <= median)
        out["split"][var] = {"median": median, "n_high": int(hi.sum()), "n_low": int(lo.sum()),
                             "high": _num(np.mean(right[hi])) if hi.any() else None,
                             "low": _num(np.mean(right[lo])) if lo.any() else None}
    return out


def _confusion(y: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    return np.bincount(y * k + pred, minlength=k * k).reshape(k, k)


def _efficiencies(truth: dict[str, np.ndarray], selected: np.ndarray, in_class: np.ndarray) -> dict[str, Any]:
    inter = truth["interaction"]
    cc = in_class & (inter >= 0) & (inter <= fmt.NUTAU_CC[-1])
    out: dict[str, Any] = {
        "n": int(in_class.sum()), "k": int((selected & in_class).sum()),
        "by_interaction": efficiency_by_category(inter, selected, in_class, interaction_name),
        "by_mode": efficiency_by_category(inter % 4, selected, cc, lambda c: fmt.MODES[c]),
        "by_finalstate": efficiency_by_category(truth["finalstate"], selected, in_class, fmt.finalstate_name)}
    p, err, lo, hi = binomial_efficiency(out["n"], out["k"])
    out.update(efficiency=_num(p), error=_num(err), interval68=[_num(lo), _num(hi)])
    for var in ENERGY_VARIABLES:
        out[f"vs_{var}"] = efficiency_table(truth[var], ENERGY_EDGES, selected, in_class)
    return out


def _auc(y: np.ndarray, score: np.ndarray) -> float | None:
    return _num(roc_auc_score(y, score)) if 0 < y.sum() < len(y) else None


def _classification(task: str, report: dict[str, Any], y: np.ndarray, scores: np.ndarray,
                    truth: dict[str, np.ndarray], threshold: float, seed: int, predicted: np.ndarray | None
                    ) -> tuple[dict[str, Any], dict[str, bytes], str]:
    classes = targets.CLASSES[task]
    k = len(classes)
    binary = predicted is None
    pred = (scores[:, 1] >= threshold).astype(np.int64) if predicted is None else predicted
    if pred.min() < 0 or pred.max() >= k:
        raise ValueError(f"predicted class indices must lie in 0..{k - 1} for task {task!r}")
    cm = _confusion(y, pred, k)
    rows, cols = cm.sum(axis=1), cm.sum(axis=0)
    recall = [_num(cm[i, i] / rows[i]) if rows[i] else None for i in range(k)]
    precision = [_num(cm[i, i] / cols[i]) if cols[i] else None for i in range(k)]
    defined = [r for r in recall if r is not None]
    bal = balanced_subsample(y, seed)
    report.update({
        "classes": list(classes), "threshold": float(threshold) if binary else None,
        "class_counts": dict(zip(classes, map(int, rows))),
        "accuracy": _num(np.mean(pred == y)),
        "balanced_accuracy": _num(np.mean(defined)),
        "balanced_test_set": {"n": len(bal), "class_counts": dict(zip(classes, map(int, np.bincount(y[bal],
                                                                                                  minlength=k)))),
                              "accuracy": _num(np.mean(pred[bal] == y[bal])), "seed": int(seed)},
        "recall": dict(zip(classes, recall)), "precision": dict(zip(classes, precision)),
        "confusion_matrix": {"labels": list(classes), "rows": "true class", "columns": "predicted class",
                             "counts": cm.tolist(),
                             "row_normalised": [[_num(c / rows[i]) if rows[i] else None for c in cm[i]]
                                                for i in range(k)]}})
    if binary:
        _binary_metrics(report, y, scores[:, 1], threshold, bal, truth)
    else:
        per = {c: _auc(y == i, scores[:, i]) for i, c in enumerate(classes)}
        ok = [a for a in per.values() if a is not None]
        report["roc_auc_ovr"] = {"per_class": per, "macro": _num(np.mean(ok)) if ok else None}
        report["efficiency"] = {c: _efficiencies(truth, pred == i, y == i) for i, c in enumerate(classes)}
    report["notebook"] = notebook_figures(y, pred, truth)
    report["definitions"] = _definitions(task, binary)
    plots = render.classification_plots(task, report, y, scores, truth)
    return report, plots, render.classification_markdown(report, sorted(plots))


def _binary_metrics(report: dict[str, Any], y: np.ndarray, s: np.ndarray, threshold: float, bal: np.ndarray,
                    truth: dict[str, np.ndarray]) -> None:
    sig = y == 1
    selected = s >= threshold
    n_sig, n_bkg = int(sig.sum()), int((~sig).sum())
    report["roc_auc"] = _auc(sig, s)

    def passing(x: np.ndarray) -> np.ndarray:  # events with score >= each threshold
        return len(x) - np.searchsorted(np.sort(x), THRESHOLDS, side="left")

    ps, pb = passing(s[sig]), passing(s[~sig])
    bs, bb = passing(s[bal][sig[bal]]), passing(s[bal][~sig[bal]])
    with np.errstate(invalid="ignore", divide="ignore"):
        eff, acc_b = ps / n_sig, pb / n_bkg
        curves = {"accuracy": (ps + n_bkg - pb) / len(s),
                  "accuracy_balanced": (bs + int((~sig[bal]).sum()) - bb) / len(bal),
                  "balanced_accuracy": (eff + 1 - acc_b) / 2, "efficiency": eff, "background_acceptance": acc_b,
                  "purity": ps / (ps + pb)}
    report["vs_threshold"] = {"threshold": THRESHOLDS.tolist(),
                              **{k: [_num(v) for v in arr] for k, arr in curves.items()}}
    best = {}
    for name in ("accuracy", "accuracy_balanced", "balanced_accuracy"):
        arr = np.nan_to_num(curves[name], nan=-1.0)
        i = int(np.argmax(arr))
        best[name] = {"threshold": float(THRESHOLDS[i]), "value": _num(curves[name][i])}
    report["best_threshold"] = best
    n_sel, k_sel = int(selected.sum()), int((selected & sig).sum())
    p, err, lo, hi = binomial_efficiency(n_sig, k_sel)
    pb_, eb, lob, hib = binomial_efficiency(n_bkg, int((selected & ~sig).sum()))
    report["at_threshold"] = {
        "threshold": float(threshold), "n_selected": n_sel, "n_signal_selected": k_sel,
        "efficiency": _num(p), "efficiency_error": _num(err), "efficiency_interval68": [_num(lo), _num(hi)],
        "purity": _num(k_sel / n_sel) if n_sel else None,
        "background_acceptance": _num(pb_), "background_acceptance_error": _num(eb),
        "background_acceptance_interval68": [_num(lob), _num(hib)]}
    report["efficiency"] = {SIGNAL: _efficiencies(truth, selected, sig)}
    inter = truth["interaction"]
    report["background_acceptance"] = {
        "n": n_bkg, "k": int((selected & ~sig).sum()),
        "by_interaction": efficiency_by_category(inter, selected, ~sig, interaction_name)}


def _definitions(task: str, binary: bool) -> dict[str, str]:
    d = {
        "skipped": "events outside the task (targets.class_labels == -1) or with non-finite scores; excluded",
        "accuracy": "fraction of evaluated events whose predicted class is the true class (natural class mix)",
        "balanced_accuracy": "mean over present classes of the per-class recall",
        "balanced_test_set": "every present class undersampled (seeded, without replacement) to the smallest "
                             "class count; accuracy on that subset",
        "efficiency": "k of n events of a true class selected as that class; error sqrt(p(1-p)/n); interval68 "
                      "central 68.27% Clopper-Pearson",
        "energy_bins": "[lo, hi) GeV, last bin open-ended (hi null); empty bins omitted; visible_energy is the "
                       "calorimetric sum of the event's pixels",
        "by_mode": "CC events only (interaction code % 4: QE, RES, DIS, other)",
        "notebook": "the course notebooks' figures on this test set at its natural mix: accuracy, balanced "
                    "accuracy, accuracy on each mode's CC events, and accuracy on the CC events above / at or "
                    "below the median E_nu and E_lepton of the test set's CC events",
    }
    if binary:
        d.update({
            "selection": "selected (predicted numu-CC) when prob_numu-CC >= threshold; this is the predicted class "
                         "for accuracy and the confusion matrix",
            "roc_auc": "area under the ROC curve of prob_numu-CC for true numu-CC against everything else in task",
            "purity": "true numu-CC among selected events (depends on the natural class mix of the test set)",
            "background_acceptance": "fraction of non-numu-CC events selected, per interaction type",
            "vs_threshold": "metrics at thresholds 0..1 step 0.01 (selection: score >= threshold)"})
    else:
        d.update({"selection": "predicted class = the 'predicted' column (argmax of the probabilities)",
                  "roc_auc_ovr": "one-vs-rest AUC of prob_<class> per class (null if the class or its complement "
                                 "is absent); macro = mean of the defined ones"})
    return d


# ---------------------------------------------------------------- regression


def _regression(task: str, report: dict[str, Any], true: np.ndarray, reco: np.ndarray,
                truth: dict[str, np.ndarray]) -> tuple[dict[str, Any], dict[str, bytes], str]:
    r = (reco - true) / true if task == "energy" else reco - true
    report.update({
        "target": targets.REGRESSION[task],
        "residual": "(reco - true) / true" if task == "energy" else "reco - true (absolute: y can be 0)",
        "true_mean": _num(true.mean()), "predicted_mean": _num(reco.mean()),
        "overall": resolution_stats(r),
        "vs_true_energy": resolution_table(truth["nuenergy"], r, ENERGY_EDGES)})
    if task == "y":
        report["vs_true_y"] = resolution_table(true, r, np.append(Y_EDGES[:-1], np.inf))
    report["definitions"] = {
        "skipped": "events with no defined target (true ν energy <= 0 or non-finite, or non-finite lepton "
                   "energy for y) or a non-finite prediction; excluded",
        "bias": "mean and median of the residual r", "rms": "sqrt(mean(r^2)), includes the bias",
        "std": "standard deviation of r", "width68": "half the 16-84% interquantile range of r",
        "energy_bins": "true ν energy [lo, hi) GeV, last bin open-ended (hi null); empty bins omitted",
        **({"vs_true_y": "bins of true y, 0.1 wide; the last [0.9, inf) also holds y >= 1"} if task == "y" else {})}
    plots = render.regression_plots(task, report, true, reco, r)
    return report, plots, render.regression_markdown(report, sorted(plots))
