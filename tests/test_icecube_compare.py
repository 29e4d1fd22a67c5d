"""`icecube compare`: figures equal the competition formula on hand-made submissions; bad inputs; S3."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from kaggle import random_events, write_dataset

from neutrino_ray import storage
from neutrino_ray.cli import main
from neutrino_ray.icecube.compare import MeanBootstrap, bootstrap_mean, compare
from neutrino_ray.icecube.uncertainty import sigmas


def _kaggle_metric(az_true: np.ndarray, zen_true: np.ndarray, az_pred: np.ndarray, zen_pred: np.ndarray) -> float:
    """The competition's `angular_dist_score`, written out again here from its published definition."""
    sa1, ca1, sz1, cz1 = np.sin(az_true), np.cos(az_true), np.sin(zen_true), np.cos(zen_true)
    sa2, ca2, sz2, cz2 = np.sin(az_pred), np.cos(az_pred), np.sin(zen_pred), np.cos(zen_pred)
    scalar_prod = np.clip(sz1 * sz2 * (ca1 * ca2 + sa1 * sa2) + cz1 * cz2, -1, 1)
    return float(np.average(np.abs(np.arccos(scalar_prod))))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cmp")
    return write_dataset(root, {1: random_events(np.random.default_rng(3), 400, counts=np.full(400, 3))})


def _submissions(root: Path, out: Path) -> tuple[list[str], list[np.ndarray]]:
    truth = pq.read_table(root / "test_truth.parquet").sort_by("event_id")
    ids, az, zen = (truth.column(c).to_numpy() for c in ("event_id", "azimuth", "zenith"))
    rng = np.random.default_rng(1)
    paths, preds = [], []
    for name, noise in (("good", 0.1), ("bad", 0.8)):
        pa_ = np.mod(az + rng.normal(0, noise, len(az)), 2 * np.pi)
        pz = np.clip(zen + rng.normal(0, noise, len(zen)), 0, np.pi)
        kappa = np.full(len(ids), 1 / noise ** 2)
        order = rng.permutation(len(ids))  # any row order
        t = pa.table({"event_id": ids[order], "azimuth": pa_[order], "zenith": pz[order]})
        if name == "good":  # a predictions.parquet with uncertainties
            s = sigmas(kappa[order])
            t = t.append_column("kappa", pa.array(kappa[order]))
            for k, v in s.items():
                t = t.append_column(k, pa.array(v))
            path = out / name / "predictions.parquet"
            path.parent.mkdir(parents=True)
            pq.write_table(t, path)
        else:
            path = out / name / "submission.csv"
            path.parent.mkdir(parents=True)
            pacsv.write_csv(t, path)
        paths.append(str(path))
        preds.append(np.stack([pa_, pz]))
    return paths, [np.stack([az, zen]), *preds]


def test_figures_equal_the_competition_formula(dataset: Path, tmp_path: Path) -> None:
    paths, (true, good, bad) = _submissions(dataset, tmp_path)
    rep = compare(str(dataset), "test", paths, ["good", "bad"], str(tmp_path / "out"))
    got = {m["label"]: m for m in rep["models"]}
    assert got["good"]["mean_angular_error"] == pytest.approx(_kaggle_metric(*true, *good), abs=1e-12)
    assert got["bad"]["mean_angular_error"] == pytest.approx(_kaggle_metric(*true, *bad), abs=1e-12)
    lo, hi = got["good"]["mean_interval_68"]
    assert lo < got["good"]["mean_angular_error"] < hi
    assert got["good"]["uncertainty"]["coverage_68"] > 0 and "uncertainty" not in got["bad"]
    assert sum(b["n_events"] for b in got["good"]["by_true_zenith"]) == 400
    out = tmp_path / "out"
    assert {"report.json", "summary.md", "cumulative_error.png", "error_vs_n_pulses.png", "zenith_resolution.png",
            "error_vs_true_zenith.png", "coverage.png"} <= {p.name for p in out.iterdir()}
    md = (out / "summary.md").read_text()
    assert "| good |" in md and "| bad |" in md and "1.214" in md
    assert json.loads((out / "report.json").read_text())["models"][0]["label"] == "good"


