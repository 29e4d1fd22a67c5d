"""Training the direction GNN on Ray Train and scoring with it: failure recovery, resume, inference, bad input."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import torch
from kaggle import model_artefact, random_events, write_dataset

from neutrino_ray import training
from neutrino_ray.cli import main
from neutrino_ray.errors import InputError
from neutrino_ray.icecube import data as icdata
from neutrino_ray.icecube import pipeline
from neutrino_ray.icecube.artefact import load_task_and_model, predict_directions
from neutrino_ray.icecube.options import ScoringOptions
from neutrino_ray.icecube.predict import predict
from neutrino_ray.icecube.train import DirectionTask, train

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gnn") / "icecube"
    assert main(["-q", "simulate", "icecube", str(out), "--events-per-batch", "1600", "--train-batches", "1",
                 "--test-batches", "1", "--seed", "9"]) == 0
    return out


@pytest.mark.slow  # 176 s at 5c578c8; out of the default suite for its budget (docs/development.md)
@pytest.mark.integration
def test_training_recovers_from_a_worker_failure_resumes_and_scores(dataset: Path, tmp_path: Path) -> None:
    out, marker = tmp_path / "run", tmp_path / "fault-marker"
    # 1,300 training events, 2 workers x 32 per step: 21 steps per epoch. The last worker's process is
    # SIGKILLed at step 25, in the second epoch: Ray Train restarts both workers from the end-of-epoch-1
    # checkpoint.
    with training.inject_fault(after_steps=25, marker=str(marker)):
        first = train(str(dataset), str(out), "small", workers=2, epochs=2, batch_size=32, val_events=300,
                      checkpoint_minutes=60, max_failures=2)
    t = first.config["training"]
    assert marker.exists(), "the fault was not injected"
    # The test hook is not a setting: nothing of it is published with the model.
    assert set(t["settings"]) == {f.name for f in dataclasses.fields(training.Settings)}
    assert "fault" not in json.dumps(t["settings"])
    assert t["restarts"] == 1 and t["epochs"] == 2 and t["events"] == 2 * 1300
    assert [h["epoch"] for h in first.history] == [1, 2]
    assert all(np.isfinite(h["val_mean_angular_error"]) and h["val_events"] == 300 for h in first.history)
    model_dir = out / "model"
    assert sorted(p.name for p in model_dir.iterdir()) == ["_SUCCESS.json", "config.json", "learning_curve.png",
                                                            "metrics.json", "model.pt"]
    assert len(json.loads((model_dir / "metrics.json").read_text())) == 2
    assert any((out / "train").glob("checkpoint_*"))

    # The same command with a later end resumes from the latest checkpoint instead of starting over.
    second = train(str(dataset), str(out), "small", workers=2, epochs=3, batch_size=32, val_events=300,
                   checkpoint_minutes=60)
    t = second.config["training"]
    assert t["restarts"] == 2 and t["epochs"] == 3 and t["events"] == 3 * 1300 and len(second.history) == 3

    # Batch inference with the trained model: every test event once, the same values as in-process scoring.
    pred = tmp_path / "pred"
    m = predict(str(dataset), "test", str(pred),
                ScoringOptions(model=str(model_dir), batch_size=100, events_per_task=300))
    assert m["events"] == 1600 and m["architecture"] == "small" and m["max_pulses"] == 256
    sub = pacsv.read_csv(pred / "submission.csv")
    assert sub.column_names == ["event_id", "azimuth", "zenith"]
    # The actor's computation replayed in this process: one torch thread, the same slices and batches.
    task, model, _ = load_task_and_model(str(model_dir))
    geometry = icdata.load_geometry(str(dataset))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        parts = []
        for s in pipeline.plan_split(str(dataset), "test", 300, in_process=True).tables():
            events = pipeline.read_featurise(s, geometry, task.max_pulses)
            parts.append((events.column("event_id").to_numpy(),
                          *predict_directions(task, model, events, 100, torch.device("cpu"))))
    finally:
        torch.set_num_threads(threads)
    ids, az, zen, kappa = (np.concatenate(c) for c in zip(*parts))
    order = np.argsort(ids)
    assert np.array_equal(sub.column("event_id").to_numpy(), ids[order])
    np.testing.assert_allclose(sub.column("zenith").to_numpy(), zen[order], atol=1e-9)
    np.testing.assert_allclose(sub.column("azimuth").to_numpy(), az[order], atol=1e-9)
    assert (kappa > 0).all()


def _predict_cli(data: Path, model: str, out: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    code = main(["-q", "icecube", "predict", str(data), "--model", model, "--out", str(out), *extra])
    assert code == 2
    assert not out.exists(), "something was published"
    return capsys.readouterr().err


@pytest.mark.integration
def test_bad_models_are_refused_before_any_work(dataset: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    err = _predict_cli(dataset, str(tmp_path / "nowhere"), out, capsys)
    assert "nowhere/config.json: no trained model here" in err
    err = _predict_cli(dataset, "dynedge", out, capsys)
    assert "is an architecture, not a trained model" in err

    other_features = DirectionTask().config()["features"] | {"time_scale": 1000.0}
    err = _predict_cli(dataset, str(model_artefact(tmp_path / "f", features=other_features)), out, capsys)
    assert "trained with another feature set" in err and "'time_scale': 1000.0" in err
    err = _predict_cli(dataset, str(model_artefact(tmp_path / "t", task="nova-numu-cc")), out, capsys)
    assert "for task 'nova-numu-cc', expected" in err
    err = _predict_cli(dataset, str(model_artefact(tmp_path / "s", sizes=DirectionTask("dynedge").config()["sizes"])),
                       out, capsys)
    assert "weights do not match the model in its config.json" in err
    trunc = model_artefact(tmp_path / "w")
    (trunc / "model.pt").write_bytes((trunc / "model.pt").read_bytes()[:1000])
    err = _predict_cli(dataset, str(trunc), out, capsys)
    assert "model.pt: unreadable model weights" in err
    err = _predict_cli(dataset, str(model_artefact(tmp_path / "c")), out, capsys, "--max-pulses", "64")
    assert "trained with a pulse cap of 256" in err


@pytest.mark.slow
@pytest.mark.integration  # a CLI subprocess
def test_a_killed_training_job_resumes_when_run_again(dataset: Path, tmp_path: Path) -> None:
    """SIGKILL the whole job (driver and its Ray) after its first checkpoint; the same command resumes."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "neutrino_ray.cli", "icecube", "train", str(dataset), "--out", str(out),
           "--workers", "1", "--epochs", "3", "--batch-size", "32", "--val-events", "300"]
    env = dict(os.environ)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 240  # until Ray Train has registered the first checkpoint
        while training.registered_checkpoint(str(out)) is None and proc.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(training.CHECKPOINT_POLL_SECONDS)
        assert training.registered_checkpoint(str(out)) is not None, "no checkpoint registered within 240 s"
        assert proc.poll() is None, "training ended before it could be killed"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert not (out / "model").exists()  # nothing published by the killed job

    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=420)
    log = again.stdout + again.stderr
    assert again.returncode == 0, log[-3000:]
    assert "resuming from checkpoint: epoch 1" in log, log[-3000:]
    t = json.loads((out / "model" / "config.json").read_text())["training"]
    assert t["epochs"] == 3 and t["events"] == 3 * 1300 and t["restarts"] == 1


