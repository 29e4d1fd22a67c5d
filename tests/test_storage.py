"""The storage layer: URIs, atomic publication, S3 through the standard AWS environment."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from conftest import CANARY
from kaggle import model_artefact, random_events, write_dataset

from neutrino_ray import storage


@pytest.mark.parametrize("scheme", ["", "file://"])
def test_local_output_publishes_atomically(tmp_path: Path, scheme: str) -> None:
    uri = scheme + str(tmp_path / "out")
    with storage.Output(uri, command=["x"], inputs=["in"]) as out:
        out.write("a/b.csv", b"1,2\n")
        assert not (tmp_path / "out/a/b.csv").exists()  # staged only
        m = out.commit(events=10)
    assert (tmp_path / "out/a/b.csv").read_bytes() == b"1,2\n"
    doc = json.loads((tmp_path / "out/_SUCCESS.json").read_text())
    assert doc["files"] == ["a/b.csv"] and doc["events"] == 10 and doc == m
    assert doc["command"] == ["x"] and doc["inputs"] == ["in"] and "code_version" in doc
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["_SUCCESS.json", "a"]


def test_crash_leaves_nothing_and_keeps_old_output(tmp_path: Path) -> None:
    uri = str(tmp_path / "out")
    with storage.Output(uri) as out:
        out.write("s.csv", b"old")
        out.commit()
    with pytest.raises(RuntimeError), storage.Output(uri) as out:
        out.write("s.csv", b"new-partial")
        raise RuntimeError("worker died")
    assert (tmp_path / "out/s.csv").read_bytes() == b"old"  # never a partial file at the final key
    assert not (tmp_path / "out/_SUCCESS.json").exists()  # the old manifest no longer vouches for it
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["s.csv"]


def test_unsupported_scheme_and_missing_input(tmp_path: Path) -> None:
    with pytest.raises(storage.StorageError, match="gs://b/x: unsupported URI scheme"):
        storage.exists("gs://b/x")
    with pytest.raises(FileNotFoundError, match="nope"):
        storage.read_bytes(str(tmp_path / "nope"))


def test_s3_round_trip_and_publish(bucket: str) -> None:
    t = pa.table({"a": [1, 2, 3]})
    storage.write_bytes(f"{bucket}/in/t.parquet", storage.parquet_bytes(t))
    assert storage.read_parquet(f"{bucket}/in/t.parquet").equals(t)
    assert storage.listdir(f"{bucket}/in") == [f"{bucket}/in/t.parquet"]
    with storage.Output(f"{bucket}/out") as out:
        out.write("sub.csv", b"x\n")
        assert not storage.exists(f"{bucket}/out/sub.csv")
        out.commit()
    assert storage.read_bytes(f"{bucket}/out/sub.csv") == b"x\n"
    assert storage.read_manifest(f"{bucket}/out")["files"] == ["sub.csv"]
    assert [u.rsplit("/", 1)[1] for u in storage.listdir(f"{bucket}/out")] == ["_SUCCESS.json", "sub.csv"]


def test_s3_filesystems_pickle_without_secret(s3_server: str) -> None:
    assert CANARY.encode() not in pickle.dumps(storage.s3())
    assert CANARY.encode() not in pickle.dumps(storage.arrow_filesystem("s3://bucket/x"))


@pytest.mark.parametrize("model", ["linefit", "gnn"])
def test_ray_payloads_carry_no_secret(bucket: str, tmp_path: Path, model: str) -> None:
    """What an S3 prediction puts into Ray — its plan with every UDF and constructor argument, and the input
    blocks — holds URIs, never the credentials: workers build their own S3 client from their environment."""
    import ray.cloudpickle

    from neutrino_ray import runtime
    from neutrino_ray.icecube import data as icdata
    from neutrino_ray.icecube import pipeline
    from neutrino_ray.icecube.options import ScoringOptions
    from neutrino_ray.icecube.scoring import build_dataset, check_models

    local = write_dataset(tmp_path / "d", {1: random_events(np.random.default_rng(3), 50)})
    data = f"{bucket}/d"
    for path in local.rglob("*"):
        if path.is_file():
            storage.write_bytes(f"{data}/{path.relative_to(local)}", path.read_bytes())
    if model == "gnn":
        model_dir = model_artefact(tmp_path / "model")
        for path in model_dir.iterdir():
            storage.write_bytes(f"{bucket}/model/{path.name}", path.read_bytes())
    scoring = ScoringOptions("linefit" if model == "linefit" else f"{bucket}/model", events_per_task=10)
    runtime.init_ray()
    split_plan = pipeline.plan_split(data, "test", 10)
    ds = build_dataset(split_plan, icdata.load_geometry(data), scoring, check_models(scoring))
    payload = ray.cloudpickle.dumps(ds) + b"".join(storage.parquet_bytes(t) for t in split_plan.tables())
    assert data.encode() in payload  # the URIs do travel
    # The planning tasks' payloads too: the per-batch planning functions and their arguments.
    payload += ray.cloudpickle.dumps((pipeline._plan_batch, split_plan.summary, split_plan.slices))
    assert CANARY.encode() not in payload and os.environ["AWS_SECRET_ACCESS_KEY"] == CANARY


def test_s3_errors_name_the_uri(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises((storage.StorageError, FileNotFoundError), match="s3://no-such-bucket/x"):
        storage.read_bytes("s3://no-such-bucket/x")
    # Unreachable endpoint: a clear error naming the URI, after bounded retries.
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("NEUTRINO_RAY_S3_RETRIES", "1")
    with pytest.raises(storage.StorageError, match="s3://b/k"):
        storage.write_bytes("s3://b/k", b"1")


def test_cli_unreachable_s3_names_the_uri(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from neutrino_ray.cli import main

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("NEUTRINO_RAY_S3_RETRIES", "1")
    code = main(["-q", "icecube", "predict", "s3://bucket/data", "--out", "s3://bucket/out"])
    err = capsys.readouterr().err
    assert code == 2
    # The lease on OUT is the run's first request (one writer per output, before any work): it names its URI.
    assert "s3://bucket/out/_LEASE.json: cannot create the lease" in err and CANARY not in err
    assert len(err.strip().splitlines()) == 1


def test_republish_removes_files_the_new_output_does_not_have(tmp_path: Path) -> None:
    uri = str(tmp_path / "out")
    with storage.Output(uri) as out:
        out.write("test/batch_4.parquet", b"old")
        out.write("test/batch_3.parquet", b"old")
        out.commit()
    with storage.Output(uri) as out:
        out.write("test/batch_3.parquet", b"new")
        out.commit()
    assert sorted(p.name for p in (tmp_path / "out/test").iterdir()) == ["batch_3.parquet"]
    assert (tmp_path / "out/test/batch_3.parquet").read_bytes() == b"new"


@pytest.mark.slow
@pytest.mark.integration  # a CLI subprocess
def test_killed_run_publishes_nothing_and_rerun_cleans_up(tmp_path: Path) -> None:
    """SIGKILL in the middle of a simulation: no final file, no manifest; the re-run publishes cleanly.

    (Slow suite: the default suite kills prediction drivers the same way, tests/test_faults.py.)"""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "sim"
    cmd = [sys.executable, "-m", "neutrino_ray.cli", "-q", "simulate", "icecube", str(out),
           "--events-per-batch", "30000", "--train-batches", "2", "--test-batches", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob(f"{storage.STAGING_PREFIX}*/train/*.parquet")):  # a batch file is staged
            assert proc.poll() is None, "the simulation ended before it could be interrupted"
            assert time.monotonic() < deadline, "no staged file within 120 s"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert not (out / "train").exists() and not (out / "_SUCCESS.json").exists()
    assert list(out.glob(f"{storage.STAGING_PREFIX}*"))  # the killed run's staging folder is left behind
    subprocess.run([*cmd[:-6], "--events-per-batch", "300", "--train-batches", "1", "--test-batches", "1"],
                   check=True, timeout=300, capture_output=True)
    assert sorted(p.name for p in out.iterdir()) == ["_SUCCESS.json", "sample_submission.parquet",
                                                     "sensor_geometry.csv", "test", "test_meta.parquet",
                                                     "test_truth.parquet", "train", "train_meta.parquet"]


def test_format_json_files_beside_an_artefact(tmp_path: Path) -> None:
    from neutrino_ray.errors import InputError

    uri = str(tmp_path / "calibration.json")
    assert storage.read_format_json(uri, "fmt v1", "a calibration file") is None  # absent: none
    (tmp_path / "calibration.json").write_text("{not json")
    with pytest.raises(InputError, match=r"calibration.json: not a calibration file \("):
        storage.read_format_json(uri, "fmt v1", "a calibration file")
    (tmp_path / "calibration.json").write_text('{"format": "other v2"}')
    with pytest.raises(InputError, match=r"calibration.json: a 'other v2' file, expected 'fmt v1'"):
        storage.read_format_json(uri, "fmt v1", "a calibration file")
    (tmp_path / "calibration.json").write_text('{"format": "fmt v1", "x": 1}')
    assert storage.read_format_json(uri, "fmt v1", "a calibration file") == {"format": "fmt v1", "x": 1}
