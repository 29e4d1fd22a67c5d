"""Score a submission against the truth: the competition metric, breakdowns and plots."""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from neutrino_ray import htmlreport, storage
from neutrino_ray.icecube import data as icdata
from neutrino_ray.icecube import uncertainty
from neutrino_ray.icecube.metrics import angular_dist_score, angular_distance, summarise
from neutrino_ray.plotting import counts_with_errors, png, pyplot

log = logging.getLogger("neutrino_ray")

REPORT = "report.json"
EVENTS, BINS = "events.parquet", "bins.parquet"
ROW_GROUP_EVENTS = 1 << 18  # events.parquet row groups: 262,144 events, sorted by event_id (so by batch_id too)


def read_predictions(uri: str) -> pa.Table:
    """A submission (CSV or Parquet), or a folder of Parquet parts (``OUT/predictions/`` of ``icecube predict
    --format parquet``), with event_id, azimuth, zenith; validated."""
    try:
        if uri.rstrip("/").endswith((".csv", ".parquet")):
            t = (storage.read_parquet if uri.endswith(".parquet") else storage.read_csv)(uri)
        else:
            files = [u for u in storage.listdir(uri) if u.endswith(".parquet")]
            if not files:
                raise FileNotFoundError(uri)
            t = pa.concat_tables(storage.read_parquet(u) for u in files)
    except FileNotFoundError as e:
        raise icdata.DataError(f"{uri}: predictions not found (a .csv or .parquet file, or a folder of "
                               ".parquet parts)") from e
    missing = {"event_id", "azimuth", "zenith"} - set(t.column_names)
    if missing:
        raise icdata.DataError(f"{uri}: missing columns {sorted(missing)}")
    cols = [("event_id", pa.int64()), ("azimuth", pa.float64()), ("zenith", pa.float64())]
    if "kappa" in t.column_names:  # predictions.parquet: a per-event vMF concentration (null for LineFit)
        cols.append(("kappa", pa.float64()))
    t = t.select([c for c, _ in cols]).cast(pa.schema(cols))
    az, zen = t.column("azimuth").to_numpy(), t.column("zenith").to_numpy()
    bad = np.flatnonzero(~np.isfinite(az) | ~np.isfinite(zen))
    if len(bad):
        raise icdata.DataError(f"{uri}: event_id {t.column('event_id')[int(bad[0])].as_py()} has a non-finite "
                               f"prediction ({len(bad)} such rows)")
    return t.sort_by("event_id")


def _bins(values: np.ndarray, errors: np.ndarray, edges: np.ndarray, label: str) -> list[dict[str, Any]]:
    idx = np.digitize(values, edges) - 1
    out = []
    for b in range(len(edges) - 1):  # a handful of bins, not events
        sel = idx == b
        if sel.any():
            out.append({label: [float(edges[b]), float(edges[b + 1])], **summarise(errors[sel])})
    return out


@dataclass
class Scored:
    """Predictions aligned with the split's truth, event by event (sorted by event_id)."""

    pred: pa.Table
    truth: pa.Table
    errors: np.ndarray  # angular error (rad) per event, the competition's formula
    n_pulses: np.ndarray
    energy: np.ndarray | None
    topology: np.ndarray | None
    batch_id: np.ndarray | None = None  # the meta's batch of each event

    @property
    def kappa(self) -> np.ndarray | None:
        """The predicted vMF concentrations, when the predictions carry them (predictions.parquet of a model)."""
        if "kappa" not in self.pred.column_names or self.pred.column("kappa").null_count == len(self.pred):
            return None
        return self.pred.column("kappa").to_numpy()