def test_bootstrap_interval_matches_the_standard_error() -> None:
    rng = np.random.default_rng(0)
    e = rng.exponential(1.0, 5_000)
    lo, hi = bootstrap_mean(e, np.random.default_rng(1))
    assert (hi - lo) / 2 == pytest.approx(e.std() / np.sqrt(len(e)), rel=0.15)


def test_mismatched_event_sets_are_refused(dataset: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    paths, _ = _submissions(dataset, tmp_path)
    t = pacsv.read_csv(paths[1])
    short = tmp_path / "short.csv"
    pacsv.write_csv(t.slice(0, 399), short)
    out = tmp_path / "out"
    code = main(["-q", "icecube", "compare", str(dataset), "--predictions", paths[0], str(short),
                 "--labels", "a", "b", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and f"{short}: event ids differ from the test split: 1 missing" in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()
    code = main(["-q", "icecube", "compare", str(dataset), "--predictions", paths[0], "--labels", "a", "b",
                 "--out", str(out)])
    assert code == 2 and "2 labels for 1 predictions" in capsys.readouterr().err


def test_compare_on_s3(dataset: Path, tmp_path: Path, bucket: str) -> None:
    paths, (true, good, _) = _submissions(dataset, tmp_path)
    data = f"{bucket}/icecube"
    for f in dataset.rglob("*"):
        if f.is_file():
            storage.write_bytes(f"{data}/{f.relative_to(dataset)}", f.read_bytes())
    uris = []
    for p in paths:
        uri = f"{bucket}/preds/{Path(p).parent.name}/{Path(p).name}"
        storage.write_bytes(uri, Path(p).read_bytes())
        uris.append(uri)
    assert main(["-q", "icecube", "compare", data, "--predictions", *uris, "--out", f"{bucket}/cmp"]) == 0
    rep = json.loads(storage.read_bytes(f"{bucket}/cmp/report.json"))
    assert [m["label"] for m in rep["models"]] == ["good", "bad"]  # labels from the folders
    assert rep["models"][0]["mean_angular_error"] == pytest.approx(_kaggle_metric(*true, *good), abs=1e-12)
    assert storage.exists(f"{bucket}/cmp/_SUCCESS.json")
    assert main(["-q", "icecube", "evaluate", data, "--predictions", uris[0], "--out", f"{bucket}/ev"]) == 0
    for out in ("cmp", "ev"):  # a browser shows either page straight from the bucket
        head = storage.s3().info(f"{bucket}/{out}/report.html".split("://", 1)[1], refresh=True)
        assert head["ContentType"].startswith("text/html"), (out, head["ContentType"])


def test_paired_bootstrap_against_a_direct_computation() -> None:
    """Seeded: the paired Poisson bootstrap, merged from blocks in any order, gives the direct mean difference
    and fraction exactly, and 95 % intervals whose half-widths match the analytic standard errors (1.96 σ)
    within 15 % (200 resamples: the percentile interval's own scatter is ≈ 8 %)."""
    from neutrino_ray.icecube.metrics import PairedBootstrap

    rng = np.random.default_rng(5)
    n = 20_000
    common = rng.exponential(0.5, n)  # the event's difficulty, shared by both models: strong pairing
    a = common + rng.normal(0.0, 0.05, n)
    b = common + 0.01 + rng.normal(0.0, 0.05, n)
    d = a - b
    blocks = np.array_split(np.arange(n), 7)
    whole = PairedBootstrap(200, seed=3)
    for k, idx in enumerate(blocks):
        whole.add(k, a[idx], b[idx])
    merged = PairedBootstrap(200, seed=3)
    for k in reversed(range(len(blocks))):  # per-batch accumulators merged in another order
        part = PairedBootstrap(200, seed=3)
        part.add(k, a[blocks[k]], b[blocks[k]])
        merged.merge(part)
    r, m = whole.result(), merged.result()
    assert r.keys() == m.keys()
    for k in r:
        assert np.asarray(r[k]) == pytest.approx(np.asarray(m[k]), rel=1e-12) if k != "bootstrap" else r[k] == m[k]
    assert r["mean_difference"] == pytest.approx(d.mean(), abs=1e-12)
    assert r["fraction_a_better"] == pytest.approx(np.mean(a < b), abs=1e-12)
    lo, hi = r["mean_difference_interval_95"]
    assert lo < d.mean() < hi < 0  # A is better, and the paired interval says so
    assert (hi - lo) / 2 == pytest.approx(1.96 * d.std(ddof=1) / np.sqrt(n), rel=0.15)
    p = np.mean(a < b)
    flo, fhi = r["fraction_a_better_interval_95"]
    assert (fhi - flo) / 2 == pytest.approx(1.96 * np.sqrt(p * (1 - p) / n), rel=0.15)
    # unpaired, each model's mean has a standard error ~10x the paired difference's: pairing is what resolves it
    assert np.sqrt(a.var() / n + b.var() / n) > 5 * d.std() / np.sqrt(n)


def test_compare_reports_paired_differences_and_an_html_page(dataset: Path, tmp_path: Path) -> None:
    paths, (true, good, bad) = _submissions(dataset, tmp_path)
    rep = compare(str(dataset), "test", paths, ["good", "bad"], str(tmp_path / "out"), seed=1)
    (pair,) = rep["paired"]
    from neutrino_ray.icecube.metrics import angular_distance

    eg, eb = angular_distance(*true, *good), angular_distance(*true, *bad)
    assert pair["a"] == "good" and pair["b"] == "bad"
    assert pair["mean_difference"] == pytest.approx(np.mean(eg - eb), abs=1e-12)
    assert pair["fraction_a_better"] == pytest.approx(np.mean(eg < eb), abs=1e-12)
    assert pair["mean_difference_interval_95"][1] < 0
    # one draw of weights per chunk for every model, bin and pair: the pair is exactly a PairedBootstrap of the
    # same seed (one block here), and each model's interval is that draw's resampled means (to the float32
    # round-off of products with other numbers of columns)
    from neutrino_ray.icecube.metrics import PairedBootstrap

    direct = PairedBootstrap(200, seed=1)
    direct.add(0, eg, eb)
    for k, v in direct.result().items():
        assert np.asarray(pair[k]) == pytest.approx(np.asarray(v), rel=1e-6) if k != "bootstrap" else pair[k] == v
    boot = MeanBootstrap(2)
    boot.add(np.random.default_rng([1, 0]), [eg, eb], [("all", True)], {(0, 1): PairedBootstrap(200, seed=1)})
    assert rep["models"][1]["mean_interval_68"] == pytest.approx(boot.interval("all", len(eb), model=1), rel=1e-6)
    page = (tmp_path / "out" / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "Paired comparisons" in page and "Definitions" in page
    assert page.count("data:image/png;base64,") == len([p for p in (tmp_path / "out").iterdir()
                                                        if p.suffix == ".png"])
    assert "http://" not in page and "https://" not in page  # self-contained: nothing fetched
    assert "| good | bad |" in (tmp_path / "out" / "summary.md").read_text()


def _browser() -> str | None:
    import shutil

    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@pytest.mark.slow
@pytest.mark.skipif(_browser() is None, reason="no headless browser installed (Debian: apt-get install chromium)")
@pytest.mark.parametrize("command", ["compare", "evaluate"])
def test_report_html_renders_in_a_headless_browser(dataset: Path, tmp_path: Path, command: str) -> None:
    """The compare (or evaluate) page, opened from disk by headless Chromium: a screenshot with the tables and
    the embedded figures drawn (many distinct colours, most of a tall page not blank)."""
    import subprocess

    import matplotlib.image

    from neutrino_ray.icecube.evaluate import evaluate

    paths, _ = _submissions(dataset, tmp_path)
    if command == "compare":
        compare(str(dataset), "test", paths, ["good", "bad"], str(tmp_path / "out"))
    else:
        evaluate(str(dataset), "test", paths[0], str(tmp_path / "out"))
    shot = tmp_path / "shot.png"
    browser = _browser()
    assert browser is not None
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1280,3000", f"--screenshot={shot}", (tmp_path / "out" / "report.html").as_uri()],
                   check=True, timeout=120, capture_output=True)
    img = matplotlib.image.imread(str(shot))[..., :3]
    assert img.shape[0] >= 3000 * 0.9 and img.shape[1] >= 1280 * 0.9
    colours = len(np.unique((img * 255).astype(np.uint8).reshape(-1, 3), axis=0))
    assert colours > 500, f"only {colours} colours: the figures did not render"
    rows_drawn = np.mean((img < 0.95).any(axis=(1, 2)))
    assert rows_drawn > 0.5, f"only {rows_drawn:.0%} of the page's rows have anything drawn"
