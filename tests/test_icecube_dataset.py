"""`neutrino-ray simulate icecube`: the exact Kaggle layout, dtypes, meta consistency, determinism, demo."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from neutrino_ray.cli import main


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sim") / "icecube"
    assert main(["-q", "simulate", "icecube", str(out), "--events-per-batch", "600", "--train-batches", "2",
                 "--test-batches", "2", "--seed", "5"]) == 0
    return out


@pytest.mark.integration
def test_layout(dataset: Path) -> None:
    files = sorted(str(p.relative_to(dataset)) for p in dataset.rglob("*") if p.is_file())
    assert files == ["_SUCCESS.json", "sample_submission.parquet", "sensor_geometry.csv", "test/batch_3.parquet",
                     "test/batch_4.parquet", "test_meta.parquet", "test_truth.parquet", "train/batch_1.parquet",
                     "train/batch_2.parquet", "train_meta.parquet"]
    manifest = json.loads((dataset / "_SUCCESS.json").read_text())
    assert manifest["events"] == 2400 and manifest["rows"]["test_meta.parquet"] == 1200


@pytest.mark.integration
def test_exact_dtypes(dataset: Path) -> None:
    pd = pytest.importorskip("pandas")
    df = pd.read_parquet(dataset / "train/batch_1.parquet")
    assert df.index.name == "event_id" and str(df.index.dtype) == "int64"
    assert {c: str(t) for c, t in df.dtypes.items()} == {
        "sensor_id": "int16", "time": "int64", "charge": "float64", "auxiliary": "bool"}
    train = pq.read_table(dataset / "train_meta.parquet").schema
    assert [(f.name, str(f.type)) for f in train] == [
        ("batch_id", "int64"), ("event_id", "int64"), ("first_pulse_index", "int64"),
        ("last_pulse_index", "int64"), ("azimuth", "double"), ("zenith", "double")]
    test = pq.read_table(dataset / "test_meta.parquet").schema
    assert test.names == ["batch_id", "event_id", "first_pulse_index", "last_pulse_index"]  # no truth, as on Kaggle
    geo = pacsv.read_csv(dataset / "sensor_geometry.csv")
    assert geo.column_names == ["sensor_id", "x", "y", "z"] and len(geo) == 5160
    assert (dataset / "sensor_geometry.csv").read_text().startswith("sensor_id,x,y,z\n")
    sample = pq.read_table(dataset / "sample_submission.parquet")
    assert sample.column_names == ["event_id", "azimuth", "zenith"] and len(sample) == 1200


@pytest.mark.integration
def test_meta_matches_pulse_rows(dataset: Path) -> None:
    all_ids = []
    for split, batches in (("train", (1, 2)), ("test", (3, 4))):
        meta = pq.read_table(dataset / f"{split}_meta.parquet").to_pandas()
        for b in batches:
            pulses = pq.read_table(dataset / split / f"batch_{b}.parquet")
            ev = pulses.column("event_id").to_numpy()
            t = pulses.column("time").to_numpy()
            m = meta[meta.batch_id == b]
            assert m.first_pulse_index.iloc[0] == 0 and m.last_pulse_index.iloc[-1] == len(ev) - 1
            assert (m.first_pulse_index.to_numpy()[1:] == m.last_pulse_index.to_numpy()[:-1] + 1).all()
            assert (ev[m.first_pulse_index] == m.event_id).all() and (ev[m.last_pulse_index] == m.event_id).all()
            assert (np.diff(ev) >= 0).all()
            same = np.diff(ev) == 0
            assert (np.diff(t)[same] >= 0).all()  # sorted by event_id then time
            all_ids.append(m.event_id.to_numpy())
        if split == "train":
            assert ((meta.azimuth >= 0) & (meta.azimuth < 2 * np.pi)).all()
            assert ((meta.zenith >= 0) & (meta.zenith <= np.pi)).all()
    ids = np.concatenate(all_ids)
    assert len(np.unique(ids)) == len(ids) == 2400  # unique across all batches
    truth = pq.read_table(dataset / "test_truth.parquet")
    assert {"event_id", "azimuth", "zenith", "energy", "topology"} <= set(truth.column_names)
    assert np.array_equal(truth.column("event_id").to_numpy(),
                          pq.read_table(dataset / "test_meta.parquet").column("event_id").to_numpy())


@pytest.mark.integration
def test_deterministic_for_a_seed(dataset: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    assert main(["-q", "simulate", "icecube", str(again), "--events-per-batch", "600", "--train-batches", "2",
                 "--test-batches", "2", "--seed", "5"]) == 0
    for rel in ("train/batch_2.parquet", "test/batch_3.parquet", "train_meta.parquet", "test_truth.parquet"):
        assert pq.read_table(again / rel).equals(pq.read_table(dataset / rel)), rel
    other = tmp_path / "other"
    assert main(["-q", "simulate", "icecube", str(other), "--events-per-batch", "600", "--train-batches", "0",
                 "--test-batches", "1", "--seed", "6"]) == 0
    assert not pq.read_table(other / "test_truth.parquet").column("azimuth").equals(
        pq.read_table(dataset / "test_truth.parquet").slice(0, 600).column("azimuth"))


def run_on_terminal(args: list[str], timeout: float, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run a command with a pseudo-terminal as stdin, stdout and stderr (as a person at a terminal would)."""
    import os
    import pty
    import select
    import subprocess
    import time

    from neutrino_ray import logs

    master, slave = pty.openpty()
    env = {**os.environ, logs.FILTER_ENV: "1", "COLUMNS": "200", **(env or {})}
    proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    data = os.read(master, 1 << 16)
                except OSError:  # EIO: the terminal's last writer has gone
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        else:
            proc.kill()
            raise AssertionError(f"{args} ran past {timeout} s")
    finally:
        os.close(master)
    return proc.wait(timeout=30), b"".join(chunks).decode("utf-8", "replace")


