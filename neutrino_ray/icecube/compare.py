"""``icecube compare``: several reconstructions of one split side by side, with bootstrap intervals and plots.

Each predictions file (a ``submission.csv`` or a ``predictions.parquet``, local or S3) is scored with the
competition formula against the split's truth, over exactly the split's events (another event set is an
error naming the file). ``report.json`` holds per model the overall figures with bootstrap 68 % intervals
on the mean, and the breakdowns of ``evaluate`` (energy, pulse count, true zenith, topology), each bin's
mean with its interval; ``summary.md`` the table; PNGs overlay the models.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np

from neutrino_ray import htmlreport, storage
from neutrino_ray.errors import InputError
from neutrino_ray.icecube import data as icdata
from neutrino_ray.icecube import uncertainty
from neutrino_ray.icecube.evaluate import (
    BIN_TABLES,
    N_PULSES_EDGES,
    ZENITH_EDGES,
    Scored,
    bin_header,
    bin_rows,
    energy_edges,
    score,
)
from neutrino_ray.icecube.metrics import PairedBootstrap, poisson1_weights, summarise
from neutrino_ray.plotting import png, pyplot

log = logging.getLogger("neutrino_ray")

REPORT, SUMMARY = "report.json", "summary.md"
N_BOOTSTRAP = 200
REFERENCES = ("real Kaggle data, leaderboard mean angular error: public LineFit (aux = False pulses) 1.214 rad, "
              "GraphNeT DynEdge 1.018 rad, winning ensembles ≈ 0.98 rad")


def bootstrap_mean(errors: np.ndarray, rng: np.random.Generator, n: int = N_BOOTSTRAP) -> list[float]:
    """The 16th and 84th percentiles of the mean over ``n`` Poisson-bootstrap resamples (a 68 % interval)."""
    if len(errors) < 2:
        return [float("nan"), float("nan")]
    # Poisson(1) weights per event and resample (the Poisson bootstrap: as the multinomial one for many events,
    # and ~6x faster to draw), in chunks of events: memory O(n · chunk).
    w_sum, w_err = np.zeros(n), np.zeros(n)
    chunk = 20_000
    for lo in range(0, len(errors), chunk):
        w = poisson1_weights(rng, (n, min(chunk, len(errors) - lo))).astype(np.float64)
        w_sum += w.sum(axis=1)
        w_err += w @ errors[lo:lo + chunk]
    lo68, hi68 = np.percentile(w_err[w_sum > 0] / w_sum[w_sum > 0], [16, 84])
    return [float(lo68), float(hi68)]


def _binned(sc: Scored, values: np.ndarray, edges: np.ndarray, label: str,
            rng: np.random.Generator) -> list[dict[str, Any]]:
    idx = np.digitize(values, edges) - 1
    out = []
    for b in range(len(edges) - 1):  # a handful of bins, not events
        sel = idx == b
        if sel.any():
            out.append({label: [float(edges[b]), float(edges[b + 1])], **summarise(sc.errors[sel]),
                        "mean_interval_68": bootstrap_mean(sc.errors[sel], rng)})
    return out


def model_report(label: str, uri: str, sc: Scored, rng: np.random.Generator,
                 e_edges: np.ndarray | None) -> dict[str, Any]:
    zen = sc.truth.column("zenith").to_numpy()
    rep: dict[str, Any] = {"label": label, "predictions": uri, **summarise(sc.errors),
                           "mean_interval_68": bootstrap_mean(sc.errors, rng),
                           "by_n_pulses": _binned(sc, sc.n_pulses, N_PULSES_EDGES, "n_pulses", rng),
                           "by_true_zenith": _binned(sc, zen, ZENITH_EDGES, "zenith", rng)}
    if sc.energy is not None and e_edges is not None:
        rep["by_energy_gev"] = _binned(sc, sc.energy, e_edges, "energy_gev", rng)
    if sc.topology is not None:
        rep["by_topology"] = {str(k): {**summarise(sc.errors[sc.topology == k]),
                                       "mean_interval_68": bootstrap_mean(sc.errors[sc.topology == k], rng)}
                              for k in np.unique(sc.topology)}
    kappa = sc.kappa
    if kappa is not None:
        rep["uncertainty"] = uncertainty.uncertainty_report(sc.errors, kappa, sc.energy, sc.n_pulses,
                                                            N_PULSES_EDGES, e_edges)
    return rep


def paired_comparisons(labels: list[str], scored: list[Scored], seed: int,
                       n: int = N_BOOTSTRAP) -> list[dict[str, Any]]:
    """Every pair (A, B) of models on the same events: the mean of err_A − err_B and the fraction of events
    where A's error is smaller, with paired Poisson-bootstrap intervals accumulated batch by batch
    (:class:`~neutrino_ray.icecube.metrics.PairedBootstrap`)."""
    out = []
    batch = scored[0].batch_id if scored[0].batch_id is not None else np.zeros(len(scored[0].errors), int)
    order = np.argsort(batch, kind="stable")
    bounds = np.flatnonzero(np.diff(batch[order])) + 1
    blocks = [(int(batch[idx[0]]), idx) for idx in np.split(order, bounds) if len(idx)]
    for i in range(len(scored)):
        for j in range(i + 1, len(scored)):
            boot = PairedBootstrap(n, seed)
            for b, idx in blocks:  # a batch at a time, as the out-of-core path merges them
                boot.add(b, scored[i].errors[idx], scored[j].errors[idx])
            out.append({"a": labels[i], "b": labels[j], **boot.result()})
    return out


def summary_markdown(split: str, models: list[dict[str, Any]], paired: list[dict[str, Any]] | None = None) -> str:
    lines = [f"# IceCube reconstructions compared: split `{split}`, {models[0]['n_events']:,} events", "",
             "Mean angular error with the competition formula (rad); 68 % bootstrap interval of the mean in "
             "brackets; coverage: fraction of events whose true error lies inside the predicted 68 % / 90 % "
             "vMF radius.", "",
             "| model | mean angular error | median | 68 % containment | coverage 68 / 90 | events |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for m in models:
        lo, hi = m["mean_interval_68"]
        unc = m.get("uncertainty")
        cov = f"{unc['coverage_68']:.3f} / {unc['coverage_90']:.3f}" if unc else "—"
        lines.append(f"| {m['label']} | {m['mean_angular_error']:.4f} [{lo:.4f}, {hi:.4f}] | "
                     f"{m['median_angular_error']:.4f} | {m['containment_68']:.4f} | {cov} | {m['n_events']:,} |")
    if paired:
        lines += ["", "Paired on the same events: mean of err(A) − err(B) (negative: A better) and the fraction of "
                      "events where A's error is smaller, with 68 % / 95 % Poisson-bootstrap intervals.", "",
                  "| A | B | mean err(A) − err(B) (rad) | 95 % interval | A better on | 95 % interval |",
                  "| --- | --- | ---: | ---: | ---: | ---: |"]
        for p in paired:
            lo, hi = p["mean_difference_interval_95"]
            flo, fhi = p["fraction_a_better_interval_95"]
            lines.append(f"| {p['a']} | {p['b']} | {p['mean_difference']:+.4f} | [{lo:+.4f}, {hi:+.4f}] | "
                         f"{p['fraction_a_better']:.3f} | [{flo:.3f}, {fhi:.3f}] |")
    lines += ["", f"References ({REFERENCES}); comparable only as far as the simulation is as hard as the real data.",
              ""]
    return "\n".join(lines)


CAPTIONS = {
    "error_vs_energy.png": "Mean angular error against true energy (bands: bootstrap 68 %)",
    "error_vs_n_pulses.png": "Mean angular error against pulses per event (bands: bootstrap 68 %)",
    "error_vs_true_zenith.png": "Mean angular error against true zenith (bands: bootstrap 68 %)",
    "cumulative_error.png": "Cumulative distribution of the angular error (bands: binomial 1σ)",
    "zenith_resolution.png": "Zenith resolution per true-zenith bin (error bars: s.e. of the standard deviation)",
    "coverage.png": "Coverage of the predicted uncertainties (binomial 1σ)",
}


def report_html(report: dict[str, Any], plots: dict[str, bytes], provenance: dict[str, Any]) -> bytes:
    """``report.html``: the models' headline table, the paired comparisons, per-bin tables, plots, definitions."""
    rows = []
    for m in report["models"]:
        unc = m.get("uncertainty")
        lo, hi = m["mean_interval_68"]
        rows.append([m["label"], m["n_events"], m["mean_angular_error"], f"[{lo:.4f}, {hi:.4f}]",
                     m["median_angular_error"], m["containment_68"],
                     f"{unc['coverage_68']:.3f} / {unc['coverage_90']:.3f}" if unc else "—"])
    sections = [("Headline", htmlreport.table(["model", "events", "mean angular error (rad)", "68 % interval",
                                               "median (rad)", "68 % containment (rad)", "coverage 68 / 90"], rows))]
    if report.get("paired"):
        sections.append(("Paired comparisons (same events)", htmlreport.table(
            ["A", "B", "mean err(A) − err(B) (rad)", "68 % interval", "95 % interval", "A better on",
             "95 % interval"],
            [[p["a"], p["b"], f"{p['mean_difference']:+.4f}",
              "[{:+.4f}, {:+.4f}]".format(*p["mean_difference_interval_68"]),
              "[{:+.4f}, {:+.4f}]".format(*p["mean_difference_interval_95"]), p["fraction_a_better"],
              "[{:.4f}, {:.4f}]".format(*p["fraction_a_better_interval_95"])] for p in report["paired"]])))
    for key, label, title in BIN_TABLES:
        for m in report["models"]:
            if m.get(key):
                sections.append((f"{m['label']}: by {title}", htmlreport.table(
                    bin_header(title), bin_rows(m[key], label))))
    return htmlreport.render(f"IceCube reconstructions compared: split {report['split']}",
                             f"{len(report['models'])} reconstructions of the same {report['n_events']:,} events, "
                             f"scored with the competition metric. {REFERENCES}.",
                             sections, plots, CAPTIONS, htmlreport.DEFINITIONS, provenance)


