"""End to end on a real Ray head: `ray job submit` simulate and predict against S3 (moto) on loopback.

The Ray head is started with `ray start --head` on 127.0.0.1; its workers read the S3 endpoint and
credentials from their own environment, as KubeRay pods do from a Secret.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.csv as pacsv
import pytest
from conftest import CANARY, free_port

from neutrino_ray import storage
from neutrino_ray.icecube.evaluate import evaluate

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _ray(*args: str, timeout: float = 120, check: bool = True, env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **(env or {}), "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}
    return subprocess.run([str(BIN / "ray"), *args], capture_output=True, text=True, timeout=timeout,
                          env=env, check=check)


@pytest.fixture(scope="module")
def gcs_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def ray_temp_dir(gcs_port: int) -> Iterator[Path]:
    """Where the head keeps every file it writes (logs, job logs, uploaded code, spilled objects):
    ``/tmp/neutrino-ray-<GCS port>``, the folder whose processes ``cluster/local-down.sh`` stops.

    Short, because Ray's socket paths under it must stay below the OS limit."""
    path = Path(f"/tmp/neutrino-ray-{gcs_port}")
    path.mkdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _stop_head(gcs_port: int, temp_dir: Path) -> None:
    """Stop this module's head and only it, with ``cluster/local-down.sh`` (the processes working in its
    temp dir). Not `ray stop`: that kills every Ray on the machine, the other engineers' runs and the
    scale benchmark's included (their raylets were SIGKILLed at the same instant, 13:56 and 17:16 UTC on
    2026-12-07, docs/icecube.md)."""
    env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}", "RAY_GCS_PORT": str(gcs_port)}
    down = subprocess.run(["bash", str(REPO / "cluster" / "local-down.sh")], env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert down.returncode == 0, down.stderr
    for _ in range(20):  # processes signalled by local-down take a moment to exit: bounded wait
        left = subprocess.run(["pgrep", "-f", f"{temp_dir}/"], capture_output=True, text=True).stdout.strip()
        if not left:
            return
        time.sleep(1)
    raise AssertionError(f"processes of the test head survived local-down: {left}")


@pytest.fixture(scope="module")
def ray_head(s3_server: str, tmp_path_factory: pytest.TempPathFactory, gcs_port: int, ray_temp_dir: Path
             ) -> Iterator[str]:
    """A local Ray head on loopback with token authentication on; yields the job-submission address."""
    import ray

    token = tmp_path_factory.mktemp("auth") / "auth_token"
    token.write_text(secrets.token_hex(32))
    os.environ.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)})

    if ray.is_initialized():  # one Ray per test process
        ray.shutdown()
    dash = free_port()
    _ray("start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs_port}", "--num-cpus=2",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
         f"--ray-client-server-port={free_port()}", f"--temp-dir={ray_temp_dir}", "--disable-usage-stats",
         f"--dashboard-agent-listen-port={free_port()}",  # not 52365: another Ray on the machine may hold it
         timeout=180)
    try:
        yield f"http://127.0.0.1:{dash}"
    finally:
        for var in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH"):
            os.environ.pop(var, None)
        _stop_head(gcs_port, ray_temp_dir)


def _submit(address: str, script: str, *args: str) -> subprocess.CompletedProcess[str]:
    deadline = time.monotonic() + 180  # right after the head starts, its job agent may still be registering
    while True:  # (slowly on a loaded machine): retry, bounded in time
        job = _ray("job", "submit", f"--address={address}", f"--working-dir={REPO}", "--",
                   "python", f"jobs/{script}", *args, timeout=420, check=False)
        if "No available agent" not in job.stderr or time.monotonic() > deadline:
            return job
        time.sleep(3)