@pytest.mark.integration
def test_train_refuses_bad_input(tmp_path: Path, dataset: Path) -> None:
    rng = np.random.default_rng(2)
    root = write_dataset(tmp_path / "d", {1: random_events(rng, 40)}, split="train")
    meta = pq.read_table(root / "train_meta.parquet")
    zen = meta.column("zenith").to_numpy().copy()
    zen[7] = np.nan
    pq.write_table(meta.set_column(meta.schema.get_field_index("zenith"), "zenith", pa.array(zen)),
                   root / "train_meta.parquet")
    bad_id = meta.column("event_id")[7].as_py()
    with pytest.raises(icdata.DataError, match=rf"train_meta.parquet: event_id {bad_id} has an invalid true direction"):
        train(str(root), str(tmp_path / "o1"), val_events=5)
    with pytest.raises(InputError, match="--val-events 1600 leaves no training events"):
        train(str(dataset), str(tmp_path / "o2"), val_events=1600)
    with pytest.raises(InputError, match="--val-batches 1 leaves no training batch"):
        train(str(dataset), str(tmp_path / "o2"), val_batches=1)
    test_only = write_dataset(tmp_path / "t", {2: random_events(rng, 5)}, split="test")
    with pytest.raises(icdata.DataError, match="meta for split 'train' not found"):
        train(str(test_only), str(tmp_path / "o3"))
    with pytest.raises(InputError, match="need 2 GPUs; the cluster has 0"):
        train(str(dataset), str(tmp_path / "o4"), workers=2, gpus_per_worker=1, val_events=100, resource_wait_minutes=0)
    assert not (tmp_path / "o4" / "model").exists()


