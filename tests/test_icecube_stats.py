"""`neutrino-ray icecube stats`: every figure of stats.json against a direct numpy computation on the same pulses."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import one_line_error
from kaggle import random_events, write_dataset

from neutrino_ray import storage
from neutrino_ray.cli import main
from neutrino_ray.icecube import data as icdata
from neutrino_ray.icecube import linefit as lf
from neutrino_ray.icecube import pipeline
from neutrino_ray.icecube import profile as prof
from neutrino_ray.icecube import stats as st
from neutrino_ray.icecube import stats_report as report
from neutrino_ray.icecube.metrics import angular_dist_score
from neutrino_ray.icecube.simwrite import simulate_dataset

PNGS = ("pulses_per_event.png", "charge.png", "first_pulse_time.png", "span.png", "auxiliary_fraction.png")


def q(x: np.ndarray, level: float) -> Any:
    return np.quantile(x, level, method="inverted_cdf").item()


def summary(x: np.ndarray, p99: bool = False) -> dict[str, Any]:
    levels = {"q1": 0.25, "median": 0.5, "q3": 0.75, **({"p99": 0.99} if p99 else {})}
    return {"min": x.min(), **{k: q(x, v) for k, v in levels.items()}, "max": x.max(), "mean": x.mean()}


def reference(root: Path, split: str, truth: bool = True) -> dict[str, Any]:
    """The figures straight from the files: flat pulses of every event in meta order, then plain numpy."""
    meta = pq.read_table(root / f"{split}_meta.parquet").sort_by([("batch_id", "ascending"),
                                                                  ("first_pulse_index", "ascending")])
    flat: dict[str, list[np.ndarray]] = {c: [] for c in ("sensor_id", "time", "charge", "auxiliary")}
    for b in np.unique(meta.column("batch_id").to_numpy()):
        m = meta.filter(pc.equal(meta.column("batch_id"), b))
        p = pq.read_table(root / split / f"batch_{b}.parquet")
        first, last = m.column("first_pulse_index").to_numpy(), m.column("last_pulse_index").to_numpy()
        rows = np.concatenate([np.arange(f, e + 1) for f, e in zip(first, last)])
        for c in flat:
            flat[c].append(p.column(c).to_numpy()[rows])
    sensor, t, charge, aux = (np.concatenate(flat[c]) for c in flat)
    counts = (meta.column("last_pulse_index").to_numpy() - meta.column("first_pulse_index").to_numpy() + 1)
    offsets = np.r_[0, np.cumsum(counts)]
    first_t, last_t = np.minimum.reduceat(t, offsets[:-1]), np.maximum.reduceat(t, offsets[:-1])
    span = last_t - first_t
    size_of_pulse = np.repeat(counts, counts)
    ref: dict[str, Any] = {
        "events": len(counts), "pulses": len(t), "batch_files": len(np.unique(meta.column("batch_id").to_numpy())),
        "pulses_per_event": summary(counts, p99=True),
        "fraction_events_le_100_pulses": np.mean(counts <= 100),
        "fraction_events_gt_1000_pulses": np.mean(counts > 1000),
        "auxiliary": {"fraction": aux.mean(), "fraction_events_le_150_pulses": aux[size_of_pulse <= 150].mean(),
                      "by_event_size": {}},
        "charge": {**summary(charge), "std": charge.std()},
        "time": summary(t),
        "first_pulse_time": summary(first_t),
        "span": summary(span),
        "sensors_hit": len(np.unique(sensor)),
    }
    for lo, hi in prof.SIZE_BINS:
        sel = (size_of_pulse >= lo) & (size_of_pulse <= (hi or 10**12))
        ref["auxiliary"]["by_event_size"][report.size_label(lo, hi)] = {
            "events": int(((counts >= lo) & (counts <= (hi or 10**12))).sum()), "pulses": int(sel.sum()),
            "auxiliary_fraction": aux[sel].mean() if sel.any() else None}
    if not truth:
        return ref
    ids = meta.column("event_id").to_numpy()
    if split == "train":
        az_t, zen_t = meta.column("azimuth").to_numpy(), meta.column("zenith").to_numpy()
    else:
        tt = pq.read_table(root / f"{split}_truth.parquet")
        pos = np.searchsorted(tt.column("event_id").to_numpy(), ids)
        az_t, zen_t = tt.column("azimuth").to_numpy()[pos], tt.column("zenith").to_numpy()[pos]
    ref["truth"] = {"zenith_mean": zen_t.mean(), "zenith_std": zen_t.std(), "azimuth_mean": az_t.mean()}
    xyz = icdata.load_geometry(str(root))[sensor]
    scores = {}
    for v in lf.VARIANTS:
        az, zen, _ = lf.fit(v, offsets, xyz, t, charge, aux)
        scores[v] = angular_dist_score(az_t, zen_t, az, zen)
    ref["linefit"] = {"mean_angular_error": scores}
    return ref


EXACT = {"events", "pulses", "batch_files", "sensors_hit", "min", "max", "q1", "median", "q3", "p99"}


def assert_matches(got: dict[str, Any], want: dict[str, Any], where: str = "", exact_charge: bool = True) -> None:
    """Counts, extremes and quantiles exactly; means, fractions, std and scores to float rounding."""
    for k, w in want.items():
        g = got[k]
        here = f"{where}.{k}"
        if isinstance(w, dict):
            assert_matches(g, w, here, exact_charge)
        elif w is None or isinstance(w, str | bool | list):
            assert g == w, (here, g, w)
        elif k in EXACT and (exact_charge or not here.startswith(".charge")):
            assert g == w and type(g) is type(w.item() if isinstance(w, np.generic) else w), (here, g, w)
        elif k in EXACT:  # charge quantiles off the 0.025 grid: the smallest charge of the right 0.025 pe bin
            assert w - prof.CHARGE_STEP < g <= w, (here, g, w)
        else:
            assert g == pytest.approx(w, rel=1e-9, abs=1e-12), (here, g, w)


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Simulated Kaggle-layout data: 2 train batches (truth in the meta) and 1 test batch (test_truth.parquet)."""
    root = tmp_path_factory.mktemp("stats") / "sim"
    simulate_dataset(str(root), 80, 2, 1, seed=5)
    return root


