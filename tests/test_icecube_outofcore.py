"""Out-of-core scoring (icecube.outofcore) equals the in-memory evaluate on small data, bad input included."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from neutrino_ray.icecube import data as icdata
from neutrino_ray.icecube import outofcore
from neutrino_ray.icecube.evaluate import evaluate


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


@pytest.mark.parametrize("kappa", [False, True])
def test_out_of_core_equals_in_memory(tmp_path: Path, kappa: bool) -> None:
    root = _split(tmp_path / "d", 20_011, kappa, row_group=3_000)
    pred = str(root / ("predictions.parquet" if kappa else "submission.csv"))
    mem = evaluate(str(root), "test", pred, str(tmp_path / "ev"))
    assert len(outofcore.id_ranges(str(root / "test_truth.parquet"), 5_000)) == 4  # 7 row groups, merged
    ooc = outofcore.evaluate_summary(str(root), "test", pred, chunk_events=5_000)
    keys = ["n_events", "mean_angular_error", "median_angular_error", "containment_68", "by_n_pulses",
            "by_true_zenith", "by_energy_gev", "by_topology"] + (["uncertainty"] if kappa else [])
    expected = {k: mem[k] for k in keys}
    if kappa:
        expected["uncertainty"] = {k: v for k, v in mem["uncertainty"].items()}
    _close(expected, {k: ooc[k] for k in keys})


def test_quantiles_exact_with_ties_and_bin_edges() -> None:
    rng = np.random.default_rng(3)
    v = np.concatenate([rng.exponential(0.5, 10_001), np.full(500, 0.25), [0.0, 0.0, 40.0]])
    q = outofcore.Quantiles((0.0, 0.1, 0.5, 0.68, 0.9, 1.0))
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