def score(data: str, split: str, predictions: str, truth: pa.Table | None = None,
          meta: pa.Table | None = None) -> Scored:
    """Read predictions and align them with the truth; a clear error for other events or bad rows."""
    truth = (truth if truth is not None else icdata.split_truth(data, split)).sort_by("event_id")
    pred = read_predictions(predictions)
    t_ids, p_ids = truth.column("event_id").to_numpy(), pred.column("event_id").to_numpy()
    if len(np.unique(p_ids)) != len(p_ids):
        raise icdata.DataError(f"{predictions}: duplicate event_id rows")
    if not np.array_equal(t_ids, p_ids):
        missing, extra = np.setdiff1d(t_ids, p_ids), np.setdiff1d(p_ids, t_ids)
        raise icdata.DataError(f"{predictions}: event ids differ from the {split} split: {len(missing)} missing "
                               f"(e.g. {missing[:3].tolist()}), {len(extra)} unknown (e.g. {extra[:3].tolist()})")
    if "kappa" in pred.column_names and 0 < pred.column("kappa").null_count < len(pred):
        raise icdata.DataError(f"{predictions}: kappa is null for {pred.column('kappa').null_count} of "
                               f"{len(pred)} events")
    az_t, zen_t = truth.column("azimuth").to_numpy(), truth.column("zenith").to_numpy()
    az_p, zen_p = pred.column("azimuth").to_numpy(), pred.column("zenith").to_numpy()
    meta = (meta if meta is not None else icdata.load_meta(data, split)).sort_by("event_id")
    n_pulses = (meta.column("last_pulse_index").to_numpy() - meta.column("first_pulse_index").to_numpy() + 1)
    energy = truth.column("energy").to_numpy() if "energy" in truth.column_names else None
    topology = np.asarray(truth.column("topology").to_pylist()) if "topology" in truth.column_names else None
    return Scored(pred, truth, angular_distance(az_t, zen_t, az_p, zen_p), n_pulses, energy, topology,
                  meta.column("batch_id").to_numpy())


def events_table(sc: Scored) -> pa.Table:
    """``events.parquet``, one row per event sorted by event_id: its batch, true and predicted direction, the
    angular error, the pulse count, and where known the true energy and topology, the predicted κ, σ₆₈ and
    the probability-integral transform u = P(angle ≤ error) (calibrated: uniform)."""
    cols: dict[str, Any] = {"event_id": sc.truth.column("event_id").cast(pa.int64())}
    cols["batch_id"] = pa.array(sc.batch_id, pa.int64()) if sc.batch_id is not None else pa.nulls(len(sc.errors),
                                                                                                    pa.int64())
    for c in ("azimuth", "zenith"):
        cols[f"true_{c}"] = sc.truth.column(c).cast(pa.float64())
    for c in ("azimuth", "zenith"):
        cols[c] = sc.pred.column(c).cast(pa.float64())
    cols["angular_error"] = pa.array(sc.errors, pa.float64())
    cols["n_pulses"] = pa.array(sc.n_pulses, pa.int64())
    if sc.energy is not None:
        cols["energy"] = pa.array(sc.energy, pa.float64())
    if sc.topology is not None:
        cols["topology"] = pa.array(sc.topology.astype(str), pa.string())
    kappa = sc.kappa
    if kappa is not None:
        cols["kappa"] = pa.array(kappa, pa.float64())
        cols["sigma_68"] = pa.array(uncertainty.vmf_quantile(kappa, 0.68), pa.float64())
        cols["pit"] = pa.array(uncertainty.vmf_cdf(kappa, sc.errors), pa.float64())
    return pa.table(cols)


def events_parquet(sc: Scored) -> tuple[bytes, int]:
    """``events.parquet`` bytes (row groups of :data:`ROW_GROUP_EVENTS`, statistics on every column, dictionary
    encoding only where values repeat: on a million distinct floats it tripled the encoding time) and rows."""
    t = events_table(sc)
    repeated = [c for c in ("batch_id", "topology") if c in t.column_names]
    return storage.parquet_bytes(t, row_group_size=ROW_GROUP_EVENTS, use_dictionary=repeated), len(t)


BINS_SCHEMA = pa.schema([("breakdown", pa.string()), ("lo", pa.float64()), ("hi", pa.float64()),
                         ("label", pa.string()), ("n_events", pa.int64()), ("mean_angular_error", pa.float64()),
                         ("median_angular_error", pa.float64()), ("containment_68", pa.float64())])


def bins_table(report: dict[str, Any]) -> pa.Table:
    """``bins.parquet``: the report's per-bin tables in one long table (breakdown = energy_gev, true_zenith,
    n_pulses or topology; bin edges lo ≤ x < hi, or the topology's name in ``label``)."""
    rows = []
    for key, label, _ in BIN_TABLES:
        for b in report.get(key) or []:
            lo, hi = b[label]
            rows.append({"breakdown": key.removeprefix("by_"), "lo": lo, "hi": hi, "label": f"{lo:g}-{hi:g}",
                         **{k: b[k] for k in ("n_events", "mean_angular_error", "median_angular_error",
                                              "containment_68")}})
    for name, b in (report.get("by_topology") or {}).items():
        rows.append({"breakdown": "topology", "lo": None, "hi": None, "label": name,
                     **{k: b.get(k) for k in ("n_events", "mean_angular_error", "median_angular_error",
                                              "containment_68")}})
    return pa.Table.from_pylist(rows, schema=BINS_SCHEMA)


