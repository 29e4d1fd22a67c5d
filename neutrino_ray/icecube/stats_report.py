"""The dataset profile as a report: the published figures of the real Kaggle data (:data:`REAL_KAGGLE`), the
``stats.json`` document of a merged :class:`~neutrino_ray.icecube.profile.Profile` with those figures alongside
(:func:`to_stats`), the side-by-side table the CLI prints, ``summary.md`` and the PNG histograms."""

from __future__ import annotations

from typing import Any

import numpy as np

from neutrino_ray.icecube import linefit as lf
from neutrino_ray.icecube.profile import (
    CHARGE_MAX_INDEX,
    CHARGE_STEP,
    QUANTILES,
    SIZE_BINS,
    SPAN_WINDOW_NS,
    TIME_WINDOW_NS,
    Profile,
)
from neutrino_ray.plotting import counts_with_errors, png, pyplot


# ----------------------------------------------------------------------------------------------
# The published facts of the real data, keyed by the stats.json path of the matching figure.
def _fact(value: Any, definition: str) -> dict[str, Any]:
    return {"value": value, "definition": definition}


_B1 = "train batch_1 (200,000 events)"
REAL_KAGGLE: dict[str, dict[str, Any]] = {
    "batch_files": _fact(660, "train batch files, train/batch_1 … batch_660 (Kaggle data page)"),
    "events": _fact(131_953_924, "train events, all 660 batches (rows of train_meta.parquet)"),
    "pulses_per_event.min": _fact(5, "fewest pulses in an event, all train batches"),
    "pulses_per_event.q1": _fact(48, "pulses per event, first quartile, all train batches"),
    "pulses_per_event.median": _fact(63, "pulses per event, median, all train batches"),
    "pulses_per_event.q3": _fact(89, "pulses per event, third quartile, all train batches"),
    "pulses_per_event.p99": _fact(1_130, f"pulses per event, 99th percentile (≈), {_B1}"),
    "pulses_per_event.max": _fact(178_250, "most pulses in an event, all train batches"),
    "pulses_per_event.mean": _fact(164.4, "mean pulses per event, all train batches"),
    "fraction_events_le_100_pulses": _fact(0.804, f"fraction of events with ≤ 100 pulses, {_B1}"),
    "fraction_events_gt_1000_pulses": _fact(0.011, "fraction of events with > 1,000 pulses, all train batches"),
    "auxiliary.fraction_events_le_150_pulses": _fact(
        2 / 3, "auxiliary (no local coincidence) pulses / all pulses in events with ≤ 150 pulses: ≈ 2/3"),
    "charge.min": _fact(0.025, f"smallest pulse charge (pe), {_B1}"),
    "charge.q1": _fact(0.775, f"pulse charge (pe), first quartile, {_B1}"),
    "charge.median": _fact(1.075, f"pulse charge (pe), median, {_B1}"),
    "charge.q3": _fact(1.775, f"pulse charge (pe), third quartile, {_B1}"),
    "charge.max": _fact(2_762, f"largest pulse charge (pe), {_B1}"),
    "charge.mean": _fact(3.909, f"mean pulse charge (pe), {_B1}"),
    "charge.std": _fact(16.29, f"standard deviation of pulse charge (pe), {_B1}"),
    "charge.on_0025_grid": _fact(True, f"every charge a multiple of 0.025 pe, {_B1}"),
    "time.q1": _fact(10_566, f"time of all pulses (ns), first quartile, {_B1}"),
    "time.median": _fact(11_815, f"time of all pulses (ns), median, {_B1}"),
    "time.q3": _fact(13_916, f"time of all pulses (ns), third quartile, {_B1}"),
    "time.mean": _fact(13_130, f"mean time of all pulses (ns), {_B1}"),
    "first_pulse_time.q1": _fact(5_973, f"each event's first-pulse time (ns), first quartile, {_B1}"),
    "first_pulse_time.median": _fact(6_129, f"each event's first-pulse time (ns), median, {_B1}"),
    "first_pulse_time.q3": _fact(6_405, f"each event's first-pulse time (ns), third quartile, {_B1}"),
    "span.min": _fact(4_732, f"shortest event span, last − first pulse time (ns), {_B1}"),
    "span.q1": _fact(9_990, f"event span (ns), first quartile, {_B1}"),
    "span.median": _fact(10_965, f"event span (ns), median, {_B1}"),
    "span.q3": _fact(12_431, f"event span (ns), third quartile, {_B1}"),
    "span.mean": _fact(11_665, f"mean event span (ns), {_B1}"),
    "sensors_hit": _fact(5_051, f"distinct sensors with at least one pulse, of 5,160, {_B1}"),
    "truth.zenith_mean": _fact(1.534, "mean true zenith (rad), train"),
    "truth.zenith_std": _fact(0.690, "standard deviation of the true zenith (rad), train"),
    "linefit.mean_angular_error.linefit": _fact(
        {"leaderboard": 1.214, "train batch_1": 1.21724},
        "LineFit on the auxiliary == False pulses (all pulses if fewer than 2), the Kaggle public notebook; "
        "mean angular error (competition metric), public leaderboard and train batch_1"),
    "linefit.mean_angular_error.linefit-clean": _fact(
        {"leaderboard": 1.184, "train batch_1": 1.18865},
        "the same LineFit with neighbour-coincidence (scattered-light) cleaning; public leaderboard and train batch_1"),
    "dynedge_mean_angular_error": _fact(1.018, "DynEdge (GraphNeT) competition benchmark, mean angular error"),
}