@dataclass(frozen=True)
class LinefitJobs:
    bucket: str
    simulate: subprocess.CompletedProcess[str]
    predict: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def linefit_jobs(ray_head: str, s3_server: str) -> LinefitJobs:
    """Simulate and LineFit-predict on S3 through `ray job submit`, once per module, in a bucket of the
    module's own: the first test checks their outputs, the canary test searches everything they wrote."""
    import boto3

    bucket = f"nr-e2e-linefit-{os.getpid()}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=bucket)
    data, out = f"s3://{bucket}/icecube", f"s3://{bucket}/linefit"
    sim = _submit(ray_head, "icecube_simulate.py", data, "--events-per-batch", "400", "--train-batches", "1",
                  "--test-batches", "2", "--seed", "3")
    assert sim.returncode == 0, sim.stdout[-3000:] + sim.stderr[-3000:]
    pred = _submit(ray_head, "icecube_predict.py", data, "--split", "test", "--model", "linefit", "--out", out,
                   "--events-per-task", "150")
    assert pred.returncode == 0, pred.stdout[-3000:] + pred.stderr[-3000:]
    return LinefitJobs(f"s3://{bucket}", sim, pred)


def test_job_submit_simulate_predict_on_s3(ray_head: str, linefit_jobs: LinefitJobs) -> None:
    bucket = linefit_jobs.bucket
    data, out = f"{bucket}/icecube", f"{bucket}/linefit"
    unauthenticated = _ray("job", "list", f"--address={ray_head}", check=False, timeout=60,
                           env={"RAY_AUTH_TOKEN_PATH": "/nonexistent"})
    assert unauthenticated.returncode != 0  # token authentication stays on
    pred = linefit_jobs.predict
    assert "predicted 800 events" in pred.stdout
    with storage.open_input(f"{out}/submission.csv") as f:
        sub = pacsv.read_csv(f)
    assert sub.column_names == ["event_id", "azimuth", "zenith"] and len(sub) == 800
    ids = sub.column("event_id").to_numpy()
    assert (np.diff(ids) > 0).all()
    manifest = storage.read_manifest(out)
    assert manifest["rows"]["submission.csv"] == 800 and manifest["split"] == "test"
    report = evaluate(data, "test", f"{out}/submission.csv", f"{bucket}/eval")
    assert 0.5 < report["mean_angular_error"] < 1.40  # LineFit; a random direction scores pi/2 = 1.571
    assert storage.exists(f"{bucket}/eval/report.json") and storage.exists(f"{bucket}/eval/error_histogram.png")

    # Bad input through the same path: the job fails with the file named, and nothing is published
    # (in a copy of the split, so the module's data stays valid for the tests after this one).
    bad_data = f"{bucket}/icecube-bad"
    for name in ("sensor_geometry.csv", "test_meta.parquet", "test/batch_2.parquet"):
        storage.write_bytes(f"{bad_data}/{name}", storage.read_bytes(f"{data}/{name}"))
    storage.write_bytes(f"{bad_data}/test/batch_3.parquet", b"PAR1 this is not parquet")
    bad = _submit(ray_head, "icecube_predict.py", bad_data, "--out", f"{bucket}/bad")
    assert bad.returncode != 0
    assert "batch_3.parquet" in bad.stdout + bad.stderr
    assert not storage.exists(f"{bucket}/bad/submission.csv")


@pytest.mark.slow  # ~20 s (one job); out of the default suite for its budget: `icecube stats` runs in the default
# suite through the CLI on S3 (tests/test_icecube_stats.py), and jobs/icecube_stats.py is the same thin entrypoint
def test_job_submit_stats_on_s3(ray_head: str, linefit_jobs: LinefitJobs) -> None:
    bucket = linefit_jobs.bucket
    data = f"{bucket}/icecube"
    report = evaluate(data, "test", f"{bucket}/linefit/submission.csv", f"{bucket}/eval-stats")
    prof = _submit(ray_head, "icecube_stats.py", data, "--split", "test", "--out", f"{bucket}/stats")
    assert prof.returncode == 0, prof.stdout[-3000:] + prof.stderr[-3000:]
    with storage.open_input(f"{bucket}/stats/stats.json") as f:
        st = json.load(f)
    assert st["events"] == 800 and st["batch_files"] == 2
    assert st["linefit"]["mean_angular_error"]["linefit"] == pytest.approx(report["mean_angular_error"], rel=1e-9)


