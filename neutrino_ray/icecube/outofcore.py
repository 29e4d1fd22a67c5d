"""Scoring out of core: predictions joined to the truth by ``event_id`` one event-id range at a time, and
exact quantiles in two passes, so the driver holds one range of events, never the split.

Ranges come from the truth file's row groups (the test split's ``test_truth.parquet``, or the train meta,
which carries the truth): when their ``event_id`` statistics are sorted and disjoint, consecutive row groups
are merged up to ``chunk_events`` events and the ranges tile the whole int64 line, so every prediction row
falls in exactly one range. Each range reads the truth, the meta and the predictions with an ``event_id``
filter pushed down to the Parquet reader (row groups outside it are skipped). A CSV submission has no
statistics to skip by, so over several ranges it is streamed once into one local Parquet file per range
(:class:`Predictions`; a temporary folder, removed when the input is closed): it was scanned whole for each
range and pass. A truth file whose row groups overlap is read as one range (correct, not bounded).

Exact quantiles in two passes: :class:`~neutrino_ray.icecube.quantiles.Quantiles`.
"""

from __future__ import annotations

import functools
import itertools
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads

from neutrino_ray import storage
from neutrino_ray.icecube import data as icdata
from neutrino_ray.icecube import uncertainty
from neutrino_ray.icecube.metrics import angular_distance
from neutrino_ray.icecube.quantiles import Quantiles
from neutrino_ray.progress import Progress

CHUNK_EVENTS = 1 << 20
INT64 = np.iinfo(np.int64)

# The bins of the per-bin tables (evaluate, compare): pulse count, true zenith, and energy per half decade.
N_PULSES_EDGES = np.array([1, 16, 32, 64, 128, 256, 512, 1024, 1e9])
ZENITH_EDGES = np.linspace(0, np.pi, 7)


def energy_edges(energy: np.ndarray) -> np.ndarray:
    """Half-decade bins over the energies present (GeV)."""
    return 10.0 ** np.arange(np.floor(np.log10(energy.min())), np.ceil(np.log10(energy.max())) + 0.5, 0.5)


@dataclass
class Chunk:
    """One event-id range of predictions aligned with the truth, sorted by event_id."""

    event_id: np.ndarray
    batch_id: np.ndarray
    az_true: np.ndarray
    zen_true: np.ndarray
    az_pred: np.ndarray
    zen_pred: np.ndarray
    errors: np.ndarray
    n_pulses: np.ndarray
    energy: np.ndarray | None
    topology: np.ndarray | None
    kappa: np.ndarray | None


def _truth_uri(data: str, split: str) -> str:
    return icdata.meta_uri(data, split) if split == "train" else storage.join(data, f"{split}_truth.parquet")


def id_ranges(truth_uri: str, chunk_events: int = CHUNK_EVENTS) -> list[tuple[int, int]]:
    """Inclusive event-id ranges tiling the int64 line, each about ``chunk_events`` truth rows (whole row
    groups); one range when the row groups' event_id statistics are missing or overlap."""
    md = storage.read_parquet_metadata(truth_uri)
    col = md.schema.to_arrow_schema().get_field_index("event_id")
    groups = []
    for i in range(md.num_row_groups):
        st = md.row_group(i).column(col).statistics
        if st is None or not st.has_min_max:
            return [(INT64.min, INT64.max)]
        groups.append((int(st.min), int(st.max), md.row_group(i).num_rows))
    if any(b[0] <= a[1] for a, b in itertools.pairwise(groups)):
        return [(INT64.min, INT64.max)]
    ranges, lo, rows = [], INT64.min, 0
    for i, (_, gmax, n) in enumerate(groups):
        rows += n
        if rows >= chunk_events and i < len(groups) - 1:
            ranges.append((lo, gmax))
            lo, rows = gmax + 1, 0
    ranges.append((lo, INT64.max))
    return ranges