@pytest.mark.slow  # 136 s at 5c578c8; out of the default suite for its budget (docs/development.md)
@pytest.mark.integration
def test_demo_end_to_end(tmp_path: Path) -> None:
    """The demo at the default level on a terminal: at most 25 lines, none of them Ray's internals, ending
    with its summary table; and the outputs it names."""
    import sys

    from neutrino_ray import logs

    code, text = run_on_terminal([sys.executable, "-m", "neutrino_ray.cli", "demo", "--out", str(tmp_path / "demo"),
                                  "--events", "2500", "--train-minutes", "0.2"], timeout=600,
                                 env={"NEUTRINO_RAY_PROGRESS_SECONDS": "4"})  # the 12 s of training log a line
    assert code == 0, text
    (tmp_path / "terminal.txt").write_text(text)
    lines = text.replace("\r\n", "\n").split("\n")
    assert len(lines) - 1 <= 25, f"{len(lines) - 1} lines:\n{text}"
    assert not [line for line in lines if logs.hidden(line)], text
    shown = [re.sub(r"\x1b\[[0-9;]*m", "", line.split("\r")[-1]) for line in lines]  # what a terminal shows
    assert any(re.search(r"simulate icecube: 2,500/2,500 events \(100\.0 %\), .* ETA 0:00", s) for s in shown), text
    assert any(re.search(r"train: step \d+/[\d,]+ \(.* %\), epoch \d+, loss .* ETA \d+:\d\d", s) for s in shown), text
    assert "Kaggle LineFit" in text and "1.214 rad (public LineFit, aux = False pulses, leaderboard)" in text
    assert "refine GNN" in text and "uncertainties:" in text and "starts at LineFit: its seed" in text
    cmp = json.loads((tmp_path / "demo/comparison/report.json").read_text())
    pair = cmp["paired"][0]  # the verdict follows the paired interval on err(LineFit) - err(model), not a guess
    assert (pair["a"], pair["b"]) == ("Kaggle LineFit", "refine GNN")
    lo, hi = pair["mean_difference_interval_95"]
    assert f"95 % interval [{lo:+.4f}, {hi:+.4f}]" in text, text
    assert ("`refine` beats LineFit: paired" in text) == (lo > 0), text
    assert ("`refine` does NOT beat LineFit" in text) == (lo <= 0), text
    last = [s for s in shown if s.strip()][-1].lstrip()  # ends with the table and its verdict
    assert last.startswith("after " if lo <= 0 else "`refine` beats LineFit: paired"), text
    assert [m["label"] for m in cmp["models"]] == ["Kaggle LineFit", "refine GNN"]
    assert "uncertainty" in cmp["models"][1] and (tmp_path / "demo/gnn/model/calibration.json").exists()
    report = json.loads((tmp_path / "demo/evaluation/report.json").read_text())
    assert report["n_events"] == 500
    assert 0.8 < report["mean_angular_error"] < 1.40  # LineFit; a random direction scores pi/2 = 1.571
    for name in ("error_histogram.png", "zenith_pred_vs_true.png", "error_vs_energy.png"):
        assert (tmp_path / "demo/evaluation" / name).read_bytes()[:4] == b"\x89PNG"
    assert {"by_energy_gev", "by_n_pulses", "by_topology"} <= set(report)


@pytest.mark.slow  # 90 s; the local demo above covers the same code
def test_demo_on_s3(bucket: str, capsys: pytest.CaptureFixture[str]) -> None:
    from neutrino_ray import storage

    assert main(["-q", "demo", "--out", f"{bucket}/demo", "--events", "2500", "--train-minutes", "0.2"]) == 0
    assert "refine GNN" in capsys.readouterr().out
    cmp = json.loads(storage.read_bytes(f"{bucket}/demo/comparison/report.json"))
    assert [m["n_events"] for m in cmp["models"]] == [500, 500]
    assert storage.exists(f"{bucket}/demo/gnn/model/calibration.json")


@pytest.mark.slow  # the demo at its defaults: about 3 minutes on a quiet 2-core machine
def test_default_demo_beats_linefit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 29's goal: `make demo` shows a learned model beating the Kaggle LineFit on its test split, the
    paired 95 % interval on err(LineFit) - err(model) excluding zero (its wall time is measured, not asserted:
    docs/icecube.md, 'The demo')."""
    from neutrino_ray.icecube.demo import demo

    result = demo(str(tmp_path / "demo"))
    lo, _ = result["comparison"]["paired"][0]["mean_difference_interval_95"]
    assert result["beats_linefit"] and lo > 0, capsys.readouterr().out


def test_simulate_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        main(["simulate", "icecube", str(tmp_path / "x"), "--events-per-batch", "0"])
    with pytest.raises(ValueError):
        from neutrino_ray.icecube.simwrite import simulate_dataset

        simulate_dataset(str(tmp_path / "y"), 10, 0, 0, 1)
    assert not (tmp_path / "y").exists() or not list((tmp_path / "y").iterdir())