N_PULSES_EDGES = np.array([1, 16, 32, 64, 128, 256, 512, 1024, 1e9])
ZENITH_EDGES = np.linspace(0, np.pi, 7)


def energy_edges(energy: np.ndarray) -> np.ndarray:
    """Half-decade bins over the energies present (GeV)."""
    return 10.0 ** np.arange(np.floor(np.log10(energy.min())), np.ceil(np.log10(energy.max())) + 0.5, 0.5)


def evaluate(data: str, split: str, predictions: str, out: str,
             command: list[str] | None = None) -> dict[str, Any]:
    """Compare predictions with the split's truth; publish report.json and PNG plots atomically."""
    sc = score(data, split, predictions)
    err, n_pulses, energy = sc.errors, sc.n_pulses, sc.energy
    az_t, zen_t = sc.truth.column("azimuth").to_numpy(), sc.truth.column("zenith").to_numpy()
    az_p, zen_p = sc.pred.column("azimuth").to_numpy(), sc.pred.column("zenith").to_numpy()
    report: dict[str, Any] = {
        "split": split, "predictions": predictions,
        "mean_angular_error": angular_dist_score(az_t, zen_t, az_p, zen_p),
        **{k: v for k, v in summarise(err).items() if k != "mean_angular_error"},
        "by_n_pulses": _bins(n_pulses, err, N_PULSES_EDGES, "n_pulses"),
        "by_true_zenith": _bins(zen_t, err, ZENITH_EDGES, "zenith"),
    }
    if energy is not None:
        report["by_energy_gev"] = _bins(energy, err, energy_edges(energy), "energy_gev")
    if sc.topology is not None:
        report["by_topology"] = {str(k): summarise(err[sc.topology == k]) for k in np.unique(sc.topology)}
    kappa = sc.kappa
    if kappa is not None:
        report["uncertainty"] = uncertainty.uncertainty_report(
            err, kappa, energy, n_pulses, N_PULSES_EDGES, None if energy is None else energy_edges(energy))
    with ThreadPoolExecutor(1) as pool:  # Parquet encoding releases the GIL: it runs while matplotlib draws
        events = pool.submit(events_parquet, sc)
        plots = _plots(err, zen_t, zen_p, energy, n_pulses)
        if kappa is not None:
            plots.update(_uncertainty_plots(err, kappa, report["uncertainty"]))
        page = report_html(report, plots, {"data": data, "split": split, "predictions": predictions})
        events_bytes, n_rows = events.result()
    bins = bins_table(report)
    with storage.Output(out, command=command, inputs=[data, predictions]) as output:
        output.write(REPORT, json.dumps(report, indent=2).encode())
        output.write(EVENTS, events_bytes)
        output.write(BINS, storage.parquet_bytes(bins))
        output.write(htmlreport.REPORT_HTML, page, htmlreport.CONTENT_TYPE)
        for name, png in plots.items():
            output.write(name, png)
        output.commit(kind="icecube-evaluate", rows={REPORT: len(err), EVENTS: n_rows, BINS: len(bins)},
                      events=len(err),
                      mean_angular_error=report["mean_angular_error"])
    log.info("mean angular error %.4f rad over %d events (median %.4f, 68%% %.4f); report at %s",
             report["mean_angular_error"], len(err), report["median_angular_error"], report["containment_68"],
             storage.join(out, REPORT))
    return report


BIN_TABLES = (("by_energy_gev", "energy_gev", "true energy (GeV)"), ("by_true_zenith", "zenith", "true zenith (rad)"),
              ("by_n_pulses", "n_pulses", "pulses per event"))
CAPTIONS = {
    "error_histogram.png": "Angular error per event (error bars: Poisson √N per bin)",
    "zenith_pred_vs_true.png": "Predicted against true zenith, with the mean predicted zenith per bin ± s.e.m.",
    "error_vs_energy.png": "Mean angular error against true energy (error bars: s.e.m.)",
    "error_vs_n_pulses.png": "Mean angular error against pulses per event (error bars: s.e.m.)",
    "reliability.png": "Reliability of the predicted uncertainties (binomial 1σ)",
    "error_vs_sigma.png": "Angular error against the predicted σ₆₈ (error bars: s.e.m.)",
}