def size_label(lo: int, hi: int | None) -> str:
    """Name of an event-size bin: "1-50", …, ">1000"."""
    return f">{lo - 1}" if hi is None else f"{lo}-{hi}"


_VARIANT_LABELS = {"linefit": "LineFit (aux = False)", "linefit-all": "LineFit (all pulses)",
                   "linefit-clean": "LineFit (cleaned)"}

# (stats.json path, quantity, format, definition where REAL_KAGGLE has none) of the side-by-side table.
ROWS: tuple[tuple[str, str, str, str], ...] = (
    ("batch_files", "batch files", "int", "batch files of the split profiled"),
    ("events", "events", "int", "events of the split (meta rows)"),
    *((f"pulses_per_event.{k}", f"pulses per event, {k}", "num", "") for k in
      ("min", "q1", "median", "q3", "p99", "max", "mean")),
    ("fraction_events_le_100_pulses", "events with ≤ 100 pulses", "pct", ""),
    ("fraction_events_gt_1000_pulses", "events with > 1,000 pulses", "pct", ""),
    ("auxiliary.fraction", "auxiliary fraction, all pulses", "pct", "auxiliary pulses / all pulses"),
    ("auxiliary.fraction_events_le_150_pulses", "auxiliary fraction, events ≤ 150 pulses", "pct", ""),
    *((f"auxiliary.by_event_size.{size_label(lo, hi)}.auxiliary_fraction",
       f"auxiliary fraction, events of {size_label(lo, hi)} pulses", "pct",
       f"auxiliary pulses / all pulses, pooled over the events with {size_label(lo, hi)} pulses")
      for lo, hi in SIZE_BINS),
    *((f"charge.{k}", f"charge (pe), {k}", "num", "") for k in ("min", "q1", "median", "q3", "max", "mean", "std")),
    ("charge.on_0025_grid", "every charge a multiple of 0.025 pe", "bool", ""),
    *((f"time.{k}", f"time of all pulses (ns), {k}", "num", "") for k in ("q1", "median", "q3", "mean")),
    *((f"first_pulse_time.{k}", f"first-pulse time (ns), {k}", "num", "") for k in ("q1", "median", "q3")),
    *((f"span.{k}", f"event span (ns), {k}", "num", "") for k in ("min", "q1", "median", "q3", "mean")),
    ("sensors_hit", "sensors hit", "int", ""),
    ("truth.zenith_mean", "true zenith (rad), mean", "num", ""),
    ("truth.zenith_std", "true zenith (rad), std", "num", ""),
    ("truth.azimuth_mean", "true azimuth (rad), mean", "num", "mean true azimuth (rad)"),
    *((f"linefit.mean_angular_error.{v}", f"{_VARIANT_LABELS.get(v, v)}: mean angular error (rad)", "rad",
       f"{v} (neutrino_ray.icecube.linefit), mean angular error (competition metric)") for v in lf.VARIANTS),
    ("dynedge_mean_angular_error", "DynEdge: mean angular error (rad)", "rad", ""),
)