@pytest.fixture(scope="module")
def handmade(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Hand-made test split without truth, charges off the 0.025 grid, small row groups, a 1,500-pulse event."""
    rng = np.random.default_rng(3)
    counts1 = np.r_[1, 1500, rng.integers(1, 200, 120)]
    return write_dataset(tmp_path_factory.mktemp("stats") / "hand",
                         {7: random_events(rng, len(counts1), 100, counts1), 8: random_events(rng, 80, 50_000)},
                         split="test", row_group_size=900, truth=False)


@pytest.mark.integration
def test_cli_train_split_matches_numpy(sim: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI end to end on the local train split: stats.json equals numpy on the same pulses; summary.md,
    PNGs and the manifest are published; the driver never loads the whole meta or truth."""
    def refuse(*a: Any, **k: Any) -> None:
        raise AssertionError("the driver must not load the whole split")

    monkeypatch.setattr(icdata, "load_meta", refuse)
    monkeypatch.setattr(icdata, "split_truth", refuse)
    out = tmp_path / "out"
    code = main(["-q", "icecube", "stats", str(sim), "--out", str(out), "--events-per-task", "40"])
    printed = capsys.readouterr().out
    assert code == 0
    doc = json.loads((out / st.STATS).read_text())
    assert_matches(doc, reference(sim, "train"))
    assert doc["split"] == "train" and doc["batch_ids"] == [1, 2] and doc["sensors"] == 5160
    assert doc["charge"]["on_0025_grid"] is True and doc["charge"]["quantiles"] == "exact"
    assert doc["truth"]["available"] and doc["linefit"]["available"] and doc["linefit"]["events"] == 160
    assert set(doc["linefit"]["mean_angular_error"]) == set(lf.VARIANTS)
    assert doc["real_kaggle"]["events"]["value"] == 131_953_924
    summary = (out / st.SUMMARY).read_text()
    assert "| quantity | this dataset | real Kaggle data | definition |" in summary
    assert f"| pulses per event, median | {doc['pulses_per_event']['median']:,} | 63 |" in summary
    assert "1.214 (leaderboard); 1.21724 (train batch_1)" in summary
    for name in PNGS:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    manifest = storage.read_manifest(str(out))
    assert sorted(manifest["files"]) == sorted([st.STATS, st.SUMMARY, *PNGS]) and manifest["events"] == 160
    assert "real Kaggle data" in printed and "131,953,924" in printed and "profiled 160 events" in printed


def test_s3_test_split_with_truth_file(sim: Path, bucket: str) -> None:
    """The same on S3, test split: truth read from test_truth.parquet per batch; outputs published on S3."""
    data = f"{bucket}/sim"
    for rel in ("test_meta.parquet", "test_truth.parquet", "sensor_geometry.csv", "test/batch_3.parquet"):
        storage.write_bytes(f"{data}/{rel}", (sim / rel).read_bytes())
    doc = st.stats(data, "test", f"{bucket}/out", events_per_task=50)
    assert_matches(doc, reference(sim, "test"))
    assert json.loads(storage.read_bytes(f"{bucket}/out/{st.STATS}")) == doc
    assert storage.read_bytes(f"{bucket}/out/{st.SUMMARY}").startswith(b"# Dataset profile")
    assert set(storage.read_manifest(f"{bucket}/out")["files"]) == {st.STATS, st.SUMMARY, *PNGS}


@pytest.mark.integration
def test_no_truth_and_charges_off_the_grid(handmade: Path, tmp_path: Path) -> None:
    """Like the real test set: no truth → no LineFit scores, said so; charges off the grid → flagged, coarse."""
    doc = st.stats(str(handmade), "test", str(tmp_path / "out"), events_per_task=17)
    assert_matches(doc, reference(handmade, "test", truth=False), exact_charge=False)
    assert doc["charge"]["on_0025_grid"] is False and doc["charge"]["off_grid_pulses"] > 0
    assert doc["charge"]["quantiles"].startswith("within 0.025 pe")
    assert doc["truth"]["available"] is False and doc["linefit"]["available"] is False
    assert "no truth for split 'test'" in doc["linefit"]["reason"]
    assert doc["auxiliary"]["by_event_size"][">1000"]["events"] == 1
    summary = (tmp_path / "out" / st.SUMMARY).read_text()
    assert "| LineFit (aux = False): mean angular error (rad) | n/a (no LineFit scores: no truth" in summary


def _task_profiles(root: Path, split: str, per_task: int) -> list[prof.Profile]:
    geometry = icdata.load_geometry(str(root))
    plan = pipeline.plan_split(str(root), split, per_task, in_process=True)
    return [prof.profile_events(icdata.read_slice(s, len(geometry)), geometry) for s in plan.slices]


def test_merge_is_order_free_and_equals_one_block(handmade: Path) -> None:
    parts = _task_profiles(handmade, "test", 9)
    assert len(parts) > 10
    whole = report.to_stats(prof.merge_all(parts))
    order = np.random.default_rng(0).permutation(len(parts))
    shuffled = report.to_stats(prof.merge_all(parts[i] for i in order))
    pairs = report.to_stats(prof.merge(prof.merge_all(parts[::2]), prof.merge_all(parts[1::2])))
    one = report.to_stats(prof.merge_all(_task_profiles(handmade, "test", 10**6)))
    for other in (shuffled, pairs, one):
        assert_matches(other, {k: v for k, v in whole.items() if k not in ("real_kaggle", "definitions")})


def test_events_from_flat_profiles_like_the_reader(handmade: Path) -> None:
    """In-memory pulses (e.g. a simulated batch) profile exactly as the rows read from the files."""
    geometry = icdata.load_geometry(str(handmade))
    pulses = pq.read_table(handmade / "test/batch_8.parquet")
    a = report.to_stats(prof.profile_events(prof.events_from_flat(pulses), geometry))
    (s,) = icdata.plan_batch(str(handmade), "test", "run", icdata.meta_batch_summary(str(handmade), "test")[8], 10**6)
    b = report.to_stats(prof.profile_events(icdata.read_slice(s, len(geometry)), geometry))
    assert {k: v for k, v in a.items() if k != "batch_ids" and k != "batch_files"} == \
        {k: v for k, v in b.items() if k != "batch_ids" and k != "batch_files"}


def test_hist_quantiles_are_numpy_inverted_cdf() -> None:
    rng = np.random.default_rng(1)
    levels = [0.0, 0.01, 0.25, 0.5, 0.75, 0.99, 1.0]
    for n in [*range(1, 60), 99, 100, 101, 1000, 4321]:
        x = rng.integers(-50, 50 + n, n)
        cut = rng.integers(0, n + 1)
        h = prof.Hist.of(x[:cut]).merge(prof.Hist.of(x[cut:]))
        assert h.quantiles(levels) == np.quantile(x, levels, method="inverted_cdf").tolist(), n
    sparse = rng.integers(-(10**15), 10**15, 300)  # the np.unique path
    assert prof.Hist.of(sparse).quantiles(levels) == np.quantile(sparse, levels, method="inverted_cdf").tolist()


def test_time_outliers_are_clipped_with_exact_extremes() -> None:
    t = np.r_[-5_000_000, np.arange(100, 110), 9 * 10**12]
    pulses = pa.table({"event_id": np.r_[np.zeros(6), np.ones(6)].astype(np.int64), "sensor_id": np.zeros(12, np.int16),
                       "time": t, "charge": np.full(12, 1.025), "auxiliary": np.zeros(12, bool)})
    doc = report.to_stats(prof.profile_events(prof.events_from_flat(pulses), np.zeros((10, 3))))
    assert doc["time"]["min"] == -5_000_000 and doc["time"]["max"] == 9 * 10**12
    assert doc["time"]["clipped_outliers"] == 2 and doc["time"]["mean"] == pytest.approx(t.mean())
    assert [doc["time"][k] for k in ("q1", "median", "q3")] == [q(t, 0.25), q(t, 0.5), q(t, 0.75)]
    assert doc["span"]["max"] == 9 * 10**12 - 105 and doc["span"]["clipped_outliers"] == 2
    assert doc["first_pulse_time"]["min"] == -5_000_000


@pytest.mark.parametrize("kind", ["decimal", "float32"])
def test_charge_grid_check(kind: str) -> None:
    """Decimal literals (as in the real files) and float32-rounded charges are on the grid, quantiles exact."""
    rng = np.random.default_rng(2)
    charge = np.array([float(f"{k * 0.025:.3f}") for k in rng.integers(1, 4000, 500)])
    if kind == "float32":
        charge = charge.astype(np.float32).astype(np.float64)
    pulses = pa.table({"event_id": np.repeat(np.arange(50), 10), "sensor_id": np.zeros(500, np.int16),
                       "time": np.arange(500), "charge": charge, "auxiliary": np.zeros(500, bool)})
    doc = report.to_stats(prof.profile_events(prof.events_from_flat(pulses), np.zeros((1, 3))))["charge"]
    assert doc["on_0025_grid"] is True and doc["quantiles"] == "exact"
    assert [doc[k] for k in ("q1", "median", "q3")] == [q(charge, 0.25), q(charge, 0.5), q(charge, 0.75)]
    off = pulses.set_column(3, "charge", pa.array(charge + np.r_[0.001, np.zeros(499)]))
    off_profile = prof.profile_events(prof.events_from_flat(off), np.zeros((1, 3)))
    assert report.to_stats(off_profile)["charge"]["off_grid_pulses"] == 1


def test_real_kaggle_facts_have_rows() -> None:
    paths = {row[0] for row in report.ROWS}
    for key, fact in report.REAL_KAGGLE.items():
        assert key in paths and fact["definition"] and fact["value"] is not None, key
    assert report.REAL_KAGGLE["pulses_per_event.median"]["value"] == 63


@pytest.mark.integration
def test_batch_meta_reads_only_its_batch(sim: Path) -> None:
    meta = icdata.load_batch_meta(str(sim), "train", 2, with_truth=True)
    assert len(meta) == 80 and set(meta.column("batch_id").to_pylist()) == {2}
    assert {b: s.n_events for b, s in icdata.meta_batch_summary(str(sim), "train").items()} == {1: 80, 2: 80}
    assert list(icdata.list_batches(str(sim), "train")) == [1, 2]


# --- bad input: exit code 2, one line naming the file, the event or row and the problem; nothing published ---

def _bad_sensor(root: Path) -> str:
    f = root / "test/batch_8.parquet"
    p = pq.read_table(f)
    sensor = p.column("sensor_id").to_numpy().copy()
    sensor[33] = 5160
    pq.write_table(p.set_column(0, "sensor_id", pa.array(sensor, pa.int16())), f)
    return f"test/batch_8.parquet: event_id {p.column('event_id')[33].as_py()} has sensor_id 5160 outside the geometry"


def _truncated(root: Path) -> str:
    f = root / "test/batch_7.parquet"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return "test/batch_7.parquet: not a readable Parquet file"


def _missing_split(root: Path) -> str:
    (root / "test_meta.parquet").unlink()
    return "test_meta.parquet: meta for split 'test' not found"


def _missing_batch_file(root: Path) -> str:
    (root / "test/batch_8.parquet").unlink()
    return "test/batch_8.parquet: pulse file for batch 8 not found (80 events in"


@pytest.mark.parametrize("case", [_bad_sensor, _truncated, _missing_split, _missing_batch_file],
                         ids=lambda f: f.__name__.strip("_"))
@pytest.mark.integration
def test_bad_input_one_line_error(handmade: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                  case: Any) -> None:
    root = Path(shutil.copytree(handmade, tmp_path / "d"))
    expected = case(root)
    out = tmp_path / "out"
    code = main(["-q", "icecube", "stats", str(root), "--split", "test", "--out", str(out)])
    line = one_line_error(code, capsys.readouterr().err)
    assert f"neutrino-ray: error: {root}/{expected}" in line, line
    assert not out.exists() or not list(out.iterdir())
