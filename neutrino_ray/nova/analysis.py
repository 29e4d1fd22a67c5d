"""Evaluation of NOvA classifiers and regressors for analysts: a JSON report, PNG plots and a Markdown summary.

Pure numpy/pyarrow + matplotlib (no Ray, no storage): :func:`analyse` takes one task's scored events (truth
fields, ``visible_energy`` and the prediction columns) and returns everything the I/O wrapper publishes.

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

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
from scipy.stats import beta
from sklearn.metrics import roc_auc_score, roc_curve

from neutrino_ray.nova import format as fmt
from neutrino_ray.nova import targets
from neutrino_ray.plotting import png, pyplot

ENERGY_EDGES = np.array([0, 0.5, 1, 1.5, 2, 2.5, 3, 4, 5, 7, 10, 20, 80, np.inf])  # GeV; last bin 80+
Y_EDGES = np.round(np.linspace(0, 1, 11), 10)
THRESHOLDS = np.round(np.arange(101) * 0.01, 2)
CL = 0.6827  # central interval of ±1σ
QUANTILES = (0.16, 0.84)
ENERGY_VARIABLES = {"nuenergy": "true ν energy (GeV)", "lepenergy": "true lepton energy (GeV)",
                    "visible_energy": "visible (total) energy (GeV)"}
SIGNAL = "numu-CC"


def _num(x: Any) -> float | None:
    """Plain float for JSON; None for NaN/inf (undefined)."""
    v = float(x)
    return v if math.isfinite(v) else None


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


def notebook_line(nb: dict[str, Any]) -> str:
    """The figures of :func:`notebook_figures` in one line (``nova evaluate`` prints it; summary.md has it)."""
    modes = ", ".join(f"{m} {_fmt(v['accuracy'], '.3f')}" for m, v in nb["by_mode"].items() if v["n"])
    halves = "; ".join(f"{var} above / below the CC median {v['median']:.2f} GeV: {_fmt(v['high'], '.3f')} / "
                       f"{_fmt(v['low'], '.3f')}" for var, v in nb["split"].items())
    return (f"balanced accuracy {_fmt(nb['balanced_accuracy'], '.3f')}, accuracy {_fmt(nb['accuracy'], '.3f')} on "
            f"{nb['n']} events; accuracy on the CC events of each mode: {modes}; {halves}")


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
    plots = _classification_plots(task, report, y, scores, truth)
    return report, plots, _classification_markdown(report, sorted(plots))


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


def _bin_label(b: list[float | None]) -> str:
    return f"{b[0]:g}+" if b[1] is None else f"{b[0]:g}–{b[1]:g}"


def _efficiency_plot(series: dict[str, list[dict[str, Any]]], xlabel: str, ylabel: str, title: str) -> bytes:
    plt = pyplot()
    labels = [_bin_label([float(ENERGY_EDGES[i]), _num(ENERGY_EDGES[i + 1])]) for i in range(len(ENERGY_EDGES) - 1)]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    width = 0.8 / max(len(series), 1)
    for j, (name, rows) in enumerate(series.items()):
        x = np.array([labels.index(_bin_label(r["bin"])) for r in rows], float) + (j - (len(series) - 1) / 2) * width
        p = np.array([r["efficiency"] for r in rows], float)
        lo = np.array([r["interval68"][0] for r in rows], float)
        hi = np.array([r["interval68"][1] for r in rows], float)
        ax.errorbar(x, p, yerr=[p - lo, hi - p], fmt="o", capsize=3, label=name)
    ax.set_xticks(range(len(labels)), labels=labels, rotation=45)
    ax.set(xlabel=xlabel, ylabel=ylabel, ylim=(-0.02, 1.05), title=title)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=8)
    return png(fig)


def _classification_plots(task: str, report: dict[str, Any], y: np.ndarray, scores: np.ndarray,
                          truth: dict[str, np.ndarray]) -> dict[str, bytes]:
    plt = pyplot()
    classes = report["classes"]
    k = len(classes)
    binary = task == "numu-cc"
    out: dict[str, bytes] = {}

    cm = np.array(report["confusion_matrix"]["counts"])
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.3 * k + 2.5, 1.2 * k + 2))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{cm[i, j]}\n{norm[i, j]:.1%}", ha="center", va="center", fontsize=8,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set(xticks=range(k), yticks=range(k), xlabel="predicted", ylabel="true", title=f"Confusion matrix ({task})")
    ax.set_xticklabels(classes, rotation=30)
    ax.set_yticklabels(classes)
    out["confusion_matrix.png"] = png(fig)

    if binary:
        sig, s = y == 1, scores[:, 1]
        if report["roc_auc"] is not None:
            fpr, tpr, _ = roc_curve(sig, s)
            at = report["at_threshold"]
            fig, ax = plt.subplots(figsize=(5, 4.5))
            ax.plot(fpr, tpr, label=f"AUC {report['roc_auc']:.4f}")
            ax.plot([at["background_acceptance"]], [at["efficiency"]], "o", label=f"threshold {at['threshold']:g}")
            ax.plot([0, 1], [0, 1], "k:", lw=1)
            ax.set(xlabel="background acceptance (false-positive rate)", ylabel="ν_μ CC efficiency (TPR)",
                   title="ROC: ν_μ CC against the rest")
            ax.legend(loc="lower right")
            out["roc.png"] = png(fig)
        vt = report["vs_threshold"]
        fig, ax = plt.subplots(figsize=(6, 4))
        for key, lab, ls in (("accuracy", "natural test set", "-"), ("accuracy_balanced", "balanced test set", "-"),
                             ("balanced_accuracy", "balanced accuracy (mean recall)", "--")):
            ax.plot(vt["threshold"], np.array(vt[key], float), ls=ls, label=lab)
        ax.axvline(report["at_threshold"]["threshold"], color="k", ls=":", lw=1)
        ax.set(xlabel="threshold on prob_numu-CC", ylabel="accuracy", xlim=(0, 1), title="Accuracy vs threshold")
        ax.grid(alpha=0.3)
        ax.legend()
        out["accuracy_vs_threshold.png"] = png(fig)
        fig, ax = plt.subplots(figsize=(6, 4))
        bins = np.linspace(0, 1, 51)
        ax.hist([s[~sig], s[sig]], bins=bins, histtype="step", label=["background", "ν_μ CC"])
        ax.axvline(report["at_threshold"]["threshold"], color="k", ls=":", lw=1)
        ax.set(xlabel="prob_numu-CC", ylabel="events", yscale="log", title="Score distribution")
        ax.legend()
        out["score_distribution.png"] = png(fig)
    else:
        fig, ax = plt.subplots(figsize=(5, 4.5))
        for i, c in enumerate(classes):
            a = report["roc_auc_ovr"]["per_class"][c]
            if a is not None:
                fpr, tpr, _ = roc_curve(y == i, scores[:, i])
                ax.plot(fpr, tpr, label=f"{c}: AUC {a:.4f}")
        ax.plot([0, 1], [0, 1], "k:", lw=1)
        ax.set(xlabel="false-positive rate", ylabel="true-positive rate (recall)", title=f"One-vs-rest ROC ({task})")
        ax.legend(loc="lower right", fontsize=8)
        out["roc.png"] = png(fig)

    eff = report["efficiency"]
    ylabel = "ν_μ CC efficiency" if binary else "efficiency (recall)"
    for var, xlabel in ENERGY_VARIABLES.items():
        out[f"efficiency_vs_{var}.png"] = _efficiency_plot({c: e[f"vs_{var}"] for c, e in eff.items()}, xlabel,
                                                           ylabel, f"Efficiency vs {xlabel.split(' (')[0]} ({task})")
    bars = [(r, c) for c, e in eff.items() for r in e["by_interaction"]]
    if binary:
        bars += [(r, "background acceptance") for r in report["background_acceptance"]["by_interaction"]]
    bars.sort(key=lambda rc: rc[0]["code"])
    fig, ax = plt.subplots(figsize=(max(5.0, 0.45 * len(bars) + 2), 4.2))
    groups = list(dict.fromkeys(c for _, c in bars))
    for g in groups:
        idx = [i for i, (_, c) in enumerate(bars) if c == g]
        p = np.array([bars[i][0]["efficiency"] for i in idx], float)
        lo = np.array([bars[i][0]["interval68"][0] for i in idx], float)
        hi = np.array([bars[i][0]["interval68"][1] for i in idx], float)
        ax.bar(idx, p, yerr=[p - lo, hi - p], capsize=3, label=g)
    ax.set_xticks(range(len(bars)), labels=[r["name"] for r, _ in bars], rotation=60, ha="right")
    ax.set(ylabel="fraction selected" if binary else "fraction classified as true class", ylim=(0, 1.05),
           title=f"Efficiency by interaction type ({task})")
    ax.legend(fontsize=8)
    out["efficiency_by_interaction.png"] = png(fig)
    return out


def _fmt(x: float | None, spec: str = ".4f") -> str:
    return "n/a" if x is None else format(x, spec)


def _pm(r: dict[str, Any]) -> str:
    return f"{_fmt(r['efficiency'], '.3f')} ± {_fmt(r['error'], '.3f')}"


def _header(report: dict[str, Any]) -> list[str]:
    why = [f"not in task: {', '.join(f'{k} {v}' for k, v in report['skipped']['not_in_task'].items())}"]
    why = why[:1] if report["skipped"]["not_in_task"] else []
    if report["skipped"]["non_finite_prediction"]:
        why.append(f"non-finite prediction: {report['skipped']['non_finite_prediction']}")
    skipped = "; ".join(why) or "none"
    return [f"# NOvA evaluation: {report['task']}", "",
            f"{report['n_events']} events, {report['n_in_task']} in the task, {report['n_evaluated']} evaluated, "
            f"{report['n_skipped']} skipped ({skipped}).", ""]


def _classification_markdown(report: dict[str, Any], plots: list[str]) -> str:
    bt = report["balanced_test_set"]
    lines = _header(report)
    lines += [f"- **accuracy** (natural test set): {_fmt(report['accuracy'])}",
              f"- **balanced accuracy** (mean per-class recall): {_fmt(report['balanced_accuracy'])}",
              f"- accuracy on the balanced test set ({bt['n']} events, seed {bt['seed']}): {_fmt(bt['accuracy'])}"]
    if "roc_auc" in report:
        at, best = report["at_threshold"], report["best_threshold"]
        lines += [f"- **ROC AUC**: {_fmt(report['roc_auc'])}",
                  f"- at threshold {at['threshold']:g}: efficiency {_fmt(at['efficiency'])}, purity "
                  f"{_fmt(at['purity'])}, background acceptance {_fmt(at['background_acceptance'])}",
                  f"- best threshold: {best['accuracy']['threshold']:g} (natural accuracy "
                  f"{_fmt(best['accuracy']['value'])}), {best['accuracy_balanced']['threshold']:g} (balanced "
                  f"{_fmt(best['accuracy_balanced']['value'])})"]
    else:
        lines.append(f"- **macro one-vs-rest AUC**: {_fmt(report['roc_auc_ovr']['macro'])}")
    lines += ["", "| class | events | recall | precision |" + ("" if "roc_auc" in report else " AUC |"),
              "|---|---:|---:|---:|" + ("" if "roc_auc" in report else "---:|")]
    for c in report["classes"]:
        row = (f"| {c} | {report['class_counts'][c]} | {_fmt(report['recall'][c])} | "
               f"{_fmt(report['precision'][c])} |")
        if "roc_auc_ovr" in report:
            row += f" {_fmt(report['roc_auc_ovr']['per_class'][c])} |"
        lines.append(row)
    lines += ["", "Efficiency by interaction type (± binomial error):", "",
              "| interaction | class | events | selected | fraction |", "|---|---|---:|---:|---:|"]
    rows = [(r, c) for c, e in report["efficiency"].items() for r in e["by_interaction"]]
    if "background_acceptance" in report:
        rows += [(r, "background") for r in report["background_acceptance"]["by_interaction"]]
    for r, c in sorted(rows, key=lambda rc: rc[0]["code"]):
        lines.append(f"| {r['name']} | {c} | {r['n']} | {r['k']} | {_pm(r)} |")
    lines += ["", f"As the course notebooks measured it: {notebook_line(report['notebook'])}."]
    lines += ["", "Plots: " + ", ".join(plots), ""]
    return "\n".join(lines)


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
    plots = _regression_plots(task, report, true, reco, r)
    return report, plots, _regression_markdown(report, sorted(plots))


def _regression_plots(task: str, report: dict[str, Any], true: np.ndarray, reco: np.ndarray,
                      r: np.ndarray) -> dict[str, bytes]:
    plt = pyplot()
    from matplotlib.colors import LogNorm

    out: dict[str, bytes] = {}
    label = "ν energy (GeV)" if task == "energy" else "y"
    if task == "energy":
        hi = float(np.quantile(np.concatenate([true, reco]), 0.995))
        lim = (0.0, hi if hi > 0 else 1.0)
    else:
        lim = (min(0.0, float(np.quantile(reco, 0.005))), max(1.0, float(np.quantile(reco, 0.995))))
    h, xe, ye = np.histogram2d(true, reco, bins=80, range=[lim, lim])
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    m = ax.pcolormesh(xe, ye, np.ma.masked_equal(h.T, 0), norm=LogNorm(vmin=1, vmax=max(2.0, h.max())),
                      cmap="viridis")
    fig.colorbar(m, ax=ax, label="events")
    ax.plot(lim, lim, "r:", lw=1)
    ax.set(xlabel=f"true {label}", ylabel=f"predicted {label}", title=f"True vs predicted ({task})")
    out["true_vs_reco.png"] = png(fig)

    rows = report["vs_true_energy"]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(x, np.array([b["bias_median"] for b in rows], float), "o-", label="median bias")
    ax.plot(x, np.array([b["width68"] for b in rows], float), "s-", label="68% width")
    ax.plot(x, np.array([b["rms"] for b in rows], float), "^:", label="RMS")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(x, labels=[_bin_label(b["bin"]) for b in rows], rotation=45)
    rlabel = "(reco − true)/true" if task == "energy" else "reco − true"
    ax.set(xlabel="true ν energy (GeV)", ylabel=rlabel, title=f"Resolution vs true energy ({task})")
    ax.grid(alpha=0.3)
    ax.legend()
    out["resolution_vs_energy.png"] = png(fig)

    lo, hi = (float(q) for q in np.quantile(r, [0.005, 0.995]))
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(np.clip(r, lo, hi), bins=100, range=(lo, hi), histtype="stepfilled", alpha=0.7)
    o = report["overall"]
    ax.axvline(o["bias_median"], color="k", ls=":", lw=1)
    ax.set(xlabel=f"r = {rlabel} (clipped to its 0.5–99.5% range)",
           ylabel="events", title=f"Residuals ({task}): median {o['bias_median']:.3g}, 68% width {o['width68']:.3g}")
    out["residual_hist.png"] = png(fig)
    return out


def _regression_markdown(report: dict[str, Any], plots: list[str]) -> str:
    o = report["overall"]
    lines = _header(report)
    lines += [f"Target: {report['target']}; residual r = {report['residual']}.", "",
              f"- **68% width** of r: {_fmt(o['width68'])}",
              f"- **bias**: median {_fmt(o['bias_median'])}, mean {_fmt(o['bias_mean'])}",
              f"- RMS {_fmt(o['rms'])}, std {_fmt(o['std'])}", "",
              "| true ν energy (GeV) | events | median bias | mean bias | 68% width | RMS |",
              "|---|---:|---:|---:|---:|---:|"]
    for b in report["vs_true_energy"]:
        lines.append(f"| {_bin_label(b['bin'])} | {b['n']} | {_fmt(b['bias_median'])} | {_fmt(b['bias_mean'])} | "
                     f"{_fmt(b['width68'])} | {_fmt(b['rms'])} |")
    lines += ["", "Plots: " + ", ".join(plots), ""]
    return "\n".join(lines)