def _predictions_dataset(uri: str) -> pads.Dataset:
    try:
        if uri.rstrip("/").endswith((".csv", ".parquet")):
            fs, path = storage.arrow_filesystem(uri)
            return pads.dataset(path, format="csv" if uri.endswith(".csv") else "parquet", filesystem=fs)
        files = [u for u in storage.listdir(uri) if u.endswith(".parquet")]
        if not files:
            raise FileNotFoundError(uri)
        fs, _ = storage.arrow_filesystem(files[0])
        return pads.dataset([storage.arrow_filesystem(u)[1] for u in files], format="parquet", filesystem=fs)
    except FileNotFoundError as e:
        raise icdata.DataError(f"{uri}: predictions not found (a .csv or .parquet file, or a folder of "
                               ".parquet parts)") from e


class _Checks:
    """Bad-input counts over every range, raised after the pass as today's one-line errors."""

    def __init__(self) -> None:
        self.missing, self.extra, self.nonfinite, self.kappa_null, self.n = 0, 0, 0, 0, 0
        self.ex_missing: list[int] = []
        self.ex_extra: list[int] = []
        self.ex_nonfinite: int | None = None


class _Reader:
    """One event-id range of the truth and meta (read once, however many predictions are aligned with it),
    and of a predictions input, with an ``event_id`` filter pushed down to each reader."""

    def __init__(self, data: str, split: str):
        self.split = split
        self.truth_uri, self.meta_uri = _truth_uri(data, split), icdata.meta_uri(data, split)
        tnames = storage.read_parquet_metadata(self.truth_uri).schema.to_arrow_schema().names
        self.tcols = ["event_id", "azimuth", "zenith"] + [c for c in ("energy", "topology")
                                                          if c in tnames and split != "train"]

    def truth(self, lo: int, hi: int) -> dict[str, Any]:
        """The range's truth columns (Chunk field names) and ``meta_ids``, each sorted by event_id."""
        truth = storage.read_parquet_range(self.truth_uri, "event_id", lo, hi, self.tcols).sort_by("event_id")
        meta = storage.read_parquet_range(self.meta_uri, "event_id", lo, hi, list(icdata.META_COLUMNS))
        meta = meta.sort_by("event_id")
        first, last = meta.column("first_pulse_index").to_numpy(), meta.column("last_pulse_index").to_numpy()
        return {"event_id": truth.column("event_id").to_numpy(), "meta_ids": meta.column("event_id").to_numpy(),
                "batch_id": meta.column("batch_id").to_numpy(), "az_true": truth.column("azimuth").to_numpy(),
                "zen_true": truth.column("zenith").to_numpy(), "n_pulses": last - first + 1,
                "energy": truth.column("energy").to_numpy() if "energy" in self.tcols else None,
                "topology": np.asarray(truth.column("topology").to_pylist()) if "topology" in self.tcols else None}

    def check_meta(self, t: dict[str, Any], lo: int, hi: int) -> None:
        t_ids = t["event_id"]
        if not np.array_equal(t.pop("meta_ids"), t_ids):
            raise icdata.DataError(f"{self.meta_uri}: the meta's events differ from the truth's in event ids "
                                   f"{t_ids[0] if len(t_ids) else lo}…{t_ids[-1] if len(t_ids) else hi}")