# ----------------------------------------------------------------------------------------------
# The merged profile → stats.json, summary.md, plots
def to_stats(profile: Profile, *, dataset: str | None = None, split: str | None = None,
             no_truth_reason: str | None = None, no_linefit_reason: str | None = None) -> dict[str, Any]:
    """The ``stats.json`` dictionary of a (merged) profile, with the real data's facts alongside."""
    p = profile
    if p.events == 0:
        raise ValueError("no events to profile")
    pulses = p.pulses
    assert pulses.weights is not None and p.charge.rep_min is not None and p.charge.rep_max is not None
    n_pulses = int((pulses.values * pulses.counts).sum())
    by_size: dict[str, dict[str, Any]] = {}
    for lo, hi in SIZE_BINS:
        sel = (pulses.values >= lo) & (pulses.values <= (hi if hi is not None else np.iinfo(np.int64).max))
        n_ev, n_pu = int(pulses.counts[sel].sum()), int((pulses.values[sel] * pulses.counts[sel]).sum())
        n_aux = int(pulses.weights[sel].sum())
        by_size[size_label(lo, hi)] = {"events": n_ev, "pulses": n_pu,
                                       "auxiliary_fraction": n_aux / n_pu if n_pu else None}
    small = pulses.values <= 150
    small_pulses = int((pulses.values[small] * pulses.counts[small]).sum())
    cq = list(QUANTILES.values())
    charge_pos = p.charge.positions(cq)
    homogeneous = bool(np.array_equal(p.charge.rep_min, p.charge.rep_max))
    charge: dict[str, Any] = {
        "min": p.charge_moments.min,
        **{k: float(p.charge.rep_min[i]) for k, i in zip(QUANTILES, charge_pos)},
        "max": p.charge_moments.max, "mean": p.charge_moments.mean, "std": p.charge_moments.std,
        "on_0025_grid": p.charge_off_grid == 0, "off_grid_pulses": p.charge_off_grid,
        "quantiles": "exact" if homogeneous else f"within {CHARGE_STEP} pe (smallest charge of the grid bin)",
    }
    if p.charge.clipped:
        charge["quantiles"] = f"within {CHARGE_STEP} pe below {CHARGE_MAX_INDEX * CHARGE_STEP:g} pe"
        charge["clipped_outliers"] = p.charge.clipped
    stats: dict[str, Any] = {
        "dataset": dataset, "split": split,
        "batch_files": len(p.batch_ids), "batch_ids": list(p.batch_ids),
        "events": p.events, "pulses": n_pulses,
        "pulses_per_event": pulses.summary(p99=True),
        "fraction_events_le_100_pulses": int(pulses.counts[pulses.values <= 100].sum()) / p.events,
        "fraction_events_gt_1000_pulses": int(pulses.counts[pulses.values > 1000].sum()) / p.events,
        "auxiliary": {
            "fraction": int(pulses.weights.sum()) / n_pulses,
            "fraction_events_le_150_pulses": int(pulses.weights[small].sum()) / small_pulses if small_pulses else None,
            "by_event_size": by_size,
        },
        "charge": charge,
        "time": p.time.summary(),
        "first_pulse_time": p.first_time.summary(),
        "span": p.span.summary(),
        "sensors_hit": int(np.count_nonzero(p.sensor_hits)), "sensors": len(p.sensor_hits),
    }
    if p.zenith.n:
        stats["truth"] = {"available": True, "events": p.zenith.n, "zenith_mean": p.zenith.mean,
                          "zenith_std": p.zenith.std, "azimuth_mean": p.azimuth.mean}
    else:
        stats["truth"] = {"available": False, "reason": no_truth_reason or "no truth given"}
    if p.linefit:
        stats["linefit"] = {
            "available": True, "events": next(iter(p.linefit.values()))[1],
            "mean_angular_error": {v: s / n for v, (s, n, _) in p.linefit.items()},
            "degenerate_events": {v: d for v, (_, _, d) in p.linefit.items()},
        }
    else:
        reason = no_linefit_reason or (f"no LineFit scores: {stats['truth']['reason']}" if not p.zenith.n
                                       else "LineFit not run")
        stats["linefit"] = {"available": False, "reason": reason}
    stats["definitions"] = {
        "quantiles": 'numpy.quantile(x, q, method="inverted_cdf") over the exact histogram of x',
        "std": "population standard deviation (ddof = 0)",
        "first_pulse_time": "each event's earliest pulse time",
        "span": "each event's latest minus earliest pulse time",
        "time_window_ns": list(TIME_WINDOW_NS), "span_window_ns": list(SPAN_WINDOW_NS),
        "clipped_outliers": "values outside the window, histogrammed at its edge (min and max stay exact)",
        "auxiliary_by_event_size": "auxiliary pulses / all pulses, pooled over the events of each size bin",
        "linefit": "mean over events of the angle between LineFit and the truth (the competition metric)",
    }
    stats["real_kaggle"] = REAL_KAGGLE
    return stats


