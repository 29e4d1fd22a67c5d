"""KM3NeT train/predict/evaluate on small hand-made tables: leakage, balancing, models, S3, refusals, bad input."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import one_line_error

from neutrino_ray import storage
from neutrino_ray.cli import main
from neutrino_ray.errors import InputError
from neutrino_ray.km3net import features, models
from neutrino_ray.km3net.artefact import load_model
from neutrino_ray.km3net.train import split_and_balance, train


def make_table(n: int, seed: int = 0, numu_cc_fraction: float = 0.5) -> pa.Table:
    """Events whose features carry a noisy track/shower signal; four (pdgid, is_cc) groups of unequal size."""
    rng = np.random.default_rng(seed)
    pdg = np.where(rng.random(n) < numu_cc_fraction, 14, 12) * rng.choice([-1, 1], n)
    is_cc = np.where(np.abs(pdg) == 14, rng.random(n) < 0.85, rng.random(n) < 0.6)
    shower = features.label(pdg, is_cc)
    cols: dict[str, object] = {"event_id": np.arange(n, dtype=np.int64)}
    for i, f in enumerate(features.FEATURES):
        signal = (0.0 if i % 3 else 1.2) * np.where(shower, -1.0, 1.0)
        cols[f] = rng.normal(signal, 1.0, n) * (1 + i)
    cols.update(pdgid=pdg.astype(np.int64), is_cc=is_cc, bjorkeny=rng.random(n), energy=10 ** rng.uniform(0, 2, n))
    return pa.table(cols)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "features.parquet"
    pq.write_table(make_table(1200), path)
    return path


@pytest.fixture(scope="module")
def hist_gb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One hist-gb model trained on ``data``'s table, for the tests that only need a trained model."""
    root = tmp_path_factory.mktemp("km3net-model")
    pq.write_table(make_table(1200), root / "features.parquet")
    train(str(root / "features.parquet"), "hist-gb", str(root / "m"), workers=1, cv=2)
    return root / "m"


def test_label_definition() -> None:
    pdg = np.array([14, -14, 14, 12, -12, 16, 14])
    cc = np.array([True, True, False, True, False, True, True])
    assert features.label(pdg, cc).tolist() == [False, False, True, True, True, True, False]


def test_balancing_equalises_tracks_and_showers() -> None:
    pdg = np.array([14] * 50 + [12] * 20 + [14] * 10)
    cc = np.array([1] * 70 + [0] * 10, bool)
    y = features.label(pdg, cc)  # 50 tracks; 30 showers (20 ν_e CC + 10 ν_μ NC)
    keep = models.undersample(y, seed=1)
    assert np.bincount(y[keep].astype(int)).tolist() == [30, 30]
    assert sorted(keep.tolist()) == keep.tolist() and set(np.flatnonzero(y)) <= set(keep.tolist())
    w = models.balanced_weights(y)
    assert np.isclose(w[y].sum(), w[~y].sum()) and np.isclose(w.mean(), 1.0)
    assert models.interaction_groups(pdg, cc)[[0, 50, 70]].tolist() == [29, 25, 28]
    # In training: equal classes among the training rows, the held-out split untouched and stratified.
    table = make_table(2000, seed=4, numu_cc_fraction=0.7)
    train_idx, test_idx, w = split_and_balance(table, 0.25, "undersample", 1, None)
    lab = features.label(table.column("pdgid").to_numpy(), table.column("is_cc").to_numpy())
    assert w is None and lab[train_idx].mean() == 0.5 and len(test_idx) == 500
    assert not set(train_idx) & set(test_idx)
    rows, _, w = split_and_balance(table, 0.25, "weights", 1, None)
    assert w is not None and len(rows) == 1500 and lab[rows].mean() < 0.45  # all rows kept, showers rarer
    assert np.isclose(w[lab[rows]].sum(), w[~lab[rows]].sum())