def _line_plot(models: list[dict[str, Any]], key: str, label: str, xlabel: str, log_x: bool) -> bytes:
    plt = pyplot()
    fig, (ax, axn) = plt.subplots(2, 1, figsize=(7, 5.6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    for m in models:
        bins = m.get(key) or []
        if not bins:
            continue
        lo = np.array([b[label][0] for b in bins])
        hi = np.array([b[label][1] for b in bins])
        x = np.sqrt(lo * np.maximum(hi, lo)) if log_x else (lo + hi) / 2
        if log_x:
            x = np.where(np.isfinite(x) & (hi < 1e8), x, lo * 1.5)
        y = np.array([b["mean_angular_error"] for b in bins])
        band = np.array([b["mean_interval_68"] for b in bins])
        line = ax.plot(x, y, "o-", ms=3, label=m["label"])[0]
        ax.fill_between(x, band[:, 0], band[:, 1], color=line.get_color(), alpha=0.25)
        axn.step(x, [b["n_events"] for b in bins], where="mid", color=line.get_color())
    ax.set(ylabel="mean angular error (rad)", title=f"Error against {xlabel.split(' (')[0]} (bands: bootstrap 68 %)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    axn.set(xlabel=xlabel, ylabel="events per bin", yscale="log")
    if log_x:
        axn.set_xscale("log")
    axn.grid(alpha=0.3)
    return png(fig)


def _plots(models: list[dict[str, Any]], scored: list[Scored]) -> dict[str, bytes]:
    plt = pyplot()
    out = {}
    if any(m.get("by_energy_gev") for m in models):
        out["error_vs_energy.png"] = _line_plot(models, "by_energy_gev", "energy_gev", "true energy (GeV)", True)
    out["error_vs_n_pulses.png"] = _line_plot(models, "by_n_pulses", "n_pulses", "pulses per event", True)
    out["error_vs_true_zenith.png"] = _line_plot(models, "by_true_zenith", "zenith", "true zenith (rad)", False)

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for m, sc in zip(models, scored):
        e = np.sort(sc.errors)
        f = np.arange(1, len(e) + 1) / len(e)
        line = ax.plot(e, f, label=f"{m['label']} (mean {m['mean_angular_error']:.3f} rad)")[0]
        band = np.sqrt(f * (1 - f) / len(e))  # binomial 1σ of each fraction
        ax.fill_between(e, f - band, f + band, color=line.get_color(), alpha=0.25, lw=0)
    ax.set(xlabel="angular error (rad)", ylabel="fraction of events with a smaller error", xlim=(0, np.pi),
           ylim=(0, 1), title=f"Cumulative error distribution ({len(scored[0].errors):,} events; "
                              "bands: binomial 1σ)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    out["cumulative_error.png"] = png(fig)

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    zen_edges = np.linspace(0, np.pi, 13)
    for m, sc in zip(models, scored):
        dz = sc.pred.column("zenith").to_numpy() - sc.truth.column("zenith").to_numpy()
        zt = sc.truth.column("zenith").to_numpy()
        idx = np.clip(np.digitize(zt, zen_edges) - 1, 0, len(zen_edges) - 2)
        res = [float(np.std(dz[idx == b])) if (idx == b).sum() > 1 else np.nan for b in range(len(zen_edges) - 1)]
        n = np.bincount(idx, minlength=len(zen_edges) - 1)
        err = np.array(res) / np.sqrt(2 * np.maximum(n - 1, 1))  # standard error of a standard deviation
        ax.errorbar((zen_edges[1:] + zen_edges[:-1]) / 2, res, yerr=err, fmt="o-", ms=3, capsize=2, label=m["label"])
    ax.set(xlabel="true zenith (rad)", ylabel="σ(predicted − true zenith) (rad)",
           title="Zenith resolution (error bars: s.e. of the standard deviation)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    out["zenith_resolution.png"] = png(fig)

    with_unc = [m for m in models if m.get("uncertainty")]
    if with_unc:
        fig, ax = plt.subplots(figsize=(5, 4.5))
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="calibrated")
        for m in with_unc:
            c = m["uncertainty"]["coverage_curve"]
            obs = np.array(c["observed"])
            ax.errorbar(c["predicted"], obs, yerr=np.sqrt(obs * (1 - obs) / m["n_events"]), fmt="o-", ms=3,
                        capsize=2, label=m["label"])
        ax.set(xlabel="predicted containment probability", ylabel="observed fraction inside", xlim=(0, 1),
               ylim=(0, 1), title="Coverage of the predicted uncertainties (binomial 1σ)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        out["coverage.png"] = png(fig)
    return out


def compare(data: str, split: str, predictions: list[str], labels: list[str] | None, out: str,
            seed: int = 0, command: list[str] | None = None) -> dict[str, Any]:
    """Score every predictions file against the split's truth; publish report.json, summary.md and plots."""
    if not predictions:
        raise InputError("--predictions: nothing to compare")
    labels = labels or [p.rstrip("/").rsplit("/", 2)[-2] if "/" in p else p for p in predictions]
    if len(labels) != len(predictions):
        raise InputError(f"--labels: {len(labels)} labels for {len(predictions)} predictions")
    if len(set(labels)) != len(labels):
        raise InputError(f"--labels: every label must be unique (got {labels})")
    truth = icdata.split_truth(data, split)
    meta = icdata.load_meta(data, split)
    scored = [score(data, split, p, truth=truth, meta=meta) for p in predictions]  # other event sets fail here
    energy = scored[0].energy
    e_edges = energy_edges(energy) if energy is not None else None
    rng = np.random.default_rng(seed)
    models = [model_report(lab, uri, sc, rng, e_edges) for lab, uri, sc in zip(labels, predictions, scored)]
    paired = paired_comparisons(labels, scored, seed)
    report = {"split": split, "n_events": len(scored[0].errors), "bootstrap_resamples": N_BOOTSTRAP,
              "references": REFERENCES, "models": models, "paired": paired}
    with storage.Output(out, command=command, inputs=[data, *predictions]) as output:
        output.write(REPORT, json.dumps(report, indent=2).encode())
        output.write(SUMMARY, summary_markdown(split, models, paired).encode())
        plots = _plots(models, scored)
        output.write(htmlreport.REPORT_HTML, report_html(report, plots, {"data": data, "split": split}),
                     htmlreport.CONTENT_TYPE)
        for name, blob in plots.items():
            output.write(name, blob)
        output.commit(kind="icecube-compare", split=split, events=report["n_events"],
                      models={m["label"]: round(m["mean_angular_error"], 6) for m in models})
    for m in models:
        log.info("%s: mean angular error %.4f rad [%.4f, %.4f]", m["label"], m["mean_angular_error"],
                 *m["mean_interval_68"])
    return report
