"""Score a submission against the truth: the competition metric, breakdowns and plots."""

from __future__ import annotations

import json
import logging
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from neutrino_ray import htmlreport, storage
from neutrino_ray.icecube import data as icdata
from neutrino_ray.icecube import outofcore, uncertainty
from neutrino_ray.plotting import counts_with_errors, png, pyplot

log = logging.getLogger("neutrino_ray")

REPORT = "report.json"
EVENTS, BINS = "events.parquet", "bins.parquet"
ROW_GROUP_EVENTS = 1 << 18  # events.parquet row groups: 262,144 events, sorted by event_id (so by batch_id too)


def read_predictions(uri: str) -> pa.Table:
    """A submission (CSV or Parquet), or a folder of Parquet parts (``OUT/predictions/`` of ``icecube predict
    --format parquet``), with event_id, azimuth, zenith; validated, whole in memory (small data; evaluate and
    compare read out of core, :mod:`~neutrino_ray.icecube.outofcore`)."""
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


def events_table(ch: outofcore.Chunk) -> pa.Table:
    """``events.parquet`` rows of one chunk, sorted by event_id: its batch, true and predicted direction, the
    angular error, the pulse count, and where known the true energy and topology, the predicted κ, σ₆₈ and
    the probability-integral transform u = P(angle ≤ error) (calibrated: uniform)."""
    f8 = pa.float64()
    cols: dict[str, Any] = {"event_id": pa.array(ch.event_id, pa.int64()),
                            "batch_id": pa.array(ch.batch_id, pa.int64()),
                            "true_azimuth": pa.array(ch.az_true, f8), "true_zenith": pa.array(ch.zen_true, f8),
                            "azimuth": pa.array(ch.az_pred, f8), "zenith": pa.array(ch.zen_pred, f8),
                            "angular_error": pa.array(ch.errors, f8), "n_pulses": pa.array(ch.n_pulses, pa.int64())}
    if ch.energy is not None:
        cols["energy"] = pa.array(ch.energy, pa.float64())
    if ch.topology is not None:
        cols["topology"] = pa.array(ch.topology.astype(str), pa.string())
    if ch.kappa is not None:
        cols["kappa"] = pa.array(ch.kappa, pa.float64())
        cols["sigma_68"] = pa.array(uncertainty.vmf_quantile(ch.kappa, 0.68), pa.float64())
        cols["pit"] = pa.array(uncertainty.vmf_cdf(ch.kappa, ch.errors), pa.float64())
    return pa.table(cols)


class EventsWriter:
    """``events.parquet`` streamed chunk by chunk (chunks arrive in event_id order): row groups of
    :data:`ROW_GROUP_EVENTS`, statistics on every column, dictionary encoding only where values repeat (on a
    million distinct floats it tripled the encoding time). Each chunk is encoded before the next range is
    read (one range in memory); the last rows are encoded on a thread (it releases the GIL) while the plots
    draw: :meth:`finish` starts it, :meth:`close` waits."""

    def __init__(self, uri: str, one_range: bool = False):
        self.one_range = one_range  # no next range to read: every chunk encodes on the thread
        self._cm = storage.open_output(uri)
        self._f = self._cm.__enter__()
        self._writer: pq.ParquetWriter | None = None
        self._pending: list[pa.Table] = []
        self._pool = ThreadPoolExecutor(1)
        self._job: Future[None] | None = None
        self.rows = 0

    def _write(self, tables: list[pa.Table]) -> None:
        t = pa.concat_tables(tables)
        if self._writer is None:
            repeated = [c for c in ("batch_id", "topology") if c in t.column_names]
            self._writer = pq.ParquetWriter(self._f, t.schema, use_dictionary=repeated)
        self._writer.write_table(t, row_group_size=ROW_GROUP_EVENTS)

    def _flush(self, final: bool) -> None:
        n = sum(len(t) for t in self._pending)
        full = n if final else n - n % ROW_GROUP_EVENTS
        if not full:
            return
        t = pa.concat_tables(self._pending)
        self._pending = [t.slice(full)] if full < n else []
        if self._job is not None:
            self._job.result()
        self._job = self._pool.submit(self._write, [t.slice(0, full)])
        if not final and not self.one_range:  # encoded before the next range is read: one range in memory
            self._job.result()

    def add(self, ch: outofcore.Chunk) -> None:
        t = events_table(ch)
        self.rows += len(t)
        self._pending.append(t)
        self._flush(final=False)

    def finish(self) -> None:
        self._flush(final=True)

    def close(self) -> None:
        if self._job is not None:
            self._job.result()
        self._pool.shutdown()
        if self._writer is not None:
            self._writer.close()
        self._cm.__exit__(None, None, None)

    def abort(self, exc: BaseException) -> None:
        self._pool.shutdown(cancel_futures=True)
        self._cm.__exit__(type(exc), exc, exc.__traceback__)


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


