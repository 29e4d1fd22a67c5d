"""Ingest and batch inference on hand-made Kaggle-layout data: event boundaries, coverage, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from kaggle import random_events, write_batch, write_dataset

from neutrino_ray import storage
from neutrino_ray.cli import main
from neutrino_ray.icecube import data as icdata
from neutrino_ray.icecube.features import features_from_table, featurise, positions_and_times
from neutrino_ray.icecube.geometry import icecube86
from neutrino_ray.icecube.linefit import linefit
from neutrino_ray.icecube.predict import Scoring, predict


def _tricky_batches(rng: np.random.Generator) -> dict[int, dict[str, np.ndarray]]:
    """Two batches: 1-pulse events, a 12,000-pulse event, non-contiguous ids, many small row groups."""
    counts1 = np.r_[1, 1, 12_000, rng.integers(1, 400, 300), 1]
    counts2 = rng.integers(1, 300, 200)
    return {3: random_events(rng, len(counts1), 1_000, counts1),
            4: random_events(rng, len(counts2), 10_000_000, counts2)}


def test_read_tasks_cut_at_event_boundaries(tmp_path: Path) -> None:
    batches = _tricky_batches(np.random.default_rng(5))
    root = write_dataset(tmp_path / "d", batches, row_group_size=997)  # events straddle row groups
    tasks = list(icdata.iter_split_tasks(str(root), "test", events_per_task=37))
    assert len(tasks) > 10
    seen = []
    for task in tasks:
        ev = icdata.read_task_events(task, 5160)
        ids = ev.column("event_id").to_numpy()
        seen.append(ids)
        for b, p in batches.items():  # every event arrives whole, with its pulses in order
            if b != task.batch_id:
                continue
            for k in rng_pick(len(ids)):
                sel = p["event_id"] == ids[k]
                assert ev.column("time")[k].as_py() == p["time"][sel].tolist()
                assert ev.column("sensor_id")[k].as_py() == p["sensor_id"][sel].tolist()
    all_ids = np.concatenate(seen)
    want = np.concatenate([np.unique(p["event_id"]) for p in batches.values()])
    assert np.array_equal(np.sort(all_ids), np.sort(want))  # every event exactly once


def rng_pick(n: int) -> list[int]:
    return sorted({0, n - 1, n // 2, n // 3})


def test_predict_local_matches_in_process_linefit(tmp_path: Path) -> None:
    batches = _tricky_batches(np.random.default_rng(6))
    root = write_dataset(tmp_path / "d", batches, row_group_size=5_000)
    out = tmp_path / "out"
    m = predict(str(root), "test", str(out), Scoring(events_per_task=50))
    assert (out / "submission.csv").read_text().splitlines()[0] == "event_id,azimuth,zenith"
    sub = pacsv.read_csv(out / "submission.csv")
    assert sub.column_names == ["event_id", "azimuth", "zenith"]
    ids = sub.column("event_id").to_numpy()
    meta = pq.read_table(root / "test_meta.parquet")
    assert np.array_equal(ids, np.sort(meta.column("event_id").to_numpy()))
    # Same answer as running the pure cores over the whole split in this process.
    ref_parts = []
    for task in icdata.iter_split_tasks(str(root), "test", 10_000):
        feats = featurise(icdata.read_task_events(task, 5160), icecube86().xyz)
        flat, off = features_from_table(feats)
        az, zen, _ = linefit(*positions_and_times(flat), off)
        ref_parts.append(pa.table({"event_id": feats.column("event_id"), "azimuth": az, "zenith": zen}))
    ref = pa.concat_tables(ref_parts).sort_by("event_id")
    np.testing.assert_allclose(sub.column("azimuth").to_numpy(), ref.column("azimuth").to_numpy(), atol=1e-9)
    np.testing.assert_allclose(sub.column("zenith").to_numpy(), ref.column("zenith").to_numpy(), atol=1e-9)
    manifest = json.loads((out / "_SUCCESS.json").read_text())
    assert manifest["rows"]["submission.csv"] == len(ids) == m["events"]
    assert manifest["degenerate_events"] >= 3  # the 1-pulse events
    assert not [p for p in out.iterdir() if p.name.startswith(storage.STAGING_PREFIX)]


# --- bad input: a clear error naming the file and the problem, and nothing published --------------------

def _dataset(tmp_path: Path) -> Path:
    rng = np.random.default_rng(8)
    return write_dataset(tmp_path / "d", {1: random_events(rng, 50, 0)}, row_group_size=500)


def _run_predict(root: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["-q", "icecube", "predict", str(root), "--split", "test", "--out", str(out)])
    return code, capsys.readouterr().err


def _assert_nothing_published(out: Path) -> None:
    assert not (out / "submission.csv").exists()
    assert not (out / "_SUCCESS.json").exists()
    assert not out.exists() or not [p for p in out.iterdir() if p.name.startswith(storage.STAGING_PREFIX)]


def test_bad_sensor_id(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _dataset(tmp_path)
    p = pq.read_table(root / "test/batch_1.parquet")
    sensor = p.column("sensor_id").to_numpy().copy()
    sensor[17] = 5160
    bad_event = p.column("event_id")[17].as_py()
    pq.write_table(p.set_column(0, "sensor_id", pa.array(sensor, pa.int16())), root / "test/batch_1.parquet")
    code, err = _run_predict(root, tmp_path / "out", capsys)
    assert code == 2
    assert "batch_1.parquet" in err and "sensor_id 5160" in err and f"event_id {bad_event}" in err
    _assert_nothing_published(tmp_path / "out")


def test_truncated_parquet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _dataset(tmp_path)
    f = root / "test/batch_1.parquet"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    code, err = _run_predict(root, tmp_path / "out", capsys)
    assert code == 2 and "batch_1.parquet" in err and "Parquet" in err
    _assert_nothing_published(tmp_path / "out")


def test_meta_disagrees_with_pulses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _dataset(tmp_path)
    meta = pq.read_table(root / "test_meta.parquet")
    last = meta.column("last_pulse_index").to_numpy().copy()
    first = meta.column("first_pulse_index").to_numpy().copy()
    last[10] -= 1  # event 10 loses its last pulse row; event 11 now starts one row late
    first[11] -= 1
    meta = meta.set_column(3, "last_pulse_index", pa.array(last)).set_column(2, "first_pulse_index",
                                                                             pa.array(first))
    pq.write_table(meta, root / "test_meta.parquet")
    code, err = _run_predict(root, tmp_path / "out", capsys)
    assert code == 2 and "batch_1.parquet" in err and "event_id" in err
    _assert_nothing_published(tmp_path / "out")


def test_meta_points_outside_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _dataset(tmp_path)
    meta = pq.read_table(root / "test_meta.parquet")
    last = meta.column("last_pulse_index").to_numpy().copy()
    last[-1] += 100
    pq.write_table(meta.set_column(3, "last_pulse_index", pa.array(last)), root / "test_meta.parquet")
    code, err = _run_predict(root, tmp_path / "out", capsys)
    assert code == 2 and "batch_1.parquet" in err and "rows" in err


def test_meta_missing_column(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _dataset(tmp_path)
    pq.write_table(pq.read_table(root / "test_meta.parquet").drop_columns(["last_pulse_index"]),
                   root / "test_meta.parquet")
    code, err = _run_predict(root, tmp_path / "out", capsys)
    assert code == 2 and "test_meta.parquet" in err and "last_pulse_index" in err


def test_missing_split_and_missing_batch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _dataset(tmp_path)
    code = main(["-q", "icecube", "predict", str(root), "--split", "train", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "train_meta.parquet" in err and "not found" in err
    (root / "test/batch_1.parquet").unlink()
    code, err = _run_predict(root, tmp_path / "out", capsys)
    assert code == 2 and "batch_1.parquet" in err and "not found" in err


def test_duplicate_event_ids_and_nan_charge(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _dataset(tmp_path)
    meta = pq.read_table(root / "test_meta.parquet")
    ids = meta.column("event_id").to_numpy().copy()
    pq.write_table(meta.set_column(1, "event_id", pa.array(np.r_[ids[:-1], ids[0]])),
                   root / "test_meta.parquet")
    code, err = _run_predict(root, tmp_path / "out", capsys)
    assert code == 2 and "duplicate event_id" in err and "test_meta.parquet" in err
    root = _dataset(tmp_path / "again")
    p = pq.read_table(root / "test/batch_1.parquet")
    charge = p.column("charge").to_numpy().copy()
    charge[5] = np.nan
    pq.write_table(p.set_column(2, "charge", pa.array(charge)), root / "test/batch_1.parquet")
    code, err = _run_predict(root, tmp_path / "out2", capsys)
    assert code == 2 and "invalid charge" in err and "batch_1.parquet" in err


def test_republish_overwrites_cleanly(tmp_path: Path) -> None:
    root = _dataset(tmp_path)
    out = tmp_path / "out"
    predict(f"file://{root}", "test", f"file://{out}")
    first = (out / "submission.csv").read_bytes()
    predict(str(root), "test", str(out))
    assert (out / "submission.csv").read_bytes() == first
    assert sorted(p.name for p in out.iterdir()) == ["_SUCCESS.json", "submission.csv"]


def test_write_batch_helper_layout(tmp_path: Path) -> None:
    """The hand-made files have the Kaggle schema (event_id restored as the pandas index)."""
    pd = pytest.importorskip("pandas")
    write_batch(tmp_path / "b.parquet", random_events(np.random.default_rng(0), 3))
    df = pd.read_parquet(tmp_path / "b.parquet")
    assert df.index.name == "event_id" and list(df.columns) == ["sensor_id", "time", "charge", "auxiliary"]


def test_evaluate_scores_with_the_competition_metric(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _dataset(tmp_path)
    truth = pq.read_table(root / "test_truth.parquet")
    rng = np.random.default_rng(1)
    pred = pa.table({"event_id": truth.column("event_id"),
                     "azimuth": rng.uniform(0, 2 * np.pi, len(truth)), "zenith": rng.uniform(0, np.pi, len(truth))})
    pacsv.write_csv(pred, tmp_path / "pred.csv")
    assert main(["-q", "icecube", "evaluate", str(root), "--predictions", str(tmp_path / "pred.csv"),
                 "--out", str(tmp_path / "ev")]) == 0
    report = json.loads((tmp_path / "ev/report.json").read_text())
    from neutrino_ray.icecube.metrics import angular_dist_score

    want = angular_dist_score(truth.column("azimuth").to_numpy(), truth.column("zenith").to_numpy(),
                              pred.column("azimuth").to_numpy(), pred.column("zenith").to_numpy())
    assert report["mean_angular_error"] == pytest.approx(want, rel=1e-12)
    assert report["n_events"] == 50 and "containment_68" in report and report["by_n_pulses"]
    # Missing, duplicated or non-finite predictions are refused, and nothing is published.
    for bad in (pred.slice(1), pa.concat_tables([pred, pred.slice(0, 1)]),
                pred.set_column(1, "azimuth", pa.array(np.r_[np.nan, pred.column("azimuth").to_numpy()[1:]]))):
        pacsv.write_csv(bad, tmp_path / "bad.csv")
        code = main(["-q", "icecube", "evaluate", str(root), "--predictions", str(tmp_path / "bad.csv"),
                     "--out", str(tmp_path / "ev-bad")])
        assert code == 2 and "bad.csv" in capsys.readouterr().err
        assert not (tmp_path / "ev-bad/report.json").exists()


def test_pandas_written_kaggle_files_are_read(tmp_path: Path) -> None:
    """Files written the way the competition's were (pandas, event_id as the index, int32 meta) work as is."""
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(12)
    root = tmp_path / "kaggle"
    (root / "test").mkdir(parents=True)
    metas = []
    for b in (661, 662):
        p = random_events(rng, 120, b * 1000)
        df = pd.DataFrame({k: v for k, v in p.items()}).set_index("event_id")
        df.to_parquet(root / "test" / f"batch_{b}.parquet")
        ev = p["event_id"]
        starts = np.flatnonzero(np.r_[True, ev[1:] != ev[:-1]])
        metas.append(pd.DataFrame({"batch_id": np.int32(b), "event_id": ev[starts].astype(np.int32),
                                   "first_pulse_index": starts.astype(np.int32),
                                   "last_pulse_index": (np.r_[starts[1:], len(ev)] - 1).astype(np.int32)}))
    pd.concat(metas).to_parquet(root / "test_meta.parquet", index=False)
    pd.DataFrame({"sensor_id": np.arange(5160), "x": icecube86().x, "y": icecube86().y,
                  "z": icecube86().z}).to_csv(root / "sensor_geometry.csv", index=False)
    predict(str(root), "test", str(tmp_path / "out"))
    sub = pd.read_csv(tmp_path / "out/submission.csv")
    assert list(sub.columns) == ["event_id", "azimuth", "zenith"] and len(sub) == 240
    assert sub.event_id.is_monotonic_increasing and np.isfinite(sub[["azimuth", "zenith"]]).all().all()