@pytest.mark.integration
def test_no_leakage_scaler_sees_training_rows_only(tmp_path: Path) -> None:
    table = make_table(1500, seed=1)
    # Make the held-out rows unmistakable: if the scaler ever saw them, its mean would move by ~1e5.
    train_idx, test_idx, _ = split_and_balance(table, 0.25, "undersample", 42, None)
    x = table.column("n_hits").to_numpy().copy()
    x[test_idx] += 1e6
    table = table.set_column(table.schema.get_field_index("n_hits"), "n_hits", pa.array(x))
    pq.write_table(table, tmp_path / "t.parquet")
    train(str(tmp_path / "t.parquet"), "hist-gb", str(tmp_path / "m"), workers=2, cv=2, max_train_events=None)
    model, meta = load_model(str(tmp_path / "m"))
    scaler = model.named_steps["scale"]
    assert scaler.n_samples_seen_ == len(train_idx) == meta["n_train"]
    np.testing.assert_allclose(scaler.mean_[0], x[train_idx].mean())
    assert abs(scaler.mean_[0]) < 1e3


@pytest.mark.parametrize("name", models.MODELS)
@pytest.mark.integration
def test_each_model_trains_and_beats_chance(data: Path, tmp_path: Path, name: str) -> None:
    out = tmp_path / name
    assert main(["-q", "km3net", "train", str(data), "--model", name, "--out", str(out), "--workers", "2",
                 "--cv", "2", "--search", "random", "--n-iter", "2"]) == 0
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["features"] == list(features.FEATURES) and meta["label_definition"] == features.LABEL_DEFINITION
    assert meta["test_metrics"]["roc_auc"] > 0.8 and meta["versions"]["scikit-learn"]
    assert len(json.loads((out / "cv_results.json").read_text())) == 2
    for png in ("roc.png", "confusion_matrix.png", "efficiency_vs_energy.png", "feature_importance.png",
                "track_start_density.png", "likelihood_scatter.png", "likelihood_hist2d.png"):
        assert (out / "analysis" / png).read_bytes()[:4] == b"\x89PNG", png
    if name == "linear-svc":
        assert (out / "analysis/linear_svc_coefficients.png").exists()
    model, _ = load_model(str(out))
    p = models.shower_probability(model, features.feature_matrix(make_table(50, seed=9)))
    assert ((p >= 0) & (p <= 1)).all()


def test_save_load_predict_evaluate_through_s3(bucket: str, tmp_path: Path) -> None:
    storage.write_bytes(f"{bucket}/km3net/a.parquet", storage.parquet_bytes(make_table(800, seed=2)))
    storage.write_bytes(f"{bucket}/km3net/b.parquet", storage.parquet_bytes(make_table(300, seed=3)))
    assert main(["-q", "km3net", "train", f"{bucket}/km3net", "--model", "random-forest", "--out",
                 f"{bucket}/model", "--cv", "2"]) == 0
    _, meta = load_model(f"{bucket}/model")
    assert meta["n_events"] == 1100
    assert main(["-q", "km3net", "predict", f"{bucket}/km3net", "--model", f"{bucket}/model", "--out",
                 f"{bucket}/pred"]) == 0
    with storage.open_input(f"{bucket}/pred/predictions.parquet") as f:
        pred = pq.read_table(f)
    assert len(pred) == 1100 and set(pred.column("source").to_pylist()) == {"a.parquet", "b.parquet"}
    assert {"event_id", "p_shower", "is_shower_pred", "is_shower"} <= set(pred.column_names)
    assert storage.read_manifest(f"{bucket}/pred")["accuracy"] > 0.7
    assert main(["-q", "km3net", "evaluate", f"{bucket}/km3net/b.parquet", "--model", f"{bucket}/model", "--out",
                 f"{bucket}/eval", "--energy-cut", "10"]) == 0
    report = json.loads(storage.read_bytes(f"{bucket}/eval/report.json"))
    assert report["summary"]["n_events"] == 300 and report["energy_cut_gev"] == 10


