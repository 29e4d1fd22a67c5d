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
from neutrino_ray.icecube import outofcore
from neutrino_ray.icecube.evaluate import BIN_TABLES, bin_header, bin_rows
from neutrino_ray.icecube.metrics import BOOTSTRAP_CHUNK, PairedBootstrap, poisson1_resample_sums
from neutrino_ray.icecube.outofcore import N_PULSES_EDGES, ZENITH_EDGES, energy_edges
from neutrino_ray.plotting import png, pyplot
from neutrino_ray.progress import Progress

log = logging.getLogger("neutrino_ray")

REPORT, SUMMARY = "report.json", "summary.md"
N_BOOTSTRAP = 200
REFERENCES = ("real Kaggle data, leaderboard mean angular error: public LineFit (aux = False pulses) 1.214 rad, "
              "GraphNeT DynEdge 1.018 rad, winning ensembles ≈ 0.98 rad")


class MeanBootstrap:
    """Poisson-bootstrap 68 % intervals of the mean error of several models over several keys (the whole set,
    each bin) at once, with the paired comparisons of :class:`PairedBootstrap`, all from one draw of weights
    per chunk of events: one Poisson(1) weight per event and resample, shared by every model, every key the
    event falls in and every pair (one resample of the events applies to all of them, as the paired
    bootstrap requires). Each block's weights come from a generator seeded by ``(seed, block)``, so a pair's
    result is exactly a :class:`PairedBootstrap` of the same seed. The sums come from one matrix product per
    chunk, resamples × events times events × (keys · (models + 1) + 2 · pairs) indicator-and-error columns
    instead of masking the weights key by key and model by model (which dominated compare's time: measured
    in docs/icecube.md, "compare made fast"). Memory O(resamples · chunk + chunk · columns)."""

    def __init__(self, n_models: int = 1, n: int = N_BOOTSTRAP):
        self.n, self.n_models = n, n_models
        self.w: dict[Any, np.ndarray] = {}  # per key: Σ weights per resample (the same for every model)
        self.we: dict[Any, np.ndarray] = {}  # per key: Σ weight · error, models × resamples

    def add(self, rng: np.random.Generator, errors: list[np.ndarray], keys: list[tuple[Any, Any]],
            pairs: dict[tuple[int, int], PairedBootstrap] | None = None, chunk: int = BOOTSTRAP_CHUNK) -> None:
        """One block: each model's errors on the same events, the (key, mask) of every key present (mask
        True: every event), and the paired accumulators of model pairs (i, j) to feed from the same draw."""
        pairs = pairs or {}
        n_keys, m = len(keys), len(errors)
        for key, _ in keys:
            if key not in self.w:
                self.w[key], self.we[key] = np.zeros(self.n), np.zeros((m, self.n))
        for lo in range(0, len(errors[0]), chunk):
            hi = min(lo + chunk, len(errors[0]))
            ind = np.empty((hi - lo, n_keys))
            for k, (_, sel) in enumerate(keys):
                ind[:, k] = 1.0 if sel is True else sel[lo:hi]
            pair_x = [PairedBootstrap.columns(errors[i][lo:hi], errors[j][lo:hi]) for i, j in pairs]
            x = np.concatenate([ind, *(ind * e[lo:hi, None] for e in errors), *pair_x], axis=1)
            sum_w, sum_wx = poisson1_resample_sums(rng, self.n, x)
            for k, (key, _) in enumerate(keys):
                self.w[key] += sum_wx[:, k]
                for mi in range(m):
                    self.we[key][mi] += sum_wx[:, n_keys * (1 + mi) + k]
            c = n_keys * (1 + m)
            for px, boot in zip(pair_x, pairs.values()):
                boot.add_resampled(px, sum_w, sum_wx[:, c:c + 2])
                c += 2

    def interval(self, key: Any, n_events: int, model: int = 0) -> list[float]:
        """The 16th and 84th percentiles of the resampled means (a 68 % interval); NaN below 2 events."""
        if n_events < 2 or key not in self.w:
            return [float("nan"), float("nan")]
        ok = self.w[key] > 0
        lo68, hi68 = np.percentile(self.we[key][model][ok] / self.w[key][ok], [16, 84])
        return [float(lo68), float(hi68)]