def evaluate(data: str, split: str, predictions: str, out: str,
             command: list[str] | None = None, chunk_events: int = outofcore.CHUNK_EVENTS) -> dict[str, Any]:
    """Compare predictions with the split's truth, out of core (one event-id range at a time:
    :mod:`~neutrino_ray.icecube.outofcore`); publish report.json, events.parquet, bins.parquet, report.html
    and PNG plots atomically. Bad input fails in the first pass, before the output is opened."""
    source = outofcore.Source(data, split, predictions, chunk_events)
    with ExitStack() as stack:
        opened: dict[str, Any] = {}

        def on_chunk(ch: outofcore.Chunk) -> None:  # pass 2: the input is known good
            if not opened:
                opened["out"] = stack.enter_context(storage.Output(out, command=command, inputs=[data, predictions]))
                opened["events"] = EventsWriter(opened["out"].staged(EVENTS), len(source.ranges) == 1)
            opened["events"].add(ch)

        try:
            body, pdata = outofcore.evaluate_passes(source, "evaluate", on_chunk)
            opened["events"].finish()
            report: dict[str, Any] = {"split": split, "predictions": predictions, **body}
            plots = _plots(pdata)
            if pdata.sigma is not None:
                plots.update(_uncertainty_plots(pdata, report["uncertainty"]))
            page = report_html(report, plots, {"data": data, "split": split, "predictions": predictions})
            bins = bins_table(report)
        except BaseException as e:
            if "events" in opened:
                opened["events"].abort(e)
            raise
        opened["events"].close()
        output = opened["out"]
        output.write(REPORT, json.dumps(report, indent=2).encode())
        output.write(BINS, storage.parquet_bytes(bins))
        output.write(htmlreport.REPORT_HTML, page, htmlreport.CONTENT_TYPE)
        for name, blob in plots.items():
            output.write(name, blob)
        n = report["n_events"]
        output.commit(kind="icecube-evaluate", rows={REPORT: n, EVENTS: opened["events"].rows, BINS: len(bins)},
                      events=n, mean_angular_error=report["mean_angular_error"])
    source.opened.close()  # a CSV's per-range files
    log.info("mean angular error %.4f rad over %d events (median %.4f, 68%% %.4f); report at %s",
             report["mean_angular_error"], n, report["median_angular_error"], report["containment_68"],
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


def _sem(sums: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per bin from (count, Σx, Σx²): the count, the mean and the standard error of the mean."""
    n = sums[0]
    mean = sums[1] / np.maximum(n, 1)
    var = np.maximum(sums[2] / np.maximum(n, 1) - mean ** 2, 0) * n / np.maximum(n - 1, 1)
    return n, mean, np.sqrt(var / np.maximum(n, 1))


def _plots(p: outofcore.PlotData) -> dict[str, bytes]:
    plt = pyplot()
    out = {}
    fig, ax = plt.subplots(figsize=(6, 4))
    counts_with_errors(ax, outofcore.ERR_EDGES, p.err_hist, "tab:blue", f"{p.n:,} events (±√N)")
    ax.axvline(p.mean, color="k", ls="--", label=f"mean {p.mean:.3f} rad")
    ax.axvline(p.median, color="tab:red", ls=":", label=f"median {p.median:.3f} rad")
    ax.set(xlabel="angular error (rad)", ylabel=f"events per {np.pi / 90:.3f} rad", title="Angular error")
    ax.legend()
    out["error_histogram.png"] = png(fig)

    fig, ax = plt.subplots(figsize=(5, 4.5))
    edges = np.linspace(0, np.pi, outofcore.ZEN2D_BINS + 1)
    mesh = ax.pcolormesh(edges, edges, p.zen2d.T, cmap="viridis")
    fig.colorbar(mesh, ax=ax, label="events per bin")
    ax.plot([0, np.pi], [0, np.pi], "w--", lw=1)
    prof = outofcore.PROFILE_EDGES  # profile: mean predicted zenith per true-zenith bin ± its s.e.
    n, mean, sem = _sem(p.profile)
    ok = n > 0
    ax.errorbar(((prof[1:] + prof[:-1]) / 2)[ok], mean[ok], yerr=sem[ok], fmt="o", color="tab:red", ms=3,
                capsize=2, label="mean predicted ± s.e.m.")
    ax.set(xlabel="true zenith (rad)", ylabel="predicted zenith (rad)", title="Zenith: predicted vs true")
    ax.legend(fontsize=7, loc="upper left")
    out["zenith_pred_vs_true.png"] = png(fig)

    edges = p.x_edges
    counts, mean, sem = _sem(p.x_sums)
    centers = np.sqrt(edges[1:] * edges[:-1])
    ok = counts > 0
    fig, (ax, axn) = plt.subplots(2, 1, figsize=(6, 5), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.errorbar(centers[ok], mean[ok], yerr=sem[ok], fmt="o-", ms=3, capsize=2)
    ax.set(ylabel="mean angular error (rad)",
           title=f"Error vs {p.x_label.split(' (')[0]} (error bars: s.e. of the mean)")
    ax.grid(alpha=0.3)
    axn.bar(centers[ok], counts[ok], width=np.diff(edges)[ok], color="0.6")
    axn.set(xscale="log", yscale="log", xlabel=p.x_label, ylabel="events per bin")
    axn.grid(alpha=0.3)
    out[p.x_name] = png(fig)
    return out


def _uncertainty_plots(p: outofcore.PlotData, rep: dict[str, Any]) -> dict[str, bytes]:
    """Reliability diagram (predicted containment against observed), and error against predicted σ₆₈."""
    assert p.sigma is not None
    plt = pyplot()
    out = {}
    n = p.n
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

    sg = p.sigma
    counts = sg["counts"]
    ok = counts > 0
    mean_s = sg["sum_sigma"][ok] / counts[ok]
    q68 = sg["q68"][ok]
    _, mean_e, sem = _sem(np.stack([counts, sg["sum_err"], sg["sum_err2"]]))
    mean_e, sem = mean_e[ok], np.where(counts[ok] > 1, sem[ok], np.nan)
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    ax.plot([0, np.pi], [0, np.pi], "k--", lw=1, label="68 % quantile = σ₆₈ (calibrated)")
    ax.plot(mean_s, q68, "o-", label="68 % quantile of the true error")
    ax.errorbar(mean_s, mean_e, yerr=sem, fmt="s:", ms=3, capsize=2, label="mean true error ± s.e.m.")
    for x, y, c in zip(mean_s, q68, counts[ok]):
        ax.annotate(f"{int(c):,}", (x, y), fontsize=6, textcoords="offset points", xytext=(2, 4))
    ax.set(xlabel="predicted σ₆₈ (rad), bins of equal counts", ylabel="angular error (rad)",
           title="Error against predicted uncertainty", xlim=(0, min(np.pi, 1.1 * sg["edges"][-1])), ylim=(0, np.pi))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    out["error_vs_sigma.png"] = png(fig)
    return out