class Predictions:
    """One predictions input, opened once for every pass over the event-id ``ranges``: :meth:`read` returns a
    range's rows (event_id int64, the directions and ``kappa`` float64). Parquet is read with an event_id
    filter pushed down. A CSV over several ranges is first streamed, on the first read, into one Parquet
    file per range in a local temporary folder (any row order; memory: one CSV block), so each later read is
    one small file: local disk about the size of the predictions, removed by :meth:`close` (or when the
    object is collected)."""

    def __init__(self, uri: str, ranges: list[tuple[int, int]]):
        self.uri, self.ranges = uri, ranges
        self.ds = _predictions_dataset(uri)
        names = self.ds.schema.names
        missing_cols = {"event_id", "azimuth", "zenith"} - set(names)
        if missing_cols:
            raise icdata.DataError(f"{uri}: missing columns {sorted(missing_cols)}")
        self.cols = ["event_id", "azimuth", "zenith"] + (["kappa"] if "kappa" in names else [])
        self.schema = pa.schema([(c, pa.int64() if c == "event_id" else pa.float64()) for c in self.cols])
        self._spill: tempfile.TemporaryDirectory[str] | None = None

    def _spill_csv(self) -> None:
        import pyarrow.parquet as pq

        self._spill = tempfile.TemporaryDirectory(prefix="neutrino-ray-csv-")
        his = np.array([hi for _, hi in self.ranges[:-1]], dtype=np.int64)
        writers: dict[int, pq.ParquetWriter] = {}
        try:
            for batch in self.ds.to_batches(columns=self.cols):  # one CSV block at a time
                t = pa.Table.from_batches([batch]).cast(self.schema)
                k = np.searchsorted(his, t.column("event_id").to_numpy(zero_copy_only=False), side="left")
                order = np.argsort(k, kind="stable")
                ks = k[order]
                cuts = [0, *(np.flatnonzero(np.diff(ks)) + 1).tolist(), len(ks)]
                for start, end in itertools.pairwise(cuts):
                    r = int(ks[start])
                    if r not in writers:
                        writers[r] = pq.ParquetWriter(f"{self._spill.name}/{r}.parquet", self.schema)
                    writers[r].write_table(t.take(order[start:end]))
        finally:
            for w in writers.values():
                w.close()

    def read(self, lo: int, hi: int, cols: list[str] | None = None) -> pa.Table:
        """The rows with ``lo <= event_id <= hi`` (one of the ranges, or any span), sorted by event_id."""
        cols = cols or self.cols
        if self.uri.endswith(".csv") and len(self.ranges) > 1 and (lo, hi) in self.ranges:
            if self._spill is None:
                self._spill_csv()
            assert self._spill is not None
            path = f"{self._spill.name}/{self.ranges.index((lo, hi))}.parquet"
            import pyarrow.parquet as pq

            pred = pq.read_table(path, columns=cols) if os.path.exists(path) else self.schema.empty_table()
            return pred.select(cols).sort_by("event_id")
        pred = self.ds.to_table(columns=cols,
                                filter=(pads.field("event_id") >= lo) & (pads.field("event_id") <= hi))
        return pred.cast(pa.schema([self.schema.field(c) for c in cols])).sort_by("event_id")

    def close(self) -> None:
        if self._spill is not None:
            self._spill.cleanup()
            self._spill = None


def chunks(data: str, split: str, predictions: str | Predictions, chunk_events: int = CHUNK_EVENTS,
           ranges: list[tuple[int, int]] | None = None) -> Iterator[Chunk]:
    """Predictions aligned with the truth, one event-id range at a time; after the last range, a DataError
    for missing, unknown, duplicate or non-finite prediction rows, as :func:`evaluate.score` words them."""
    reader = _Reader(data, split)
    if isinstance(predictions, Predictions):
        preds, ranges = predictions, predictions.ranges
    else:
        ranges = ranges if ranges is not None else id_ranges(reader.truth_uri, chunk_events)
        preds = Predictions(predictions, ranges)
    has_kappa = "kappa" in preds.cols
    predictions = preds.uri
    chk = _Checks()

    def one(lo: int, hi: int) -> Chunk | None:
        """One range read, checked and scored; its tables are freed when the caller drops the chunk."""
        t = reader.truth(lo, hi)
        pred = preds.read(lo, hi)
        t_ids, p_ids = t["event_id"], pred.column("event_id").to_numpy()
        if len(p_ids) > 1 and np.any(p_ids[1:] == p_ids[:-1]):
            raise icdata.DataError(f"{predictions}: duplicate event_id rows")
        az_p = pred.column("azimuth").to_numpy(zero_copy_only=False)
        zen_p = pred.column("zenith").to_numpy(zero_copy_only=False)
        bad = np.flatnonzero(~np.isfinite(az_p) | ~np.isfinite(zen_p))
        if len(bad) and chk.ex_nonfinite is None:
            chk.ex_nonfinite = int(p_ids[bad[0]])
        chk.nonfinite += len(bad)
        chk.n += len(p_ids)
        if not np.array_equal(t_ids, p_ids):
            miss, extra = np.setdiff1d(t_ids, p_ids), np.setdiff1d(p_ids, t_ids)
            chk.missing += len(miss)
            chk.extra += len(extra)
            chk.ex_missing = (chk.ex_missing + miss[:3].tolist())[:3]
            chk.ex_extra = (chk.ex_extra + extra[:3].tolist())[:3]
        if chk.nonfinite or chk.missing or chk.extra:
            return None  # keep counting; nothing is scored
        kappa = None
        if has_kappa:
            kcol = pred.column("kappa")
            chk.kappa_null += kcol.null_count
            if kcol.null_count == 0:
                kappa = kcol.to_numpy()
        reader.check_meta(t, lo, hi)
        return Chunk(**t, az_pred=az_p, zen_pred=zen_p,
                     errors=angular_distance(t["az_true"], t["zen_true"], az_p, zen_p), kappa=kappa)
    for lo, hi in ranges:  # no reference to a chunk is kept here while the next one is read
        ch = one(lo, hi)
        if ch is not None:
            yield ch
        ch = None
    if chk.nonfinite:
        raise icdata.DataError(f"{predictions}: event_id {chk.ex_nonfinite} has a non-finite prediction "
                               f"({chk.nonfinite} such rows)")
    if chk.missing or chk.extra:
        raise icdata.DataError(f"{predictions}: event ids differ from the {split} split: {chk.missing} missing "
                               f"(e.g. {chk.ex_missing}), {chk.extra} unknown (e.g. {chk.ex_extra})")
    if has_kappa and 0 < chk.kappa_null < chk.n:
        raise icdata.DataError(f"{predictions}: kappa is null for {chk.kappa_null} of {chk.n} events")