@pytest.mark.slow  # 41 s: the IceCube job-submit tests cover the entrypoints; test_km3net_pipeline covers KM3NeT
def test_job_submit_km3net_train_predict_on_s3(ray_head: str, bucket: str) -> None:
    data, model, pred = f"{bucket}/km3net", f"{bucket}/km3net-model", f"{bucket}/km3net-pred"
    sim = _submit(ray_head, "km3net_simulate.py", data, "--events", "3000", "--files", "2", "--seed", "2")
    assert sim.returncode == 0, sim.stdout[-3000:] + sim.stderr[-3000:]
    tr = _submit(ray_head, "km3net_train.py", data, "--model", "hist-gb", "--out", model, "--workers", "2", "--cv", "2")
    assert tr.returncode == 0, tr.stdout[-3000:] + tr.stderr[-3000:]
    assert "trial 8/8" in tr.stdout + tr.stderr  # 4 candidates x 2 folds, each reported in the job log
    pr = _submit(ray_head, "km3net_predict.py", data, "--model", model, "--out", pred)
    assert pr.returncode == 0, pr.stdout[-3000:] + pr.stderr[-3000:]
    manifest = storage.read_manifest(pred)
    assert manifest["rows"]["predictions.parquet"] == 3000 and manifest["accuracy"] > 0.6


def _gnn_train_predict(ray_head: str, bucket: str, model: str, epochs: int, events: int, *train_args: str) -> str:
    """Simulate, train with checkpoints on S3, then score with the trained model from S3; returns the job log."""
    data, run, pred = f"{bucket}/icecube", f"{bucket}/gnn", f"{bucket}/gnn-pred"
    sim = _submit(ray_head, "icecube_simulate.py", data, "--events-per-batch", str(events), "--train-batches", "1",
                  "--test-batches", "1", "--seed", "4")
    assert sim.returncode == 0, sim.stdout[-3000:] + sim.stderr[-3000:]
    tr = _submit(ray_head, "icecube_train.py", data, "--out", run, "--model", model, "--workers", "2",
                 "--epochs", str(epochs), "--batch-size", "32", "--val-events", "200", *train_args)
    log = tr.stdout + tr.stderr
    assert tr.returncode == 0, log[-5000:]
    assert f"model {model}:" in log and "parameters" in log and "val_mean_angular_error" in log
    assert any("/checkpoint_" in p for p in storage.listdir(f"{run}/train"))  # Ray Train's storage on S3
    config = json.loads(storage.read_bytes(f"{run}/model/config.json"))
    assert config["model"] == model and config["training"]["epochs"] == epochs
    pr = _submit(ray_head, "icecube_predict.py", data, "--model", f"{run}/model", "--out", pred,
                 "--events-per-task", "100", "--batch-size", "64")
    assert pr.returncode == 0, pr.stdout[-3000:] + pr.stderr[-3000:]
    with storage.open_input(f"{pred}/submission.csv") as f:
        sub = pacsv.read_csv(f)
    assert len(sub) == events and len(np.unique(sub.column("event_id").to_numpy())) == events
    assert storage.read_manifest(pred)["model"] == f"{run}/model"
    return log


@pytest.mark.slow  # 140 s: GNN training and scoring are covered in process by tests/test_icecube_train.py
def test_job_submit_gnn_train_predict_on_s3(ray_head: str, bucket: str) -> None:
    _gnn_train_predict(ray_head, bucket, "small", epochs=1, events=600)