def lookup(stats: dict[str, Any], path: str) -> Any:
    """The value at a dotted path of a stats dictionary, or None."""
    node: Any = stats
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _fmt(value: Any, kind: str, real: bool = False) -> str:
    if value is None:
        return "—"
    if isinstance(value, dict):
        return "; ".join(f"{_fmt(v, kind, real)} ({k})" for k, v in value.items())
    if kind == "bool" or isinstance(value, bool):
        return "yes" if value else "no"
    if kind == "pct":
        return f"{100 * value:.1f} %"
    if isinstance(value, int):
        return f"{value:,}"
    if real:  # as published
        return f"{value:,.6g}"
    if kind == "rad":
        return f"{value:.5f}"
    return f"{value:,.1f}" if abs(value) >= 1000 else f"{value:.4g}"


def side_by_side(stats: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(quantity, this dataset, real Kaggle data, definition) rows."""
    rows = []
    for path, quantity, kind, definition in ROWS:
        fact = REAL_KAGGLE.get(path)
        mine = lookup(stats, path)
        if mine is None and path.startswith(("truth.", "linefit.")):
            mine_s = "n/a (" + (lookup(stats, path.split(".")[0] + ".reason") or "not computed") + ")"
        else:
            mine_s = _fmt(mine, kind)
        rows.append((quantity, mine_s, _fmt(fact["value"], kind, real=True) if fact else "—",
                     fact["definition"] if fact else definition))
    return rows


def summary_markdown(stats: dict[str, Any]) -> str:
    """``summary.md``: the side-by-side Markdown table with a short header and the definitions."""
    head = [f"# Dataset profile: {stats.get('dataset')} — split {stats.get('split')}", "",
            f"{stats['events']:,} events, {stats['pulses']:,} pulses in {stats['batch_files']} batch files.", ""]
    table = ["| quantity | this dataset | real Kaggle data | definition |", "| --- | --- | --- | --- |"]
    table += [f"| {' | '.join(c.replace('|', '/') for c in row)} |" for row in side_by_side(stats)]
    fit = stats["linefit"]
    notes = ["", f"Quantiles: {stats['definitions']['quantiles']}; "
             f"charge quantiles are {stats['charge']['quantiles']}.",
             f"LineFit: scored on {fit['events']:,} events." if fit["available"] else f"LineFit: {fit['reason']}."]
    return "\n".join(head + table + notes) + "\n"


def plots(profile: Profile) -> dict[str, bytes]:
    """PNG histograms: pulses per event (log x), charge, first-pulse time, span, auxiliary fraction vs size."""
    plt = pyplot()
    out = {}
    h, c = profile.pulses, profile.charge
    assert h.weights is not None and c.rep_min is not None

    fig, ax = plt.subplots(figsize=(6, 4))
    edges = np.unique(np.round(np.logspace(0, np.log10(h.values.max() + 1), 60)))
    counts_with_errors(ax, edges, np.histogram(h.values, bins=edges, weights=h.counts)[0], "tab:blue",
                       f"{int(h.counts.sum()):,} events (±√N)", log_x=True)
    ax.axvline(h.quantiles([0.5])[0], color="k", ls="--", label=f"median {h.quantiles([0.5])[0]}")
    ax.set(xscale="log", yscale="log", xlabel="pulses per event", ylabel="events per bin (log-spaced bins)",
           title="Pulses per event")
    ax.legend()
    out["pulses_per_event.png"] = png(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    lo, hi = max(float(c.rep_min.min()), 1e-3), float(c.rep_min.max())
    edges = np.logspace(np.log10(lo), np.log10(hi) + 1e-9, 80)
    counts_with_errors(ax, edges, np.histogram(c.rep_min, bins=edges, weights=c.counts)[0], "tab:orange",
                       f"{int(c.counts.sum()):,} pulses (±√N)", log_x=True)
    ax.set(xscale="log", yscale="log", xlabel="charge (pe)", ylabel="pulses per bin (log-spaced bins)",
           title="Pulse charge")
    ax.legend()
    out["charge.png"] = png(fig)

    for name, hist, label in (("first_pulse_time.png", profile.first_time, "first-pulse time (ns)"),
                              ("span.png", profile.span, "event span: last − first pulse time (ns)")):
        fig, ax = plt.subplots(figsize=(6, 4))
        a, b = hist.quantiles([0.001, 0.999])
        t_edges = np.linspace(a, max(b, a + 1), 101)
        counts_with_errors(ax, t_edges, np.histogram(hist.values, bins=t_edges, weights=hist.counts)[0], "tab:green",
                           f"{int(hist.counts.sum()):,} events (±√N)")
        ax.set(xlabel=label, ylabel=f"events per {t_edges[1] - t_edges[0]:.0f} ns",
               title=label.split(" (")[0].split(":")[0].capitalize() + " (0.1–99.9 %)")
        ax.legend()
        out[name] = png(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    edges = np.unique(np.round(np.logspace(0, np.log10(h.values.max() + 1), 30)))
    idx = np.clip(np.searchsorted(edges, h.values, side="right") - 1, 0, len(edges) - 2)
    pulses = np.bincount(idx, h.values * h.counts, minlength=len(edges) - 1)
    aux = np.bincount(idx, h.weights, minlength=len(edges) - 1)
    ok = pulses > 0
    centers = np.sqrt(edges[1:] * np.maximum(edges[:-1], 1))
    frac = aux[ok] / pulses[ok]
    events = np.bincount(idx, h.counts, minlength=len(edges) - 1)[ok]
    # Binomial error on the fraction, counting events (not pulses) as the trials: the pulses of one event
    # share its light, so the event count is the honest sample size.
    ax.errorbar(centers[ok], frac, yerr=np.sqrt(frac * (1 - frac) / np.maximum(events, 1)), fmt="o-", ms=3,
                capsize=2, label="this dataset (binomial 1σ over events)")
    ax.axhline(2 / 3, color="k", ls=":", label="real Kaggle data, ≤ 150 pulses (≈ 2/3)")
    ax.set(xscale="log", ylim=(0, 1), xlabel="pulses per event", ylabel="auxiliary fraction of pulses",
           title="Auxiliary fraction vs event size")
    ax.grid(alpha=0.3)
    ax.legend()
    out["auxiliary_fraction.png"] = png(fig)
    return out