def side_by_side(data: str, split: str, predictions: list[str] | list[Predictions],
                 chunk_events: int = CHUNK_EVENTS) -> Iterator[list[Chunk]]:
    """Several predictions inputs of one split aligned with its truth, one event-id range at a time: the
    truth and meta are read once per range and shared by every input's chunk, so the driver holds one range
    of truth plus each input's predicted directions and errors (compare's side-by-side pass; reading each
    input as its own :func:`chunks` held one truth copy per input and, with the previous range of the other
    inputs still alive, about twice a range per input). The inputs were validated by :func:`chunks` first;
    here an input whose events no longer match (a file replaced meanwhile) is a DataError. No κ."""
    reader = _Reader(data, split)
    ranges = id_ranges(reader.truth_uri, chunk_events)
    opened = [p if isinstance(p, Predictions) else Predictions(p, ranges) for p in predictions]
    if any(p.ranges != ranges for p in opened):
        raise ValueError("side_by_side: predictions opened for other event-id ranges")
    for lo, hi in ranges:
        t = reader.truth(lo, hi)
        reader.check_meta(t, lo, hi)
        out = []
        for p in opened:
            pred = p.read(lo, hi, ["event_id", "azimuth", "zenith"])
            if not np.array_equal(pred.column("event_id").to_numpy(), t["event_id"]):
                raise icdata.DataError(f"{p.uri}: event ids in {lo}…{hi} changed since the first pass "
                                       f"({pred.num_rows} rows against {len(t['event_id'])} events)")
            az_p = pred.column("azimuth").to_numpy(zero_copy_only=False)
            zen_p = pred.column("zenith").to_numpy(zero_copy_only=False)
            del pred
            out.append(Chunk(**t, az_pred=az_p, zen_pred=zen_p,
                             errors=angular_distance(t["az_true"], t["zen_true"], az_p, zen_p), kappa=None))
        del t
        yield out
        out = []  # dropped before the next range is read


class Source:
    """The aligned chunks of one predictions input, for several passes: held in memory after the first pass
    when the split is one range (one chunk's memory either way), read again for each pass otherwise."""

    def __init__(self, data: str, split: str, predictions: str, chunk_events: int = CHUNK_EVENTS):
        self.data, self.split, self.predictions = data, split, predictions
        truth_uri = _truth_uri(data, split)
        self.ranges = id_ranges(truth_uri, chunk_events)
        self.n_events = storage.read_parquet_metadata(truth_uri).num_rows
        self.opened = Predictions(predictions, self.ranges)  # a CSV is streamed into ranges once, not per pass
        self._cache: list[Chunk] | None = None

    def __iter__(self) -> Iterator[Chunk]:
        if self._cache is not None:
            yield from self._cache
            return
        it = chunks(self.data, self.split, self.opened)
        if len(self.ranges) == 1:
            self._cache = list(it)
            yield from self._cache
        else:
            yield from it