def bin_header(title: str) -> list[str]:
    """The header row that goes with :func:`bin_rows`."""
    return [title, "events", "mean (rad)", "median (rad)", "68 % containment (rad)"]


def bin_rows(bins: list[dict[str, Any]], label: str) -> list[list[Any]]:
    """Rows of a per-bin table: the bin's range, events, mean, median and 68 % containment."""
    return [[f"{b[label][0]:g} – {b[label][1]:g}", b["n_events"], b["mean_angular_error"], b["median_angular_error"],
             b["containment_68"]] for b in bins]


def report_html(report: dict[str, Any], plots: dict[str, bytes], provenance: dict[str, Any]) -> bytes:
    """``report.html``: the headline table, per-bin tables, the plots with their error bars, definitions."""
    head = ["events", "mean angular error (rad)", "median (rad)", "68 % containment (rad)"]
    row: list[Any] = [report["n_events"], report["mean_angular_error"], report["median_angular_error"],
                      report["containment_68"]]
    unc = report.get("uncertainty")
    if unc:
        head += ["coverage 68 %", "coverage 90 %"]
        row += [unc["coverage_68"], unc["coverage_90"]]
    sections = [("Headline", htmlreport.table(head, [row]))]
    for key, label, title in BIN_TABLES:
        if report.get(key):
            sections.append((f"By {title}", htmlreport.table(
                bin_header(title), bin_rows(report[key], label))))
    return htmlreport.render(f"IceCube evaluation: split {report['split']}",
                             "Predicted directions scored against the split's truth with the competition metric.",
                             sections, plots, CAPTIONS, htmlreport.DEFINITIONS, provenance)