def test_train_entrypoint_parses_its_flags() -> None:
    r = subprocess.run([sys.executable, str(REPO / "jobs" / "icecube_train.py"), "--help"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    for flag in ("--model", "--workers", "--gpus-per-worker", "--max-minutes", "--epochs", "--batch-size", "--lr"):
        assert flag in r.stdout
    with pytest.raises(SystemExit) as e:
        main(["icecube", "train", "data", "--out", "o", "--model", "huge"])
    assert e.value.code == 2


@pytest.mark.slow  # 95 s on 2 cores: the suite's budget; the transformer's steps are in test_icecube_transformer
@pytest.mark.integration
def test_transformer_trains_with_ema_and_scores_alone_and_in_an_ensemble(dataset: Path, tmp_path: Path) -> None:
    from neutrino_ray import training
    from neutrino_ray.icecube.artefact import load_calibration, predict_vectors
    from neutrino_ray.icecube.scoring import ensemble_directions

    out = tmp_path / "run"
    res = train(str(dataset), str(out), "transformer-tiny", workers=1, epochs=1, batch_size=64, val_events=300,
                ema_decay=0.9)
    cfg = res.config
    assert cfg["model"] == "transformer-tiny" and cfg["sizes"]["family"] == "transformer"
    assert cfg["max_pulses"] == 192 and cfg["inference_max_pulses"] == 768
    assert np.isfinite(cfg["training"]["final_validation"]["val_mean_angular_error"])
    # The published weights are the EMA's, not the last step's.
    ckpt = max(p for p in (out / "train").glob("checkpoint_*") if p.is_dir())
    saved = torch.load(ckpt / training.STATE_FILE, map_location="cpu", weights_only=False)
    published = torch.load(out / "model" / "model.pt", map_location="cpu", weights_only=True)
    name = "head.weight"
    assert torch.equal(published[name], saved["ema"][name]) and not torch.equal(published[name], saved["model"][name])

    # Alone: the inference cap stored with the model (768), recorded in the manifest beside the training cap.
    m = predict(str(dataset), "test", str(tmp_path / "p1"), ScoringOptions(model=str(out / "model"), batch_size=100,
                                                                     events_per_task=400))
    assert m["events"] == 1600 and m["max_pulses"] == 768 and m["train_max_pulses"] == 192
    pred = pq.read_table(tmp_path / "p1" / "predictions.parquet")
    kappa = pred.column("kappa").to_numpy()
    assert (kappa > 0).all() and (pred.column("sigma_50").to_numpy() < pred.column("sigma_90").to_numpy()).all()
    sub1 = pacsv.read_csv(tmp_path / "p1" / "submission.csv")
    assert pred.column("event_id").equals(sub1.column("event_id"))
    np.testing.assert_allclose(pred.column("zenith").to_numpy(), sub1.column("zenith").to_numpy(), atol=1e-9)
    # evaluate with the uncertainties: coverage, its curve, pulls, coverage by energy and pulse count, plots.
    from neutrino_ray.icecube.evaluate import evaluate
    from neutrino_ray.icecube.metrics import angular_distance
    from neutrino_ray.icecube.uncertainty import vmf_quantile

    rep = evaluate(str(dataset), "test", str(tmp_path / "p1" / "predictions.parquet"), str(tmp_path / "e1"))
    unc = rep["uncertainty"]
    truth = icdata.split_truth(str(dataset), "test").sort_by("event_id")
    err = angular_distance(truth.column("azimuth").to_numpy(), truth.column("zenith").to_numpy(),
                           pred.column("azimuth").to_numpy(), pred.column("zenith").to_numpy())
    assert unc["coverage_68"] == pytest.approx(np.mean(err <= vmf_quantile(kappa, 0.68)), abs=1e-9)
    assert len(unc["coverage_curve"]["observed"]) == 19 and unc["by_energy_gev"] and unc["by_n_pulses"]
    assert (tmp_path / "e1" / "reliability.png").exists() and (tmp_path / "e1" / "error_vs_sigma.png").exists()

    # calibrate on the model's own validation slice (300 held-out train events), then predict applies it.
    from neutrino_ray.icecube.calibrate import calibrate
    from neutrino_ray.icecube.uncertainty import apply_kappa_calibration

    cal = calibrate(str(dataset), str(out / "model"), "train")
    assert cal["events"] == 300 and cal["held_out"] == "the last 300 events of the train split"
    assert (out / "model" / "calibration.json").exists() and (out / "model" / "model.pt").exists()
    assert json.loads((out / "model" / "_SUCCESS.json").read_text())["kappa_calibration"]["events"] == 300
    m = predict(str(dataset), "test", str(tmp_path / "p3"), ScoringOptions(model=str(out / "model"), batch_size=100,
                                                                     events_per_task=400))
    assert m["kappa_calibrated"] is True and "recalibrated" in m["uncertainty"]
    pred3 = pq.read_table(tmp_path / "p3" / "predictions.parquet")
    np.testing.assert_allclose(pred3.column("kappa").to_numpy(), apply_kappa_calibration(cal, kappa), rtol=1e-6)
    assert pred3.column("zenith").equals(pred.column("zenith"))

    # In an ensemble with a DynEdge model: one featurisation at the common cap, weighted, κ-weighted.
    gnn = model_artefact(tmp_path / "gnn")
    members = (str(out / "model"), str(gnn))
    pred = tmp_path / "p2"
    m = predict(str(dataset), "test", str(pred), ScoringOptions(model=members, max_pulses=256, weights=(3.0, 1.0),
                                                         kappa_weighted=True, batch_size=100, events_per_task=400))
    assert m["model"] == "ensemble" and m["max_pulses"] == 256
    sub = pacsv.read_csv(pred / "submission.csv")
    geometry = icdata.load_geometry(str(dataset))
    loaded = [load_task_and_model(u)[:2] for u in members]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ids, dirs = [], []
        for s in pipeline.plan_split(str(dataset), "test", 400, in_process=True).tables():
            events = pipeline.read_featurise(s, geometry, 256)
            outs = [predict_vectors(task, model, events, 100, torch.device("cpu")) for task, model in loaded]
            ids.append(events.column("event_id").to_numpy())
            ks = [apply_kappa_calibration(load_calibration(u), o[1]) for u, o in zip(members, outs)]  # tiny's
            dirs.append(ensemble_directions(np.stack([o[0] for o in outs]), np.stack(ks), np.array([0.75, 0.25]),
                                            kappa_weighted=True)[0])
    finally:
        torch.set_num_threads(threads)
    order = np.argsort(np.concatenate(ids))
    want = np.concatenate(dirs)[order]
    got = np.stack([np.sin(sub.column("zenith").to_numpy()) * np.cos(sub.column("azimuth").to_numpy()),
                    np.sin(sub.column("zenith").to_numpy()) * np.sin(sub.column("azimuth").to_numpy()),
                    np.cos(sub.column("zenith").to_numpy())], axis=1)
    np.testing.assert_allclose(got, want, atol=1e-6)

    # The ensemble calibrated as a whole → an ensemble artefact; predict --model ARTEFACT scores the same
    # members, weights and κ rule, with the ensemble's calibration applied to the combined κ.
    ens = tmp_path / "ens"
    cal = calibrate(str(dataset), members, "train", 300,
                    ScoringOptions(model=members, max_pulses=256, weights=(3.0, 1.0), kappa_weighted=True,
                                   batch_size=100),
                    out=str(ens))
    spec = json.loads((ens / "ensemble.json").read_text())
    assert spec["members"] == list(members) and spec["weights"] == [0.75, 0.25] and spec["kappa_weighted"]
    assert cal["events"] == 300 and (ens / "calibration.json").exists()
    assert not (Path(members[1]) / "calibration.json").exists()  # the members are left as they were
    m = predict(str(dataset), "test", str(tmp_path / "p4"), ScoringOptions(model=str(ens), batch_size=100,
                                                                     events_per_task=400))
    assert m["ensemble_artefact"] == str(ens) and m["ensemble_kappa_calibrated"] is True and m["max_pulses"] == 256
    assert pacsv.read_csv(tmp_path / "p4" / "submission.csv").equals(sub)  # same directions as the plain ensemble
    raw = pq.read_table(pred / "predictions.parquet").column("kappa").to_numpy()
    pred4 = pq.read_table(tmp_path / "p4" / "predictions.parquet")
    np.testing.assert_allclose(pred4.column("kappa").to_numpy(), apply_kappa_calibration(cal, raw), rtol=1e-6)
    assert set(pred4.column("model").to_pylist()) == {str(ens)}
    with pytest.raises(InputError, match="its weights and κ rule are fixed"):
        predict(str(dataset), "test", str(tmp_path / "p5"), ScoringOptions(model=str(ens), weights=(1.0,)))
    with pytest.raises(InputError, match="pass --out URI"):
        calibrate(str(dataset), members, "train", 300, ScoringOptions(model=members, max_pulses=256))


def test_registered_checkpoint_is_read_from_ray_trains_snapshot(tmp_path: Path) -> None:
    """What the fault hook and the resume test poll: Ray Train's checkpoint-manager snapshot, with bounded waits."""
    out = str(tmp_path)
    assert training.registered_checkpoint(out) is None
    t0 = time.monotonic()
    assert not training.wait_for_registered_checkpoint(out, None, timeout=0.3)
    assert time.monotonic() - t0 < 5
    snapshot = tmp_path / training.RUN_NAME / training.CHECKPOINT_SNAPSHOT
    snapshot.parent.mkdir()
    snapshot.write_text('{"latest_checkpoint_result": null, "checkpoint_results": []')  # being written
    assert training.registered_checkpoint(out) is None
    snapshot.write_text(json.dumps({"latest_checkpoint_result": {"checkpoint_dir_name": "checkpoint_x",
                                                                 "metrics": {"epoch": 1, "step": 21}}}))
    assert training.registered_checkpoint(out) == {"epoch": 1, "step": 21}
    assert training.wait_for_registered_checkpoint(out, 21, timeout=0)
    assert not training.wait_for_registered_checkpoint(out, 25, timeout=0.3)  # an older checkpoint: not yet


@pytest.mark.integration
@pytest.mark.parametrize("how", [pytest.param("fused", marks=pytest.mark.slow), "split"])  # fused: ~10 s, slow for
def test_untrained_refine_scores_the_kaggle_linefit(dataset: Path, tmp_path: Path, how: str) -> None:  # the budget
    """`refine` starts at its seed: untrained, it scores every test event with the Kaggle LineFit's direction,
    through either inference pipeline (the seeds are featurised where the pulses are read, from all of them; the
    split pipeline, in the default suite, featurises in CPU tasks apart from the model's actors, the fused one
    in the actors)."""
    from neutrino_ray.icecube.metrics import angular_distance

    model = model_artefact(tmp_path / "refine", "refine")
    predict(str(dataset), "test", str(tmp_path / "linefit"), ScoringOptions(model="linefit"))
    ref = pacsv.read_csv(tmp_path / "linefit" / "submission.csv")
    predict(str(dataset), "test", str(tmp_path / how), ScoringOptions(model=str(model), pipeline=how,
                                                                        events_per_task=800))
    sub = pacsv.read_csv(tmp_path / how / "submission.csv")
    assert np.array_equal(sub.column("event_id").to_numpy(), ref.column("event_id").to_numpy())
    apart = angular_distance(sub.column("azimuth").to_numpy(), sub.column("zenith").to_numpy(),
                             ref.column("azimuth").to_numpy(), ref.column("zenith").to_numpy())
    assert len(apart) == 1600 and apart.max() < 1e-6, (how, apart.max())