def _energy_range(data: str, split: str) -> tuple[float, float] | None:
    """min and max true energy from the truth file's column statistics (no data read), or None."""
    if split == "train":
        return None
    md = storage.read_parquet_metadata(_truth_uri(data, split))
    col = md.schema.to_arrow_schema().get_field_index("energy")
    if col < 0:
        return None
    lo, hi = np.inf, -np.inf
    for i in range(md.num_row_groups):
        st = md.row_group(i).column(col).statistics
        if st is None or not st.has_min_max:
            raise icdata.DataError(f"{_truth_uri(data, split)}: energy has no row-group statistics")
        lo, hi = min(lo, float(st.min)), max(hi, float(st.max))
    return lo, hi


class _Sums:
    def __init__(self) -> None:
        self.n, self.total = 0, 0.0

    def add(self, v: np.ndarray) -> None:
        self.n += len(v)
        self.total += float(v.sum())


QS = (0.5, 0.68)
SIGMA_EDGE_QS = tuple(float(q) for q in np.linspace(0, 1, 13))  # error-vs-σ₆₈ plot: 12 bins of equal counts
ERR_EDGES = np.linspace(0, np.pi, 91)
ZEN2D_BINS = 60
PROFILE_EDGES = np.linspace(0, np.pi, 13)


def plot_edges(lo: float, hi: float) -> np.ndarray:
    """Log-spaced edges of the error-against-energy (or pulse count) plot over [lo, hi]."""
    return np.logspace(np.log10(max(lo, 1e-3)), np.log10(hi) + 1e-9, 16)


@dataclass
class PlotData:
    """What evaluate's plots need, binned while streaming (no per-event arrays)."""

    n: int
    mean: float
    median: float
    err_hist: np.ndarray  # counts over ERR_EDGES
    zen2d: np.ndarray  # true × predicted zenith counts, ZEN2D_BINS² over [0, π]²
    profile: np.ndarray  # per PROFILE_EDGES bin: count, Σ predicted zenith, Σ its square
    x_label: str
    x_name: str
    x_edges: np.ndarray
    x_sums: np.ndarray  # per x bin: count, Σ error, Σ error²
    sigma: dict[str, np.ndarray] | None = None  # error-vs-σ₆₈ plot: edges, count, Σσ, Σerr, Σerr², q68 per bin


def _bin_sums(idx: np.ndarray, values: np.ndarray, n_bins: int) -> np.ndarray:
    return np.stack([np.bincount(idx, minlength=n_bins), np.bincount(idx, values, minlength=n_bins),
                     np.bincount(idx, values * values, minlength=n_bins)]).astype(np.float64)


def bin_masks(ch: Chunk, breakdowns: list[tuple[str, str, np.ndarray]]) -> Iterator[tuple[Any, Any]]:
    """(key, mask) of ("all", True) and of every breakdown bin (``(breakdown, bin)``; ``("by_topology",
    name)``) the chunk's events fall in. The bins present come from a bincount, not np.unique, whose sort of
    every range's bin indices cost a visible share of evaluate's CPU (docs/icecube.md, "evaluate on 1,000,000
    test events, again")."""
    yield "all", True
    cols: dict[str, Any] = {"n_pulses": ch.n_pulses, "zenith": ch.zen_true, "energy_gev": ch.energy}
    for key, label, edges in breakdowns:
        nb = len(edges) - 1
        idx = np.digitize(cols[label], edges) - 1
        present = np.bincount(np.clip(idx + 1, 0, nb + 1), minlength=nb + 2)[1:nb + 1]
        for b in np.flatnonzero(present):
            yield (key, int(b)), idx == b
    if ch.topology is not None:
        for k in np.unique(ch.topology):
            yield ("by_topology", str(k)), ch.topology == k


