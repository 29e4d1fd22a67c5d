"""Analysis of a track/shower classifier on labelled events: metrics (JSON) and plots (PNG)."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import numpy as np
import pyarrow as pa
from sklearn.inspection import permutation_importance
from sklearn.metrics import accuracy_score, confusion_matrix, roc_auc_score, roc_curve

from neutrino_ray import storage
from neutrino_ray.errors import InputError
from neutrino_ray.km3net import features, models
from neutrino_ray.km3net.artefact import load_model
from neutrino_ray.km3net.data import load_table
from neutrino_ray.plotting import png, pyplot

log = logging.getLogger("neutrino_ray")

ENERGY_EDGES = np.array([1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 100, 1e6])  # GeV
PERMUTATION_ROWS = 3000
PERMUTATION_REPEATS = 5


def _auc_scorer(model: Any, x: np.ndarray, y: np.ndarray) -> float:
    return float(roc_auc_score(y, models.shower_probability(model, x)))


def efficiency_vs_energy(energy: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> list[dict[str, Any]]:
    """Per true-energy bin: track efficiency (true tracks called tracks) and shower contamination
    (true showers called tracks, as a fraction of true showers)."""
    idx = np.digitize(energy, ENERGY_EDGES) - 1
    rows = []
    for b in range(len(ENERGY_EDGES) - 1):  # a dozen bins, not events
        sel = idx == b
        tracks, showers = sel & ~truth, sel & truth
        if not sel.any():
            continue
        rows.append({
            "energy_gev": [float(ENERGY_EDGES[b]), float(ENERGY_EDGES[b + 1])], "n_tracks": int(tracks.sum()),
            "n_showers": int(showers.sum()),
            "track_efficiency": float(np.mean(~pred[tracks])) if tracks.any() else None,
            "shower_contamination": float(np.mean(~pred[showers])) if showers.any() else None,
            "accuracy": float(np.mean(pred[sel] == truth[sel])),
        })
    return rows


def analyse(model: Any, model_name: str, table: pa.Table, energy_cut: float | None = None,
            seed: int = 0) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Metrics and plots for labelled events (the held-out split, or any labelled data)."""
    x = features.feature_matrix(table)
    truth = features.label(table.column("pdgid").to_numpy(), table.column("is_cc").to_numpy(zero_copy_only=False))
    p = models.shower_probability(model, x)
    pred = p >= 0.5
    energy = table.column("energy").to_numpy()
    two_classes = len(np.unique(truth)) == 2
    tn, fp, fn, tp = confusion_matrix(truth, pred, labels=[False, True]).ravel()
    summary = {"n_events": len(table), "accuracy": float(accuracy_score(truth, pred)),
               "roc_auc": float(roc_auc_score(truth, p)) if two_classes else None,
               "confusion": {"labels": ["track", "shower"], "track_as_track": int(tn), "track_as_shower": int(fp),
                             "shower_as_track": int(fn), "shower_as_shower": int(tp)}}
    report: dict[str, Any] = {"model": model_name, "label_definition": features.LABEL_DEFINITION,
                              "summary": summary, "efficiency_vs_energy": efficiency_vs_energy(energy, truth, pred)}
    if two_classes:
        rng = np.random.default_rng(seed)
        rows = rng.choice(len(x), min(len(x), PERMUTATION_ROWS), replace=False)
        imp = permutation_importance(model, x[rows], truth[rows], scoring=_auc_scorer, n_repeats=PERMUTATION_REPEATS,
                                     random_state=seed, n_jobs=1)
        report["permutation_importance_auc"] = sorted(
            ({"feature": f, "mean": float(m), "std": float(s)}
             for f, m, s in zip(features.FEATURES, imp.importances_mean, imp.importances_std, strict=True)),
            key=lambda r: -r["mean"])
    if model_name == "linear-svc":
        coef = model.pipeline_.named_steps["clf"].coef_.ravel()
        report["linear_svc_coefficients"] = dict(zip(features.FEATURES, map(float, coef), strict=True))
    sel = energy >= energy_cut if energy_cut else np.ones(len(table), bool)
    report["energy_cut_gev"] = energy_cut
    return report, _plots(report, table, truth, p, sel, energy_cut)