@pytest.mark.slow
def test_job_submit_transformer_train_and_ensemble_predict_on_s3(ray_head: str, bucket: str, tmp_path: Path) -> None:
    """Transformer training with EMA weights, then an ensemble of it and a DynEdge model, all on S3."""
    from kaggle import model_artefact

    _gnn_train_predict(ray_head, bucket, "transformer-tiny", 1, 600, "--ema", "0.99")
    config = json.loads(storage.read_bytes(f"{bucket}/gnn/model/config.json"))
    assert config["max_pulses"] == 192 and config["inference_max_pulses"] == 768
    assert config["training"]["settings"]["ema_decay"] == 0.99
    assert config["sizes"]["family"] == "transformer"
    local = model_artefact(tmp_path / "small")  # a second member, uploaded as `train` would publish it
    for f in local.iterdir():
        storage.write_bytes(f"{bucket}/small/model/{f.name}", f.read_bytes())
    out = f"{bucket}/ensemble"
    pr = _submit(ray_head, "icecube_predict.py", f"{bucket}/icecube", "--model", f"{bucket}/gnn/model",
                 "--model", f"{bucket}/small/model", "--weights", "2", "1", "--kappa-weighted",
                 "--max-pulses", "256", "--out", out, "--events-per-task", "100", "--batch-size", "64")
    assert pr.returncode == 0, pr.stdout[-3000:] + pr.stderr[-3000:]
    m = storage.read_manifest(out)
    assert m["model"] == "ensemble" and m["kappa_weighted"] and m["max_pulses"] == 256
    assert [x["architecture"] for x in m["members"]] == ["transformer-tiny", "small"]
    assert [round(x["weight"], 6) for x in m["members"]] == [0.666667, 0.333333]
    with storage.open_input(f"{out}/submission.csv") as f:
        sub = pacsv.read_csv(f)
    assert len(sub) == 600 and len(np.unique(sub.column("event_id").to_numpy())) == 600
    # Mismatched members are refused before any work: nothing is published.
    bad = _submit(ray_head, "icecube_predict.py", f"{bucket}/icecube", "--model", f"{bucket}/gnn/model",
                  "--model", f"{bucket}/small/model", "--out", f"{bucket}/bad-ensemble")
    assert bad.returncode != 0 and "different pulse caps" in bad.stdout + bad.stderr
    assert not storage.exists(f"{bucket}/bad-ensemble/_SUCCESS.json")


@pytest.mark.slow
def test_job_submit_dynedge_train_resume_predict_on_s3(ray_head: str, bucket: str) -> None:
    _gnn_train_predict(ray_head, bucket, "dynedge", epochs=2, events=1500)
    again = _submit(ray_head, "icecube_train.py", f"{bucket}/icecube", "--out", f"{bucket}/gnn", "--model", "dynedge",
                    "--workers", "2", "--epochs", "3", "--batch-size", "32", "--val-events", "200")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "resuming from checkpoint: epoch 2" in again.stdout + again.stderr
    assert json.loads(storage.read_bytes(f"{bucket}/gnn/model/config.json"))["training"]["epochs"] == 3