@pytest.mark.integration
def test_feature_mismatch_is_refused_before_work(data: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m"
    train(str(data), "linear-svc", str(out), workers=1, cv=2)
    meta = json.loads((out / "metadata.json").read_text())
    meta["features"] = [*meta["features"][:-1], "some_old_feature"]
    (out / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match=r"different feature list.*some_old_feature"):
        load_model(str(out))
    code = main(["-q", "km3net", "predict", str(data), "--model", str(out), "--out", str(tmp_path / "p")])
    assert code == 2 and "some_old_feature" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()
    code = main(["-q", "km3net", "predict", str(data), "--model", str(tmp_path / "nothing"), "--out",
                 str(tmp_path / "p")])
    assert code == 2 and "no trained model here" in capsys.readouterr().err


@pytest.mark.integration
def test_bad_input_missing_columns_and_non_finite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    t = make_table(300)
    pq.write_table(t.drop_columns(["gandalf_beta0"]), tmp_path / "missing.parquet")
    code = main(["-q", "km3net", "train", str(tmp_path / "missing.parquet"), "--model", "hist-gb", "--out",
                 str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert code == 2 and "missing.parquet" in err and "gandalf_beta0" in err
    x = t.column("track_length").to_numpy().copy()
    x[[7, 8]] = [np.nan, np.inf]
    bad = t.set_column(t.schema.get_field_index("track_length"), "track_length", pa.array(x))
    pq.write_table(bad, tmp_path / "nan.parquet")
    code = main(["-q", "km3net", "train", str(tmp_path / "nan.parquet"), "--model", "hist-gb", "--out",
                 str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert code == 2 and "nan.parquet" in err and "row 7" in err and "track_length" in err
    assert not (tmp_path / "m").exists()
    # --skip-bad drops exactly those rows and says so in the artefact.
    assert main(["-q", "km3net", "train", str(tmp_path / "nan.parquet"), "--model", "hist-gb", "--out",
                 str(tmp_path / "m"), "--skip-bad", "--cv", "2"]) == 0
    meta = json.loads((tmp_path / "m/metadata.json").read_text())
    assert meta["skipped_events"] == 2 and meta["n_events"] == 298


def _h5(path: Path, edit: str | None = None) -> Path:
    """A simulated features file (300 events), optionally broken: a dataset dropped or shortened."""
    import h5py

    from neutrino_ray.km3net import simulate

    simulate.write_h5(path, simulate.simulate_events(3, 300))
    if edit:
        with h5py.File(path, "a") as f:
            values = f[f"events/{edit}"][:-1]
            del f[f"events/{edit}"]
            if edit == "track_length":  # shortened; n_doms: dropped
                f["events"].create_dataset(edit, data=values)
    return path


def _truncated(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _no_truth(path: Path) -> Path:
    pq.write_table(make_table(200).drop_columns(list(features.TRUTH)), path)
    return path


def _parquet(path: Path) -> Path:
    pq.write_table(make_table(200), path)
    return path


def _folder_with_one_bad(path: Path) -> Path:
    """Two files read as two Ray tasks: the bad one's error still comes back as one line."""
    path.mkdir()
    _parquet(path / "good.parquet")
    (path / "bad.h5").write_bytes(b"junk" * 100)
    return path / "bad.h5"


BAD_FILES = {  # case: (make the input under a folder, message after "FILE: ")
    "h5_not_hdf5": (lambda d: (d / "x.h5").write_text("event_id,n_hits\n1,2\n") and d / "x.h5",
                    "not a readable HDF5 file (Unable to synchronously open file (file signature not found))"),
    "h5_truncated": (lambda d: _truncated(_h5(d / "x.h5")),
                     "not a readable HDF5 file (Unable to synchronously open file (truncated file: "),
    "h5_dataset_lengths_differ": (lambda d: _h5(d / "x.h5", "track_length"),
                                  "/events columns have different lengths: 300 for most, {'track_length': 299}"),
    "h5_missing_column": (lambda d: _h5(d / "x.h5", "n_doms"), "/events is missing columns ['n_doms']"),
    "parquet_truncated": (lambda d: _truncated(_parquet(d / "x.parquet")),
                          "not a readable Parquet file: Parquet magic bytes not found in footer."),
    "parquet_without_truth": (lambda d: _no_truth(d / "x.parquet"),
                              "missing columns ['pdgid', 'is_cc', 'bjorkeny', 'energy'] (no MC truth: training and "
                              "evaluation need labelled events)"),
    "folder_with_one_bad_file": (lambda d: _folder_with_one_bad(d / "folder"),
                                 "not a readable HDF5 file (Unable to synchronously open file (file signature not "
                                 "found))"),
}


@pytest.mark.parametrize("case", BAD_FILES)
@pytest.mark.integration
def test_bad_files_through_cli(tmp_path: Path, case: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Exit 2 and one line naming the file and the problem; no model is published."""
    make, message = BAD_FILES[case]
    bad = make(tmp_path)
    data = bad.parent if case == "folder_with_one_bad_file" else bad
    code = main(["-q", "km3net", "train", str(data), "--model", "hist-gb", "--out", str(tmp_path / "m")])
    err = capsys.readouterr().err
    line = one_line_error(code, err)
    assert line.startswith(f"neutrino-ray: error: {bad}: {message}"), line
    assert not (tmp_path / "m").exists()


@pytest.mark.integration
def test_predict_skip_bad_drops_and_counts_non_finite_events(hist_gb: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    t = make_table(300, seed=5)
    x = t.column("shower_energy").to_numpy().copy()
    x[[11, 40]] = [np.inf, np.nan]
    pq.write_table(t.set_column(t.schema.get_field_index("shower_energy"), "shower_energy", pa.array(x)),
                   folder / "bad.parquet")
    pq.write_table(make_table(100, seed=6), folder / "good.parquet")
    args = ["-q", "km3net", "predict", str(folder), "--model", str(hist_gb)]
    assert main([*args, "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert (f"neutrino-ray: error: {folder}/bad.parquet: row 11 (event_id 11) has a non-finite shower_energy (inf); "
            f"2 such rows (use --skip-bad to drop them)") in err.splitlines()
    assert not (tmp_path / "p").exists()
    assert main([*args, "--out", str(tmp_path / "p"), "--skip-bad"]) == 0
    manifest = storage.read_manifest(str(tmp_path / "p"))
    assert manifest["skipped_events"] == 2 and manifest["events"] == 398
    pred = pq.read_table(tmp_path / "p" / "predictions.parquet")
    bad_ids = pred.filter(pa.compute.equal(pred.column("source"), "bad.parquet")).column("event_id").to_pylist()
    assert len(pred) == 398 and 11 not in bad_ids and 40 not in bad_ids and len(bad_ids) == 298


@pytest.mark.integration
def test_model_artefact_is_a_plain_pickle(hist_gb: Path) -> None:
    model = pickle.loads((hist_gb / "model.pkl").read_bytes())
    assert hasattr(model, "predict_proba")


def test_real_offline_file_from_s3_scores_30_events(bucket: str, hist_gb: Path) -> None:
    real = pytest.importorskip("neutrino_ray.km3net.real")
    pytest.importorskip("km3net_testdata", reason="km3net-testdata is not installed: no sample offline file")
    storage.write_bytes(f"{bucket}/real/sample.root", Path(real.sample_file()).read_bytes())
    assert main(["-q", "km3net", "predict", f"{bucket}/real/sample.root", "--model", str(hist_gb),
                 "--out", f"{bucket}/real-pred"]) == 0
    with storage.open_input(f"{bucket}/real-pred/predictions.parquet") as f:
        pred = pq.read_table(f)
    assert len(pred) == 30 and int(np.sum(pred.column("is_shower").to_numpy(zero_copy_only=False))) == 16
