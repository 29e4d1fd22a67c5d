"""docs/analysis.md: every query block runs on small published outputs and gives what numpy gives; the tables
scan from S3 with polars and pyarrow, with predicate pushdown on event_id and batch_id; calibrate reads only
the held-out events' truth."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from kaggle import random_events, write_dataset

from neutrino_ray import storage
from neutrino_ray.icecube.evaluate import EVENTS, ROW_GROUP_EVENTS, evaluate
from neutrino_ray.icecube.predict import predictions_table
from neutrino_ray.icecube.uncertainty import vmf_quantile

pl = pytest.importorskip("polars")
DOC = Path(__file__).resolve().parent.parent / "docs" / "analysis.md"


def _blocks() -> list[str]:
    """The page's query blocks (those that set ``result``)."""
    return [b for b in re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S) if "result =" in b]


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 2-batch test split; two models' predictions (A with κ, B without) evaluated; A's predictions as
    parts (one per batch, as predict --format parquet publishes them)."""
    root = tmp_path_factory.mktemp("analysis")
    rng = np.random.default_rng(8)
    b1 = random_events(rng, 300, first_id=0, counts=rng.integers(1, 200, 300))
    b2 = random_events(rng, 300, first_id=int(b1["event_id"][-1]) + 1, counts=rng.integers(1, 200, 300))
    data = write_dataset(root / "data", {1: b1, 2: b2})
    truth = pq.read_table(data / "test_truth.parquet").sort_by("event_id")
    ids = truth.column("event_id").to_numpy()
    meta = pq.read_table(data / "test_meta.parquet").sort_by("event_id")
    batch = meta.column("batch_id").to_numpy()
    n_pulses = meta.column("last_pulse_index").to_numpy() - meta.column("first_pulse_index").to_numpy() + 1
    out: dict[str, Any] = {"data": data, "ids": ids, "batch": batch, "n_pulses": n_pulses,
                           "true_zenith": truth.column("zenith").to_numpy()}
    for name, noise in (("A", 0.2), ("B", 0.5)):
        az = np.mod(truth.column("azimuth").to_numpy() + rng.normal(0, noise, len(ids)), 2 * np.pi)
        zen = np.clip(truth.column("zenith").to_numpy() + rng.normal(0, noise, len(ids)), 0, np.pi)
        res = pa.table({"event_id": ids, "batch_id": batch, "azimuth": az, "zenith": zen, "n_pulses": n_pulses})
        if name == "A":
            res = res.append_column("kappa", pa.array(np.full(len(ids), 1 / noise ** 2)))
        pred = predictions_table(res, name)
        (root / name).mkdir()
        pq.write_table(pred, root / name / "predictions.parquet")
        if name == "A":
            parts = root / "PRED" / "predictions"
            parts.mkdir(parents=True)
            for k, b in enumerate((1, 2)):
                pq.write_table(pred.filter(pa.compute.equal(pred.column("batch_id"), b)),
                               parts / f"part-{k:05d}.parquet")
        rep = evaluate(str(data), "test", str(root / name / "predictions.parquet"), str(root / f"EVAL_{name}"))
        out[name] = {"report": rep, "pred": pred}
    out.update(EVAL=str(root / "EVAL_A"), EVAL_B=str(root / "EVAL_B"), PRED=str(root / "PRED"))
    return out


def _errors(o: dict[str, Any], name: str) -> np.ndarray:
    return pq.read_table(Path(o[f"EVAL{'' if name == 'A' else '_B'}"]) / EVENTS).column("angular_error").to_numpy()


def test_the_page_has_five_queries() -> None:
    assert len(_blocks()) == 5


def test_evaluate_publishes_per_event_and_per_bin_tables(outputs: dict[str, Any]) -> None:
    ev = pq.read_table(Path(outputs["EVAL"]) / EVENTS)
    assert np.array_equal(ev.column("event_id").to_numpy(), outputs["ids"])  # sorted by event_id
    assert np.array_equal(ev.column("batch_id").to_numpy(), outputs["batch"])
    assert ev.column("angular_error").to_numpy().mean() == pytest.approx(
        outputs["A"]["report"]["mean_angular_error"], abs=1e-12)
    md = pq.read_metadata(Path(outputs["EVAL"]) / EVENTS)
    assert md.row_group(0).num_rows == min(ROW_GROUP_EVENTS, len(ev))
    assert {"kappa", "sigma_68", "pit"} <= set(ev.column_names)
    bins = pq.read_table(Path(outputs["EVAL"]) / "bins.parquet")
    zen = bins.filter(pa.compute.equal(bins.column("breakdown"), "true_zenith"))
    assert zen.column("n_events").to_numpy().sum() == len(ev)
    want = [b["mean_angular_error"] for b in outputs["A"]["report"]["by_true_zenith"]]
    np.testing.assert_allclose(zen.column("mean_angular_error").to_numpy(), want, rtol=1e-12)
    page = (Path(outputs["EVAL"]) / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 3 and "Definitions" in page


def _run(block: str, o: dict[str, Any], **extra: Any) -> Any:
    scope = {"pl": pl, "EVAL": o["EVAL"], "EVAL_B": o["EVAL_B"], "PRED": o["PRED"], **extra}
    exec(block, scope)  # the page's own code
    return scope["result"]


def test_query_1_mean_error_per_batch(outputs: dict[str, Any]) -> None:
    r = _run(_blocks()[0], outputs)
    err, batch = _errors(outputs, "A"), outputs["batch"]
    assert r["batch_id"].to_list() == [1, 2]
    np.testing.assert_allclose(r["mean_angular_error"].to_numpy(), [err[batch == b].mean() for b in (1, 2)],
                               rtol=1e-12)
    assert r["events"].to_list() == [int((batch == 1).sum()), int((batch == 2).sum())]


def test_query_2_worst_events(outputs: dict[str, Any]) -> None:
    r = _run(_blocks()[1], outputs)
    err = _errors(outputs, "A")
    worst = outputs["ids"][np.argsort(-err, kind="stable")[:10]]
    assert set(r["event_id"].to_list()) == set(worst.tolist()) and len(r) == 10
    assert r["angular_error"].to_numpy()[0] == pytest.approx(err.max())


def test_query_3_where_a_beats_b(outputs: dict[str, Any]) -> None:
    r = _run(_blocks()[2], outputs)
    a, b, n = _errors(outputs, "A"), _errors(outputs, "B"), outputs["n_pulses"]
    assert r["events"].sum() == len(a)
    bins = np.digitize(n, [16, 32, 64, 128])
    got = dict(zip(range(len(r)), r["a_better"].to_list()))
    want = [float(np.mean(a[bins == k] < b[bins == k])) for k in np.unique(bins)]
    np.testing.assert_allclose(list(got.values()), want, rtol=1e-12)
    np.testing.assert_allclose(r["mean_difference"].to_numpy(),
                               [float(np.mean(a[bins == k] - b[bins == k])) for k in np.unique(bins)], rtol=1e-9)


def test_query_4_one_event_from_the_parts(outputs: dict[str, Any]) -> None:
    event = int(outputs["ids"][417])
    r = _run(_blocks()[3], outputs, EVENT_ID=event)
    pred = outputs["A"]["pred"]
    assert r["event_id"].to_list() == [event] and r["batch_id"].to_list() == [int(outputs["batch"][417])]
    assert r["azimuth"][0] == pred.column("azimuth")[417].as_py()


def test_query_5_coverage_per_zenith_bin(outputs: dict[str, Any]) -> None:
    r = _run(_blocks()[4], outputs)
    err = _errors(outputs, "A")
    s68 = vmf_quantile(outputs["A"]["pred"].column("kappa").to_numpy(), 0.68)
    zb = np.floor(outputs["true_zenith"] / (np.pi / 6)).astype(int)
    want = [float(np.mean(err[zb == k] <= s68[zb == k])) for k in np.unique(zb)]
    assert r["zenith_bin"].to_list() == np.unique(zb).tolist()
    np.testing.assert_allclose(r["coverage_68"].to_numpy(), want, rtol=1e-12)


def test_tables_scan_from_s3_with_predicate_pushdown(outputs: dict[str, Any], bucket: str) -> None:
    """polars.scan_parquet and pyarrow datasets read the published tables straight from S3 (moto), filtering
    on event_id and batch_id inside the scan: only the matching files' row groups are read."""
    import pyarrow.dataset as pads

    for local, key in ((Path(outputs["EVAL"]) / EVENTS, "eval/events.parquet"),
                       *((p, f"pred/predictions/{p.name}") for p in sorted((Path(outputs["PRED"]) /
                                                                             "predictions").iterdir()))):
        storage.write_bytes(f"{bucket}/{key}", local.read_bytes())
    batch, ids = outputs["batch"], outputs["ids"]
    event = int(ids[450])

    uri = f"{bucket}/pred/predictions/*.parquet"
    lf = pl.scan_parquet(uri, storage_options=storage.polars_storage_options(uri))
    q = lf.filter(pl.col("batch_id") == 2).select("event_id", "azimuth")
    assert q.collect()["event_id"].to_list() == ids[batch == 2].tolist()
    plan = q.explain()
    assert "batch_id" in plan.split("Parquet SCAN")[-1] or "SELECTION" in plan, plan  # the filter is in the scan
    r = lf.filter(pl.col("event_id") == event).collect()
    assert r["event_id"].to_list() == [event] and r["batch_id"].to_list() == [int(batch[450])]
    ev_uri = f"{bucket}/eval/events.parquet"
    mean = (pl.scan_parquet(ev_uri, storage_options=storage.polars_storage_options(ev_uri))
            .filter(pl.col("batch_id") == 1).select(pl.col("angular_error").mean()).collect().item())
    assert mean == pytest.approx(_errors(outputs, "A")[batch == 1].mean(), rel=1e-12)

    fs, path = storage.arrow_filesystem(f"{bucket}/pred/predictions")
    ds = pads.dataset(path, filesystem=fs, format="parquet")
    flt = pads.field("batch_id") == 2
    assert ds.to_table(filter=flt).column("event_id").to_numpy().tolist() == ids[batch == 2].tolist()
    kept = sum(len(f.split_by_row_group(filter=flt)) for f in ds.get_fragments(filter=flt))
    total = sum(f.metadata.num_row_groups for f in ds.get_fragments())
    assert kept == 1 and total == 2  # row-group statistics pruned batch 1's part without reading its data
    flt = pads.field("event_id") == event
    assert ds.to_table(filter=flt).column("batch_id").to_pylist() == [int(batch[450])]
    assert sum(len(f.split_by_row_group(filter=flt)) for f in ds.get_fragments(filter=flt)) == 1


def test_calibration_truth_reads_only_the_held_out_range(tmp_path: Path) -> None:
    """calibrate's truth: the rows of the train meta in the scored ids' range, through row-group pruning."""
    from neutrino_ray.icecube.calibrate import held_out_truth

    rng = np.random.default_rng(2)
    batches = {b: random_events(rng, 200, first_id=10_000 * b, counts=np.full(200, 2)) for b in (1, 2, 3)}
    data = write_dataset(tmp_path / "d", batches, split="train")
    meta = pq.read_table(data / "train_meta.parquet")
    pq.write_table(meta, data / "train_meta.parquet", row_group_size=100)  # 6 row groups
    held = np.sort(meta.column("event_id").to_numpy())[-150:]
    t = held_out_truth(str(data), "train", held)
    assert set(held.tolist()) <= set(t.column("event_id").to_pylist()) and len(t) == 150
    import pyarrow.dataset as pads

    ds = pads.dataset(str(data / "train_meta.parquet"))
    flt = (pads.field("event_id") >= int(held.min())) & (pads.field("event_id") <= int(held.max()))
    assert sum(len(f.split_by_row_group(filter=flt)) for f in ds.get_fragments()) == 2  # of 6 row groups
