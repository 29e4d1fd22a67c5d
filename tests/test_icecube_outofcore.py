"""Out-of-core scoring (icecube.outofcore) equals the in-memory evaluate on small data, bad input included."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from neutrino_ray.icecube import data as icdata
from neutrino_ray.icecube import outofcore, uncertainty
from neutrino_ray.icecube.compare import compare
from neutrino_ray.icecube.evaluate import evaluate
from neutrino_ray.icecube.metrics import angular_distance, summarise
from neutrino_ray.icecube.outofcore import N_PULSES_EDGES, ZENITH_EDGES, energy_edges
from neutrino_ray.icecube.quantiles import Quantiles


def _split(root: Path, n: int, kappa: bool, row_group: int) -> Path:
    """A test split of ``n`` events (meta, truth with energy and topology, truth in ``row_group``-row groups)
    and predictions: submission.csv, and predictions.parquet with a κ when asked."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(1)
    ids = 3 * np.arange(n, dtype=np.int64) + 7
    first = np.arange(n) * 5
    pq.write_table(pa.table({"batch_id": (1 + np.arange(n) // 700).astype(np.int64), "event_id": ids,
                             "first_pulse_index": first.astype(np.int64),
                             "last_pulse_index": (first + rng.integers(0, 300, n)).astype(np.int64)}),
                   root / "test_meta.parquet", row_group_size=row_group)
    az, zen = rng.uniform(0, 2 * np.pi, n), np.arccos(rng.uniform(-1, 1, n))
    topo = rng.choice(["track", "cascade"], n)
    pq.write_table(pa.table({"event_id": ids, "azimuth": az, "zenith": zen, "energy": 10 ** rng.uniform(1, 5, n),
                             "topology": topo}), root / "test_truth.parquet", row_group_size=row_group)
    pred = {"event_id": ids, "azimuth": np.mod(az + rng.normal(0, .4, n), 2 * np.pi),
            "zenith": np.clip(zen + rng.normal(0, .4, n), 0, np.pi)}
    order = rng.permutation(n)  # predictions in any order
    t = pa.table(pred).take(order)
    pacsv.write_csv(t, root / "submission.csv")
    if kappa:
        t = t.append_column("kappa", pa.array(rng.uniform(1, 50, n)))
    pq.write_table(t, root / "predictions.parquet", row_group_size=997)
    return root


def _close(a: object, b: object, path: str = "") -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict)
        for k in a:
            assert k in b, f"{path}.{k} missing out of core"
            _close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _close(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert abs(a - b) <= 1e-9, f"{path}: in memory {a}, out of core {b}"
    else:
        assert a == b, f"{path}: in memory {a}, out of core {b}"


def _in_memory_errors(root: Path, pred_uri: str) -> np.ndarray:
    """Every event's angular error, in event-id order, all in memory."""
    truth = pq.read_table(root / "test_truth.parquet").sort_by("event_id")
    pred = (pq.read_table(pred_uri) if pred_uri.endswith(".parquet") else pacsv.read_csv(pred_uri)).sort_by("event_id")
    return angular_distance(*(t.column(c).to_numpy() for t in (truth, pred) for c in ("azimuth", "zenith")))


def _in_memory(root: Path, pred_uri: str) -> dict[str, object]:
    """The figures computed the way evaluate did before it went out of core: every event in memory."""
    truth = pq.read_table(root / "test_truth.parquet").sort_by("event_id")
    meta = pq.read_table(root / "test_meta.parquet").sort_by("event_id")
    pred = (pq.read_table(pred_uri) if pred_uri.endswith(".parquet") else pacsv.read_csv(pred_uri)).sort_by("event_id")
    err = _in_memory_errors(root, pred_uri)
    n_pulses = meta.column("last_pulse_index").to_numpy() - meta.column("first_pulse_index").to_numpy() + 1
    energy, zen = truth.column("energy").to_numpy(), truth.column("zenith").to_numpy()
    topo = np.asarray(truth.column("topology").to_pylist())

    def bins(values: np.ndarray, edges: np.ndarray, label: str) -> list[dict[str, object]]:
        idx = np.digitize(values, edges) - 1
        return [{label: [float(edges[b]), float(edges[b + 1])], **summarise(err[idx == b])}
                for b in range(len(edges) - 1) if (idx == b).any()]

    out: dict[str, object] = {**summarise(err), "by_n_pulses": bins(n_pulses, N_PULSES_EDGES, "n_pulses"),
                              "by_true_zenith": bins(zen, ZENITH_EDGES, "zenith"),
                              "by_energy_gev": bins(energy, energy_edges(energy), "energy_gev"),
                              "by_topology": {str(k): summarise(err[topo == k]) for k in np.unique(topo)}}
    if "kappa" in pred.column_names:
        out["uncertainty"] = uncertainty.uncertainty_report(err, pred.column("kappa").to_numpy(), energy, n_pulses,
                                                            N_PULSES_EDGES, energy_edges(energy))
    return out


@pytest.mark.parametrize("kappa", [False, True])
def test_out_of_core_equals_in_memory(tmp_path: Path, kappa: bool) -> None:
    """evaluate and compare (out of core, 4 ranges) give the in-memory computation's figures; compare's paired
    mean difference and fraction of A-better events, from its side-by-side pass, the direct ones."""
    root = _split(tmp_path / "d", 20_011, kappa, row_group=3_000)
    pred = str(root / ("predictions.parquet" if kappa else "submission.csv"))
    expected = _in_memory(root, pred)
    assert len(outofcore.id_ranges(str(root / "test_truth.parquet"), 5_000)) == 4  # 7 row groups, merged
    got = evaluate(str(root), "test", pred, str(tmp_path / "ev"), chunk_events=5_000)
    _close(expected, {k: got[k] for k in expected})
    rep = compare(str(root), "test", [pred, str(root / "submission.csv")], ["a", "b"], str(tmp_path / "cmp"),
                  chunk_events=5_000)
    model = rep["models"][0]
    err_a, err_b = _in_memory_errors(root, pred), _in_memory_errors(root, str(root / "submission.csv"))
    pair = rep["paired"][0]
    assert pair["n_events"] == 20_011
    assert pair["mean_difference"] == pytest.approx(np.mean(err_a - err_b), abs=1e-12)
    assert pair["fraction_a_better"] == pytest.approx(np.mean(err_a < err_b), abs=1e-12)
    for b in model["by_n_pulses"]:
        lo, hi = b["mean_interval_68"]
        assert lo < b["mean_angular_error"] < hi
    _close(expected, {k: model[k] for k in expected})


def test_quantiles_exact_with_ties_and_bin_edges() -> None:
    rng = np.random.default_rng(3)
    v = np.concatenate([rng.exponential(0.5, 10_001), np.full(500, 0.25), [0.0, 0.0, 40.0]])
    q = Quantiles((0.0, 0.1, 0.5, 0.68, 0.9, 1.0))
    parts = np.array_split(rng.permutation(v), 7)
    for p in parts:
        q.add("k", p)
    for p in parts:
        q.collect("k", p)
    np.testing.assert_allclose(q.result("k"), np.quantile(v, q.qs), rtol=0, atol=1e-12)


@pytest.mark.parametrize("case,message", [
    ("missing", "event ids differ from the test split: 2 missing (e.g. [7, 9007]), 0 unknown"),
    ("extra", "1 unknown (e.g. [5])"),
    ("duplicate", "duplicate event_id rows"),
    ("nonfinite", "has a non-finite prediction (1 such rows)"),
])
def test_out_of_core_bad_predictions(tmp_path: Path, case: str, message: str) -> None:
    root = _split(tmp_path / "d", 5_000, False, row_group=1_000)
    t = pq.read_table(root / "predictions.parquet").sort_by("event_id")
    if case == "missing":  # one in the first range, one in a later one
        t = t.filter(pa.compute.invert(pa.compute.is_in(t.column("event_id"), pa.array([7, 9007]))))
    elif case == "extra":
        t = pa.concat_tables([t, pa.table({"event_id": [5], "azimuth": [0.1], "zenith": [0.2]})])
    elif case == "duplicate":
        t = pa.concat_tables([t, t.slice(10, 1)])
    else:
        z = t.column("zenith").to_numpy().copy()
        z[4000] = np.nan
        t = t.set_column(2, "zenith", pa.array(z))
    pq.write_table(t, root / "bad.parquet")
    with pytest.raises(icdata.DataError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]")):
        outofcore.evaluate_summary(str(root), "test", str(root / "bad.parquet"), chunk_events=1_000)


def test_evaluate_and_compare_log_progress_with_totals_and_eta(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """Out of core over 4 ranges, every range moves a progress line: done/total over the passes and an ETA,
    ending at the total (evaluate: 2 passes; compare: each model's 2 passes, then the side-by-side pass)."""
    import re

    from neutrino_ray.progress import INTERVAL_ENV

    root = _split(tmp_path / "d", 20_011, False, row_group=3_000)
    sub = str(root / "submission.csv")
    monkeypatch.setenv(INTERVAL_ENV, "0")
    with caplog.at_level("INFO", logger="neutrino_ray.progress"):
        evaluate(str(root), "test", sub, str(tmp_path / "ev"), chunk_events=5_000)
        compare(str(root), "test", [sub, sub], ["a", "b"], str(tmp_path / "cmp"), chunk_events=5_000)
    lines = [r.getMessage() for r in caplog.records if r.name == "neutrino_ray.progress"]
    for what, total in (("evaluate", 40_022), ("compare a", 40_022), ("compare b", 40_022),
                        ("compare: bootstrap", 20_011)):
        mine = [ln for ln in lines if ln.startswith(what + ": ")]
        done = [int(re.search(r": ([\d,]+)/", ln).group(1).replace(",", "")) for ln in mine]  # type: ignore[union-attr]
        assert len(mine) >= 4 and all(f"/{total:,} events" in ln and "ETA" in ln for ln in mine), (what, mine)
        assert done == sorted(done) and done[-1] == total and len(set(done)) >= 4, (what, done)


def test_side_by_side_shares_the_truth_and_refuses_predictions_that_changed(tmp_path: Path) -> None:
    """compare's side-by-side pass: every model's chunk of a range shares one read of the truth (the same
    arrays), errors equal chunks()'s; a predictions file that lost an event since the first pass is a
    one-line DataError naming it."""
    root = _split(tmp_path / "d", 5_000, False, row_group=1_000)
    sub, pqt = str(root / "submission.csv"), str(root / "predictions.parquet")
    one = list(outofcore.chunks(str(root), "test", sub, chunk_events=2_000))
    both = list(outofcore.side_by_side(str(root), "test", [sub, pqt], chunk_events=2_000))
    assert len(both) == len(one) == 3
    for ch, (a, b) in zip(one, both):
        assert a.zen_true is b.zen_true and a.event_id is b.event_id
        np.testing.assert_array_equal(a.errors, ch.errors)
        np.testing.assert_array_equal(b.errors, ch.errors)
    t = pq.read_table(pqt)
    pq.write_table(t.filter(pa.compute.not_equal(t.column("event_id"), 9_007)), pqt)
    with pytest.raises(icdata.DataError, match=r"predictions.parquet: event ids in .* changed since the first pass"):
        list(outofcore.side_by_side(str(root), "test", [sub, pqt], chunk_events=2_000))


def test_a_csv_is_streamed_into_ranges_once_per_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Over several ranges a submission.csv (any row order) is read once per input, not once per range and
    pass, into per-range files that are removed when the run ends; the figures equal the Parquet input's."""
    from neutrino_ray.icecube.compare import compare

    root = _split(tmp_path / "d", 5_000, False, row_group=1_000)
    sub, pqt = str(root / "submission.csv"), str(root / "predictions.parquet")
    spills: list[str] = []
    real = outofcore.Predictions._spill_csv

    def counted(self: outofcore.Predictions) -> None:
        spills.append(self.uri)
        real(self)
        assert self._spill is not None
        spills.append(self._spill.name)

    monkeypatch.setattr(outofcore.Predictions, "_spill_csv", counted)
    rep = compare(str(root), "test", [sub, pqt], ["csv", "parquet"], str(tmp_path / "cmp"), chunk_events=2_000)
    assert spills[::2] == [sub] and not Path(spills[1]).exists()
    a, b = rep["models"]
    for k in ("mean_angular_error", "median_angular_error", "containment_68"):
        assert a[k] == b[k]
    assert rep["paired"][0]["mean_difference"] == 0