def _plots(err: np.ndarray, zen_t: np.ndarray, zen_p: np.ndarray, energy: np.ndarray | None,
           n_pulses: np.ndarray) -> dict[str, bytes]:
    plt = pyplot()
    out = {}
    fig, ax = plt.subplots(figsize=(6, 4))
    edges = np.linspace(0, np.pi, 91)
    counts_with_errors(ax, edges, np.histogram(err, bins=edges)[0], "tab:blue", f"{len(err):,} events (±√N)")
    ax.axvline(err.mean(), color="k", ls="--", label=f"mean {err.mean():.3f} rad")
    ax.axvline(np.median(err), color="tab:red", ls=":", label=f"median {np.median(err):.3f} rad")
    ax.set(xlabel="angular error (rad)", ylabel=f"events per {np.pi / 90:.3f} rad", title="Angular error")
    ax.legend()
    out["error_histogram.png"] = png(fig)

    fig, ax = plt.subplots(figsize=(5, 4.5))
    h = ax.hist2d(zen_t, zen_p, bins=60, range=[[0, np.pi], [0, np.pi]], cmap="viridis")
    fig.colorbar(h[3], ax=ax, label="events per bin")
    ax.plot([0, np.pi], [0, np.pi], "w--", lw=1)
    prof = np.linspace(0, np.pi, 13)  # profile: mean predicted zenith per true-zenith bin ± its s.e.
    idx = np.clip(np.digitize(zen_t, prof) - 1, 0, len(prof) - 2)
    n = np.bincount(idx, minlength=len(prof) - 1)
    mean = np.bincount(idx, zen_p, minlength=len(prof) - 1) / np.maximum(n, 1)
    sq = np.bincount(idx, zen_p * zen_p, minlength=len(prof) - 1) / np.maximum(n, 1)
    sem = np.sqrt(np.maximum(sq - mean ** 2, 0) / np.maximum(n - 1, 1))
    ok = n > 0
    ax.errorbar(((prof[1:] + prof[:-1]) / 2)[ok], mean[ok], yerr=sem[ok], fmt="o", color="tab:red", ms=3,
                capsize=2, label="mean predicted ± s.e.m.")
    ax.set(xlabel="true zenith (rad)", ylabel="predicted zenith (rad)", title="Zenith: predicted vs true")
    ax.legend(fontsize=7, loc="upper left")
    out["zenith_pred_vs_true.png"] = png(fig)

    x, label, name = ((energy, "true energy (GeV)", "error_vs_energy.png") if energy is not None
                      else (n_pulses.astype(float), "pulses per event", "error_vs_n_pulses.png"))
    edges = np.logspace(np.log10(max(x.min(), 1e-3)), np.log10(x.max()) + 1e-9, 16)
    idx = np.clip(np.digitize(x, edges) - 1, 0, len(edges) - 2)
    counts = np.bincount(idx, minlength=len(edges) - 1)
    mean = np.bincount(idx, err, minlength=len(edges) - 1) / np.maximum(counts, 1)
    sq = np.bincount(idx, err * err, minlength=len(edges) - 1) / np.maximum(counts, 1)
    sem = np.sqrt(np.maximum(sq - mean ** 2, 0) / np.maximum(counts - 1, 1))  # standard error of each bin's mean
    centers = np.sqrt(edges[1:] * edges[:-1])
    ok = counts > 0
    fig, (ax, axn) = plt.subplots(2, 1, figsize=(6, 5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.errorbar(centers[ok], mean[ok], yerr=sem[ok], fmt="o-", ms=3, capsize=2)
    ax.set(ylabel="mean angular error (rad)", title=f"Error vs {label.split(' (')[0]} (error bars: s.e. of the mean)")
    ax.grid(alpha=0.3)
    axn.bar(centers[ok], counts[ok], width=np.diff(edges)[ok], color="0.6")
    axn.set(xscale="log", yscale="log", xlabel=label, ylabel="events per bin")
    axn.grid(alpha=0.3)
    out[name] = png(fig)
    return out


def _uncertainty_plots(err: np.ndarray, kappa: np.ndarray, rep: dict[str, Any]) -> dict[str, bytes]:
    """Reliability diagram (predicted containment against observed), and error against predicted σ₆₈."""
    plt = pyplot()
    out = {}
    n = len(err)
    curve = rep["coverage_curve"]
    pred_p, obs = np.array(curve["predicted"]), np.array(curve["observed"])
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="calibrated")
    ax.errorbar(pred_p, obs, yerr=np.sqrt(obs * (1 - obs) / n), fmt="o-", ms=3, capsize=2,
                label=f"observed ({n:,} events; binomial 1σ)")
    ax.set(xlabel="predicted containment probability", ylabel="fraction of events with error inside",
           title="Reliability of the vMF uncertainties", xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    out["reliability.png"] = png(fig)

    s68 = uncertainty.vmf_quantile(kappa, 0.68)
    edges = np.quantile(s68, np.linspace(0, 1, 13))
    edges = np.unique(edges)
    if len(edges) < 2:  # one predicted σ for every event (a constant κ): one bin
        edges = np.array([edges[0], edges[0] + max(1e-9, 1e-9 * edges[0])])
    idx = np.clip(np.digitize(s68, edges) - 1, 0, len(edges) - 2)
    counts = np.bincount(idx, minlength=len(edges) - 1)
    ok = counts > 0
    mean_s = np.bincount(idx, s68, minlength=len(edges) - 1)[ok] / counts[ok]
    q68 = np.array([np.quantile(err[idx == b], 0.68) for b in np.flatnonzero(ok)])  # a dozen bins
    mean_e = np.bincount(idx, err, minlength=len(edges) - 1)[ok] / counts[ok]
    sem = np.array([err[idx == b].std(ddof=1) / np.sqrt(c) if c > 1 else np.nan
                    for b, c in zip(np.flatnonzero(ok), counts[ok])])
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    ax.plot([0, np.pi], [0, np.pi], "k--", lw=1, label="68 % quantile = σ₆₈ (calibrated)")
    ax.plot(mean_s, q68, "o-", label="68 % quantile of the true error")
    ax.errorbar(mean_s, mean_e, yerr=sem, fmt="s:", ms=3, capsize=2, label="mean true error ± s.e.m.")
    for x, y, c in zip(mean_s, q68, counts[ok]):
        ax.annotate(f"{c:,}", (x, y), fontsize=6, textcoords="offset points", xytext=(2, 4))
    ax.set(xlabel="predicted σ₆₈ (rad), bins of equal counts", ylabel="angular error (rad)",
           title="Error against predicted uncertainty", xlim=(0, min(np.pi, 1.1 * edges[-1])), ylim=(0, np.pi))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    out["error_vs_sigma.png"] = png(fig)
    return out