def _plots(report: dict[str, Any], table: pa.Table, truth: np.ndarray, p: np.ndarray, sel: np.ndarray,
           energy_cut: float | None) -> dict[str, bytes]:
    plt = pyplot()
    out: dict[str, bytes] = {}
    name = report["model"]
    if report["summary"]["roc_auc"] is not None:
        fpr, tpr, _ = roc_curve(truth, p)
        fig, ax = plt.subplots(figsize=(5, 4.5))
        ax.plot(fpr, tpr, label=f"{name}: AUC {report['summary']['roc_auc']:.3f}")
        ax.plot([0, 1], [0, 1], "k:", lw=1)
        ax.set(xlabel="tracks called showers (false-positive rate)", ylabel="showers called showers (TPR)",
               title="ROC (positive class: shower)")
        ax.legend(loc="lower right")
        out["roc.png"] = png(fig)

    c = report["summary"]["confusion"]
    m = np.array([[c["track_as_track"], c["track_as_shower"]], [c["shower_as_track"], c["shower_as_shower"]]])
    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    norm = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(2):
        for j in range(2):
            ax.text(j, i, f"{m[i, j]}\n{norm[i, j]:.1%}", ha="center", va="center",
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=["track", "shower"], yticklabels=["track", "shower"],
           xlabel="predicted", ylabel="true", title=f"Confusion matrix ({name})")
    out["confusion_matrix.png"] = png(fig)

    bins = report["efficiency_vs_energy"]
    centers = [np.sqrt(b["energy_gev"][0] * min(b["energy_gev"][1], 200)) for b in bins]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(centers, [b["track_efficiency"] for b in bins], "o-", label="track efficiency")
    ax.plot(centers, [b["shower_contamination"] for b in bins], "s-", label="shower contamination (called track)")
    ax.set(xscale="log", xlabel="true neutrino energy (GeV)", ylabel="fraction", ylim=(0, 1),
           title=f"Track classification vs energy ({name})")
    ax.set_xticks([1, 2, 5, 10, 20, 50, 100], labels=["1", "2", "5", "10", "20", "50", "100"])
    ax.minorticks_off()
    ax.grid(alpha=0.3)
    ax.legend()
    out["efficiency_vs_energy.png"] = png(fig)

    if "permutation_importance_auc" in report:
        imp = report["permutation_importance_auc"][:15][::-1]
        fig, ax = plt.subplots(figsize=(6, 5))
        ax.barh([r["feature"] for r in imp], [r["mean"] for r in imp], xerr=[r["std"] for r in imp])
        ax.set(xlabel="drop in AUC when shuffled", title=f"Permutation importance ({name})")
        out["feature_importance.png"] = png(fig)
    if "linear_svc_coefficients" in report:
        coef = sorted(report["linear_svc_coefficients"].items(), key=lambda kv: abs(kv[1]))
        fig, ax = plt.subplots(figsize=(6, 6))
        ax.barh([k for k, _ in coef], [v for _, v in coef], color=["tab:red" if v < 0 else "tab:blue" for _, v in coef])
        ax.set(xlabel="coefficient on standardised feature (> 0: shower-like)", title="Linear SVM coefficients")
        out["linear_svc_coefficients.png"] = png(fig)

    tx, ty, tz = (table.column(f"track_pos_{a}").to_numpy() for a in "xyz")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    h = axes[0].hist2d(tx, ty, bins=60, cmap="viridis")
    fig.colorbar(h[3], ax=axes[0], label="events")
    axes[0].set(xlabel="track start x (m)", ylabel="track start y (m)", title="Track start density (x–y)")
    h = axes[1].hist2d(np.hypot(tx, ty), tz, bins=60, cmap="viridis")
    fig.colorbar(h[3], ax=axes[1], label="events")
    axes[1].set(xlabel="track start r (m)", ylabel="track start z (m)", title="Track start density (r–z)")
    out["track_start_density.png"] = png(fig)

    lt, ls = table.column("gandalf_likelihood").to_numpy(), table.column("shower_likelihood").to_numpy()
    cut = f" (true E ≥ {energy_cut:g} GeV)" if energy_cut else ""
    rng = np.random.default_rng(0)
    show = rng.permutation(np.flatnonzero(sel))[:6000]
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for flag, colour, lab in ((False, "tab:blue", "tracks"), (True, "tab:orange", "showers")):
        k = show[truth[show] == flag]
        ax.scatter(lt[k], ls[k], s=3, alpha=0.4, color=colour, label=lab)
    ax.set(xlabel="track fit likelihood", ylabel="shower fit likelihood", title=f"Track vs shower likelihood{cut}")
    ax.legend(markerscale=4)
    out["likelihood_scatter.png"] = png(fig)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharex=True, sharey=True)
    rng_x = (np.quantile(lt[sel], [0.005, 0.995]) if sel.any() else [0, 1])
    rng_y = (np.quantile(ls[sel], [0.005, 0.995]) if sel.any() else [0, 1])
    for ax, flag, lab in ((axes[0], False, "true tracks"), (axes[1], True, "true showers")):
        k = sel & (truth == flag)
        h = ax.hist2d(lt[k], ls[k], bins=50, range=[rng_x, rng_y], cmap="magma")
        fig.colorbar(h[3], ax=ax, label="events")
        ax.set(xlabel="track fit likelihood", ylabel="shower fit likelihood", title=f"{lab}{cut}")
    out["likelihood_hist2d.png"] = png(fig)
    return out


def evaluate(data: str, model_uri: str, out: str, energy_cut: float | None = None, skip_bad: bool = False,
             command: list[str] | None = None) -> dict[str, Any]:
    """Analyse a trained model on labelled data; publish report.json and the plots atomically."""
    started = time.time()
    model, meta = load_model(model_uri)
    table, skipped = load_table(data, need_truth=True, skip_bad=skip_bad)
    if len(table) == 0:
        raise InputError(f"{data}: no events to evaluate")
    report, pngs = analyse(model, meta["model"], table, energy_cut)
    report["skipped_events"] = skipped
    with storage.Output(out, command=command, inputs=[data, model_uri], started=started) as output:
        output.write("report.json", json.dumps(report, indent=2).encode())
        for name, png in pngs.items():
            output.write(name, png)
        output.commit(kind="km3net-evaluate", rows={"report.json": len(table)}, events=len(table),
                      accuracy=report["summary"]["accuracy"], roc_auc=report["summary"]["roc_auc"])
    s = report["summary"]
    log.info("%s on %d events: accuracy %.4f, AUC %s → %s", meta["model"], s["n_events"], s["accuracy"],
             f"{s['roc_auc']:.4f}" if s["roc_auc"] is not None else "n/a", storage.join(out, "report.json"))
    return report