def bootstrap_mean(errors: np.ndarray, rng: np.random.Generator, n: int = N_BOOTSTRAP) -> list[float]:
    """The 16th and 84th percentiles of the mean over ``n`` Poisson-bootstrap resamples (a 68 % interval)."""
    boot = MeanBootstrap(1, n)
    boot.add(rng, [np.asarray(errors, np.float64)], [("all", True)])
    return boot.interval("all", len(errors))


ZEN_RES_EDGES = np.linspace(0, np.pi, 13)
CDF_EDGES = np.linspace(0, np.pi, 2001)  # the cumulative-error curve, from a histogram (plot only)


def _with_intervals(label: str, uri: str, body: dict[str, Any], boot: MeanBootstrap, model: int,
                    breakdowns: list[tuple[str, str, np.ndarray]]) -> dict[str, Any]:
    """evaluate's figures for one model (:func:`outofcore.evaluate_passes`), each mean with its interval."""
    rep: dict[str, Any] = {"label": label, "predictions": uri,
                           **{k: body[k] for k in ("n_events", "mean_angular_error", "median_angular_error",
                                                   "containment_68")},
                           "mean_interval_68": boot.interval("all", body["n_events"], model)}
    for key, label_, edges in breakdowns:
        rows = []
        for b in body.get(key) or []:
            i = int(np.searchsorted(edges, b[label_][0]))
            rows.append({**b, "mean_interval_68": boot.interval((key, i), b["n_events"], model)})
        rep[key] = rows
    if "by_topology" in body:
        rep["by_topology"] = {k: {**v, "mean_interval_68": boot.interval(("by_topology", k), v["n_events"], model)}
                              for k, v in body["by_topology"].items()}
    if "uncertainty" in body:
        rep["uncertainty"] = body["uncertainty"]
    return rep


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