@pytest.mark.slow
def test_job_submit_nova_on_s3(ray_head: str, bucket: str) -> None:
    """NOvA through `ray job submit` on S3: simulate, train (2 workers), predict, evaluate, and a bad file."""
    data, run, pred, ev = (f"{bucket}/{p}" for p in ("nova", "nova-run", "nova-pred", "nova-eval"))
    sim = _submit(ray_head, "nova_simulate.py", data, "--files", "2", "--events-per-file", "600", "--seed", "8",
                  "--mix", "numu_cc=0.6,nue_cc=0.1,nc=0.3")
    assert sim.returncode == 0, sim.stdout[-3000:] + sim.stderr[-3000:]
    tr = _submit(ray_head, "nova_train.py", data, "--target", "flavour", "--out", run, "--workers", "2",
                 "--epochs", "2", "--batch-size", "32", "--val-events", "150")
    assert tr.returncode == 0, (tr.stdout + tr.stderr)[-5000:]
    assert any("/checkpoint_" in p for p in storage.listdir(f"{run}/train"))
    config = json.loads(storage.read_bytes(f"{run}/model/config.json"))
    assert config["task"] == "nova-flavour" and config["training"]["workers"] == 2
    pr = _submit(ray_head, "nova_predict.py", data, "--model", f"{run}/model", "--out", pred,
                 "--events-per-task", "200")
    assert pr.returncode == 0, pr.stdout[-3000:] + pr.stderr[-3000:]
    assert storage.read_manifest(pred)["rows"]["predictions.parquet"] == 1200
    evj = _submit(ray_head, "nova_evaluate.py", data, "--predictions", f"{pred}/predictions.parquet", "--out", ev)
    assert evj.returncode == 0, evj.stdout[-3000:] + evj.stderr[-3000:]
    report = json.loads(storage.read_bytes(f"{ev}/report.json"))
    assert report["n_events"] == 1200 and set(report["classes"]) == {"numu-CC", "nue-CC", "NC"}
    assert storage.exists(f"{ev}/summary.md") and storage.exists(f"{ev}/confusion_matrix.png")

    storage.write_bytes(f"{data}/neutrino3.h5", b"\x89HDF\r\n\x1a\n truncated")
    bad = _submit(ray_head, "nova_predict.py", data, "--model", f"{run}/model", "--out", f"{bucket}/bad")
    assert bad.returncode != 0 and "neutrino3.h5" in bad.stdout + bad.stderr
    assert not storage.exists(f"{bucket}/bad/predictions.parquet")
    skip = _submit(ray_head, "nova_predict.py", data, "--model", f"{run}/model", "--out", f"{bucket}/skip",
                   "--skip-bad")
    assert skip.returncode == 0, skip.stdout[-3000:] + skip.stderr[-3000:]
    assert storage.read_manifest(f"{bucket}/skip")["skipped_files"] == [f"{data}/neutrino3.h5"]


def test_no_secret_in_logs_outputs_or_job_metadata(ray_head: str, bucket: str, ray_temp_dir: Path,
                                                   linefit_jobs: LinefitJobs) -> None:
    """Jobs that read and write S3 with a canary secret: it appears in no log, output or job record.

    Last in this module, so the files and buckets of every job before it are searched too: the module's
    simulate and predict jobs, and here one job that fails (an error path prints more)."""
    import boto3

    missing = _submit(ray_head, "icecube_predict.py", f"{bucket}/missing", "--out", f"{bucket}/linefit-missing")
    assert missing.returncode != 0, missing.stdout[-2000:]
    jobs = [linefit_jobs.simulate, linefit_jobs.predict, missing]
    canary = CANARY.encode()
    assert all(CANARY not in j.stdout + j.stderr for j in jobs)

    # Job records: entrypoints, metadata, runtime environments.
    listing = subprocess.run(  # a fresh client process: Ray caches the token it first read per process
        [sys.executable, "-c", "import json, sys; from ray.job_submission import JobSubmissionClient as C; "
         "print(json.dumps([j.dict() for j in C(sys.argv[1]).list_jobs()], default=str))", ray_head],
        capture_output=True, text=True, timeout=120, check=True)
    records = json.loads(listing.stdout.strip().splitlines()[-1])
    assert len(records) >= 3 and all("entrypoint" in r for r in records)
    assert CANARY not in listing.stdout

    # Every file the head wrote: its own logs, the drivers', the workers', uploaded code, spilled objects.
    files = [p for p in ray_temp_dir.rglob("*") if p.is_file() and not p.is_symlink()]
    assert any(p.name.startswith("job-driver-") for p in files), "no job logs found under the temp dir"
    leaks = [str(p) for p in files if p.stat().st_size < 2**28 and canary in p.read_bytes()]
    assert not leaks, f"the secret is in {leaks}"

    # Every object in every bucket the tests wrote, manifests included.
    s3 = boto3.client("s3")
    for b in s3.list_buckets()["Buckets"]:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=b["Name"]):
            for obj in page.get("Contents", []):
                body = s3.get_object(Bucket=b["Name"], Key=obj["Key"])["Body"].read()
                assert canary not in body, f"s3://{b['Name']}/{obj['Key']} holds the secret"