def evaluate_passes(source: Source, what: str = "evaluate",
                    on_chunk: Callable[[Chunk], None] | None = None) -> tuple[dict[str, Any], PlotData]:
    """evaluate's report and plot data, out of core: pass 1 validates every range and accumulates sums,
    histograms and coverage counts; pass 2 selects the exact quantiles (and hands each chunk to ``on_chunk``,
    once the input is known good); with a κ, passes 3 and 4 bin the errors by the exact σ₆₈ quantiles for
    the error-against-σ plot. Figures equal :func:`evaluate.score`-based ones (``np.quantile`` exactly)."""

    e_range = _energy_range(source.data, source.split)
    e_edges = energy_edges(np.array(e_range)) if e_range else None
    breakdowns: list[tuple[str, str, np.ndarray]] = [("by_n_pulses", "n_pulses", N_PULSES_EDGES),
                                                     ("by_true_zenith", "zenith", ZENITH_EDGES)]
    if e_edges is not None:
        breakdowns.append(("by_energy_gev", "energy_gev", e_edges))
    qerr, qpull, qs68 = Quantiles(QS), Quantiles((0.1, 0.5, 0.9)), Quantiles((*SIGMA_EDGE_QS, 0.5))
    sums: dict[Any, _Sums] = {}
    cov: dict[Any, np.ndarray] = {}
    levels = np.array(sorted(set(uncertainty.LEVELS) | set(uncertainty.CURVE_LEVELS)))
    pit = np.zeros(10)
    pull_below_1 = 0
    with_kappa = False
    err_hist = np.zeros(len(ERR_EDGES) - 1)
    zen2d = np.zeros((ZEN2D_BINS, ZEN2D_BINS))
    profile = np.zeros((3, len(PROFILE_EDGES) - 1))
    np_lo, np_hi = np.inf, -np.inf

    keyed = functools.partial(bin_masks, breakdowns=breakdowns)

    passes = 2
    with Progress(what, source.n_events * passes, tick=True) as prog:
        for ch in source:  # pass 1: sums, histograms, coverage counts; every range validated
            u = None
            if ch.kappa is not None:
                with_kappa = True
                u, s68 = uncertainty.vmf_cdf(ch.kappa, ch.errors), uncertainty.vmf_quantile(ch.kappa, 0.68)
                pull = ch.errors / np.maximum(s68, 1e-12)
                pull_below_1 += int(np.count_nonzero(pull <= 1))
                qpull.add("pull", pull)
                qs68.add("s68", s68)
                pit += np.histogram(u, bins=10, range=(0, 1))[0]
            for key, sel in keyed(ch):
                e = ch.errors if key == "all" else ch.errors[sel]
                sums.setdefault(key, _Sums()).add(e)
                qerr.add(key, e)
                if u is not None and (key == "all" or key[0] in ("by_n_pulses", "by_energy_gev")):
                    c = ((u if key == "all" else u[sel])[:, None] <= levels[None, :]).sum(axis=0)
                    cov[key] = cov.get(key, 0) + c
            err_hist += np.histogram(ch.errors, bins=ERR_EDGES)[0]
            zen2d += np.histogram2d(ch.zen_true, ch.zen_pred, bins=ZEN2D_BINS, range=[[0, np.pi], [0, np.pi]])[0]
            idx = np.clip(np.digitize(ch.zen_true, PROFILE_EDGES) - 1, 0, len(PROFILE_EDGES) - 2)
            profile += _bin_sums(idx, ch.zen_pred, len(PROFILE_EDGES) - 1)
            if len(ch.n_pulses):
                np_lo, np_hi = min(np_lo, float(ch.n_pulses.min())), max(np_hi, float(ch.n_pulses.max()))
            prog.update(len(ch.errors))
            del ch, u, e, sel  # before the next range is read: one range in memory
        if with_kappa:
            prog.total = source.n_events * (passes + 2)
        if "all" not in sums:
            raise icdata.DataError(f"{source.predictions}: no events to score")
        x_label, x_name, x_edges = (("true energy (GeV)", "error_vs_energy.png", plot_edges(*e_range)) if e_range
                                    else ("pulses per event", "error_vs_n_pulses.png", plot_edges(np_lo, np_hi)))
        x_sums = np.zeros((3, len(x_edges) - 1))
        for ch in source:  # pass 2: the values of the bins that hold the wanted ranks; the x-binned plot
            if ch.kappa is not None:
                s68 = uncertainty.vmf_quantile(ch.kappa, 0.68)
                qpull.collect("pull", ch.errors / np.maximum(s68, 1e-12))
                qs68.collect("s68", s68)
            for key, sel in keyed(ch):
                qerr.collect(key, ch.errors if key == "all" else ch.errors[sel])
            x = ch.energy if e_range else ch.n_pulses.astype(float)
            assert x is not None
            idx = np.clip(np.digitize(x, x_edges) - 1, 0, len(x_edges) - 2)
            x_sums += _bin_sums(idx, ch.errors, len(x_edges) - 1)
            if on_chunk is not None:
                on_chunk(ch)
            prog.update(len(ch.errors))
            del ch  # before the next range is read: one range in memory
        sigma = None
        if with_kappa:  # passes 3 and 4: errors binned by the exact σ₆₈ quantiles, their 68 % quantile per bin
            s_edges = np.unique(qs68.result("s68")[:-1])
            if len(s_edges) < 2:  # one predicted σ for every event (a constant κ): one bin
                s_edges = np.array([s_edges[0], s_edges[0] + max(1e-9, 1e-9 * s_edges[0])])
            nb = len(s_edges) - 1
            sig = np.zeros((4, nb))
            q68 = Quantiles((0.68,))
            for step in (3, 4):
                for ch in source:
                    assert ch.kappa is not None
                    s68 = uncertainty.vmf_quantile(ch.kappa, 0.68)
                    idx = np.clip(np.digitize(s68, s_edges) - 1, 0, nb - 1)
                    if step == 3:
                        sig[0] += np.bincount(idx, minlength=nb)
                        sig[1] += np.bincount(idx, s68, minlength=nb)
                        sig[2:] += _bin_sums(idx, ch.errors, nb)[1:]
                    for b in np.unique(idx):
                        (q68.add if step == 3 else q68.collect)(int(b), ch.errors[idx == b])
                    prog.update(len(ch.errors))
                    del ch
            ok = sig[0] > 0
            sigma = {"edges": s_edges, "counts": sig[0], "sum_sigma": sig[1], "sum_err": sig[2], "sum_err2": sig[3],
                     "q68": np.array([q68.result(int(b))[0] if ok[b] else np.nan for b in range(nb)])}

    def summary(key: Any) -> dict[str, Any]:
        med, c68 = qerr.result(key)
        s = sums[key]
        return {"n_events": s.n, "mean_angular_error": s.total / s.n, "median_angular_error": med,
                "containment_68": c68}

    n = sums["all"].n
    report: dict[str, Any] = {"mean_angular_error": sums["all"].total / n, **summary("all")}
    for key, label, edges in breakdowns:
        report[key] = [{label: [float(edges[b]), float(edges[b + 1])], **summary((key, b))}
                       for b in range(len(edges) - 1) if (key, b) in sums]
    topo = sorted(k[1] for k in sums if k != "all" and k[0] == "by_topology")
    if topo:
        report["by_topology"] = {k: summary(("by_topology", k)) for k in topo}
    if with_kappa:
        frac = {float(p): float(c) / n for p, c in zip(levels, cov["all"])}
        pull_q = qpull.result("pull")
        unc: dict[str, Any] = {
            "n_events": n, **{f"coverage_{round(100 * p)}": frac[p] for p in uncertainty.LEVELS},
            "coverage_curve": {"predicted": list(uncertainty.CURVE_LEVELS),
                               "observed": [frac[p] for p in uncertainty.CURVE_LEVELS]},
            "pull_sigma68": {"median": pull_q[1], "fraction_below_1": pull_below_1 / n,
                             "quantiles_10_50_90": pull_q},
            "pit_histogram": [float(c) for c in pit / n],
            "median_sigma_68": qs68.result("s68")[-1],
        }
        for key, label, edges in breakdowns:
            if key in ("by_n_pulses", "by_energy_gev"):
                unc[key] = [{label: [float(edges[b]), float(edges[b + 1])], "n_events": sums[(key, b)].n,
                             **{f"coverage_{round(100 * p)}": float(cov[(key, b)][list(levels).index(p)])
                                / sums[(key, b)].n for p in uncertainty.LEVELS}}
                            for b in range(len(edges) - 1) if (key, b) in sums]
        report["uncertainty"] = unc
    plot = PlotData(n, report["mean_angular_error"], report["median_angular_error"], err_hist, zen2d, profile,
                    x_label, x_name, x_edges, x_sums, sigma)
    return report, plot


def evaluate_summary(data: str, split: str, predictions: str, chunk_events: int = CHUNK_EVENTS) -> dict[str, Any]:
    """:func:`evaluate_passes`'s report alone."""
    return evaluate_passes(Source(data, split, predictions, chunk_events))[0]