def _plots(models: list[dict[str, Any]], cdf_counts: list[np.ndarray],
           zen_sums: list[np.ndarray]) -> dict[str, bytes]:
    plt = pyplot()
    out = {}
    if any(m.get("by_energy_gev") for m in models):
        out["error_vs_energy.png"] = _line_plot(models, "by_energy_gev", "energy_gev", "true energy (GeV)", True)
    out["error_vs_n_pulses.png"] = _line_plot(models, "by_n_pulses", "n_pulses", "pulses per event", True)
    out["error_vs_true_zenith.png"] = _line_plot(models, "by_true_zenith", "zenith", "true zenith (rad)", False)

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    n_events = models[0]["n_events"]
    for m, c in zip(models, cdf_counts):
        f = np.concatenate([[0.0], np.cumsum(c) / max(c.sum(), 1)])
        line = ax.plot(CDF_EDGES, f, label=f"{m['label']} (mean {m['mean_angular_error']:.3f} rad)")[0]
        band = np.sqrt(f * (1 - f) / max(n_events, 1))  # binomial 1σ of each fraction
        ax.fill_between(CDF_EDGES, f - band, f + band, color=line.get_color(), alpha=0.25, lw=0)
    ax.set(xlabel="angular error (rad)", ylabel="fraction of events with a smaller error", xlim=(0, np.pi),
           ylim=(0, 1), title=f"Cumulative error distribution ({n_events:,} events; "
                              "bands: binomial 1σ)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    out["cumulative_error.png"] = png(fig)

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    zen_edges = ZEN_RES_EDGES
    for m, zs in zip(models, zen_sums):
        n = zs[0]
        mean = zs[1] / np.maximum(n, 1)
        res = np.where(n > 1, np.sqrt(np.maximum(zs[2] / np.maximum(n, 1) - mean ** 2, 0)), np.nan)
        err = res / np.sqrt(2 * np.maximum(n - 1, 1))  # standard error of a standard deviation
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
            seed: int = 0, command: list[str] | None = None,
            chunk_events: int = outofcore.CHUNK_EVENTS) -> dict[str, Any]:
    """Score every predictions file against the split's truth; publish report.json, summary.md and plots.
    Each model's figures come from evaluate's passes (:func:`outofcore.evaluate_passes`), one model at a
    time; then one side-by-side pass (:func:`outofcore.side_by_side`: one read of the truth per event-id
    range of ``chunk_events``, shared by the models) accumulates the bootstraps and the plots' histograms."""
    if not predictions:
        raise InputError("--predictions: nothing to compare")
    labels = labels or [p.rstrip("/").rsplit("/", 2)[-2] if "/" in p else p for p in predictions]
    if len(labels) != len(predictions):
        raise InputError(f"--labels: {len(labels)} labels for {len(predictions)} predictions")
    if len(set(labels)) != len(labels):
        raise InputError(f"--labels: every label must be unique (got {labels})")
    n_events = 0
    bodies = []
    opened = []  # each input opened once: a CSV is streamed into per-range files once for all three passes
    for lab, p in zip(labels, predictions):  # each model's Source (and its cached range) is dropped after
        source = outofcore.Source(data, split, p, chunk_events)
        n_events = source.n_events
        opened.append(source.opened)
        bodies.append(outofcore.evaluate_passes(source, f"compare {lab}")[0])  # other event sets fail here
        del source
    e_range = outofcore._energy_range(data, split)
    breakdowns: list[tuple[str, str, np.ndarray]] = [("by_n_pulses", "n_pulses", N_PULSES_EDGES),
                                                     ("by_true_zenith", "zenith", ZENITH_EDGES)]
    if e_range:
        breakdowns.append(("by_energy_gev", "energy_gev", energy_edges(np.array(e_range))))
    boot = MeanBootstrap(len(predictions))
    pairs = [(i, j) for i in range(len(predictions)) for j in range(i + 1, len(predictions))]
    paired_boots = {p: PairedBootstrap(N_BOOTSTRAP, seed) for p in pairs}
    cdf_counts = [np.zeros(len(CDF_EDGES) - 1) for _ in predictions]
    zen_sums = [np.zeros((3, len(ZEN_RES_EDGES) - 1)) for _ in predictions]
    with Progress("compare: bootstrap", n_events, tick=True) as prog:
        # One event-id range of every model at a time, sharing one read of the truth. No enumerate() or
        # zip(): they keep their last tuple, so the previous range stayed alive while the next was read.
        block = -1
        for chs in outofcore.side_by_side(data, split, opened, chunk_events):
            block += 1
            keys = list(outofcore.bin_masks(chs[0], breakdowns))
            boot.add(np.random.default_rng([seed, block]), [ch.errors for ch in chs], keys, paired_boots)
            for m, ch in enumerate(chs):
                cdf_counts[m] += np.histogram(ch.errors, bins=CDF_EDGES)[0]
                idx = np.clip(np.digitize(ch.zen_true, ZEN_RES_EDGES) - 1, 0, len(ZEN_RES_EDGES) - 2)
                dz = ch.zen_pred - ch.zen_true
                zen_sums[m] += np.stack([np.bincount(idx, minlength=len(ZEN_RES_EDGES) - 1),
                                         np.bincount(idx, dz, minlength=len(ZEN_RES_EDGES) - 1),
                                         np.bincount(idx, dz * dz, minlength=len(ZEN_RES_EDGES) - 1)])
            prog.update(len(chs[0].errors))
            del chs, ch, keys, idx, dz  # before the next range is read
    for o in opened:
        o.close()
    models = [_with_intervals(lab, uri, body, boot, m, breakdowns)
              for m, (lab, uri, body) in enumerate(zip(labels, predictions, bodies))]
    paired = [{"a": labels[i], "b": labels[j], **paired_boots[(i, j)].result()} for i, j in pairs]
    report = {"split": split, "n_events": models[0]["n_events"], "bootstrap_resamples": N_BOOTSTRAP,
              "references": REFERENCES, "models": models, "paired": paired}
    with storage.Output(out, command=command, inputs=[data, *predictions]) as output:
        output.write(REPORT, json.dumps(report, indent=2).encode())
        output.write(SUMMARY, summary_markdown(split, models, paired).encode())
        plots = _plots(models, cdf_counts, zen_sums)
        output.write(htmlreport.REPORT_HTML, report_html(report, plots, {"data": data, "split": split}),
                     htmlreport.CONTENT_TYPE)
        for name, blob in plots.items():
            output.write(name, blob)
        output.commit(kind="icecube-compare", split=split, events=report["n_events"],
                      models={m["label"]: round(m["mean_angular_error"], 6) for m in models})
    for rep in models:
        log.info("%s: mean angular error %.4f rad [%.4f, %.4f]", rep["label"], rep["mean_angular_error"],
                 *rep["mean_interval_68"])
    return report
