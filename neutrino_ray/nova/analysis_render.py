"""The rendering half of :mod:`.analysis`: its reports as PNG plots and a Markdown summary.

Split from :mod:`.analysis` by job (issue 29: no module over 600 lines): :mod:`.analysis` computes the report
(pure numbers, JSON-able), this module draws and writes it; :func:`.analysis.analyse` calls it last.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from sklearn.metrics import roc_curve

from neutrino_ray.nova.binning import ENERGY_EDGES, ENERGY_VARIABLES
from neutrino_ray.nova.binning import json_number as _num
from neutrino_ray.plotting import png, pyplot


def _fmt(x: float | None, spec: str = ".4f") -> str:
    return "n/a" if x is None else format(x, spec)


def notebook_line(nb: dict[str, Any]) -> str:
    """The figures of :func:`.analysis.notebook_figures` in one line (``nova evaluate`` prints it, summary.md
    has it)."""
    modes = ", ".join(f"{m} {_fmt(v['accuracy'], '.3f')}" for m, v in nb["by_mode"].items() if v["n"])
    halves = "; ".join(f"{var} above / below the CC median {v['median']:.2f} GeV: {_fmt(v['high'], '.3f')} / "
                       f"{_fmt(v['low'], '.3f')}" for var, v in nb["split"].items())
    return (f"balanced accuracy {_fmt(nb['balanced_accuracy'], '.3f')}, accuracy {_fmt(nb['accuracy'], '.3f')} on "
            f"{nb['n']} events; accuracy on the CC events of each mode: {modes}; {halves}")


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


def classification_plots(task: str, report: dict[str, Any], y: np.ndarray, scores: np.ndarray,
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


def classification_markdown(report: dict[str, Any], plots: list[str]) -> str:
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
    lines += ["", f"As the course notebooks measured it: {notebook_line(report['notebook'])}.",
              "", f"Efficiency tables by final state and against energy: {EFFICIENCY_TABLES}."]
    lines += ["", "Plots: " + ", ".join(plots), ""]
    return "\n".join(lines)


EFFICIENCY_TABLES = "efficiency.md"  # beside summary.md (which stays a one-screen digest)


def efficiency_markdown(report: dict[str, Any]) -> str:
    """A classification report's efficiency tables in markdown (``efficiency.md``): for each class (for
    ``numu-cc`` the signal), by interaction mode on CC events, by final state, and against each energy variable."""
    lines = [f"# NOvA evaluation: {report['task']}: efficiency tables", "",
             "The fraction (± binomial error) of each class's true events that are classified as that class (at "
             "the threshold for a binary task, the arg-max class otherwise); report.json holds the same numbers "
             "with 68 % intervals."]
    for c, e in report["efficiency"].items():
        lines += ["", f"## {c}", "", "| mode (CC events) | events | selected | fraction |", "|---|---:|---:|---:|"]
        lines += [f"| {r['name']} | {r['n']} | {r['k']} | {_pm(r)} |" for r in e["by_mode"]]
        lines += _efficiency_lines(c, e)
    return "\n".join(lines) + "\n"


def _efficiency_lines(c: str, e: dict[str, Any]) -> list[str]:
    """A class's efficiency by final state, and against each energy variable in its bins (fraction ± binomial
    error, with the events in the bin)."""
    lines = ["", f"Efficiency of {c} by final state:", "", "| final state | events | selected | fraction |",
             "|---|---:|---:|---:|"]
    lines += [f"| {r['name']} | {r['n']} | {r['k']} | {_pm(r)} |" for r in e["by_finalstate"]]
    names = [v for v in ENERGY_VARIABLES if f"vs_{v}" in e]
    lines += ["", f"Efficiency of {c} against energy (fraction ± error (events) per bin):", "",
              "| bin (GeV) | " + " | ".join(ENERGY_VARIABLES[v] for v in names) + " |",
              "|---|" + "---:|" * len(names)]
    by_bin = {v: {tuple(r["bin"]): r for r in e[f"vs_{v}"]} for v in names}  # a table lists its non-empty bins
    for lo, hi in sorted({b for rows in by_bin.values() for b in rows}, key=lambda b: b[0]):
        cells = [by_bin[v].get((lo, hi)) for v in names]
        lines.append(f"| {lo:g}–{'' if hi is None or math.isinf(hi) else format(hi, 'g')} | "
                     + " | ".join(f"{_pm(r)} ({r['n']})" if r else "–" for r in cells) + " |")
    return lines


def regression_plots(task: str, report: dict[str, Any], true: np.ndarray, reco: np.ndarray,
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


def regression_markdown(report: dict[str, Any], plots: list[str]) -> str:
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
