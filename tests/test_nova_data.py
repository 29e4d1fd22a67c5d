"""NOvA HDF5 reader: layout validation, slicing across files, orientation, Ray Data, S3, bad files."""

from __future__ import annotations

import io
import json
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import one_line_error

from neutrino_ray import storage
from neutrino_ray.cli import main
from neutrino_ray.nova import data, targets
from neutrino_ray.nova import format as fmt


def fields(n: int, start: int = 0, interaction: np.ndarray | None = None) -> dict[str, np.ndarray]:
    f = {k: np.arange(start, start + n) % 7 for k in fmt.FIELDS}
    f["evt"] = np.arange(start, start + n)
    f["interaction"] = np.arange(n) % 16 if interaction is None else interaction
    f["nuenergy"] = np.linspace(0.5, 20, n)
    f["lepenergy"] = f["nuenergy"] * 0.4
    return f


def marked_maps(n: int, start: int) -> np.ndarray:
    """Pixel maps whose content encodes the event: view 0 lights cell (event % 80) along plane 3, view 1 lights
    plane (event % 100) along cell 7; pixel value = view + 1."""
    m = np.zeros((n, fmt.VIEWS, fmt.PLANES, fmt.CELLS), np.uint8)
    k = np.arange(n)
    m[k, 0, 3, (start + k) % fmt.CELLS] = 1
    m[k, 1, (start + k) % fmt.PLANES, 7] = 2
    return m


@pytest.fixture
def three_files(tmp_path: Path) -> Path:
    sizes = [1200, 0, 850]
    start = 0
    for i, n in enumerate(sizes, start=1):
        fmt.write_h5(tmp_path / f"neutrino{i}.h5", marked_maps(n, start), fields(n, start))
        start += n
    (tmp_path / "notes.txt").write_text("not data")
    return tmp_path


def test_layout_dtypes_and_shapes(three_files: Path) -> None:
    with h5py.File(three_files / "neutrino1.h5") as h:
        assert h["cvnmap"].shape == (1200, 16000) and h["cvnmap"].dtype == np.uint8
        assert set(h["neutrino"].keys()) == set(fmt.FIELDS)
        for name, dtype in fmt.FIELDS.items():
            assert h["neutrino"][name].shape == (1200, 1), name
            assert h["neutrino"][name].dtype == dtype, name


def test_natural_file_order_and_slices_across_files(tmp_path: Path) -> None:
    for i in (1, 2, 10):
        fmt.write_h5(tmp_path / f"neutrino{i}.h5", marked_maps(5, 0), fields(5))
    assert [Path(u).name for u in data.list_files(str(tmp_path))] == ["neutrino1.h5", "neutrino2.h5", "neutrino10.h5"]


def test_read_slices_orientation_and_keys(three_files: Path) -> None:
    scan = data.scan(str(three_files))
    assert [m.n_events for m in scan.files] == [1200, 0, 850] and scan.n_events == 2050
    slices = data.plan_slices(scan.files, None, 500)
    assert [(s.name, s.start, s.stop) for s in slices] == [
        ("neutrino1.h5", 0, 500), ("neutrino1.h5", 500, 1000), ("neutrino1.h5", 1000, 1200),
        ("neutrino3.h5", 0, 500), ("neutrino3.h5", 500, 850)]
    table = data.read_slice(slices[3])
    assert table.column("file").to_pylist() == ["neutrino3.h5"] * 500
    assert table.column("index").to_pylist() == list(range(500))
    maps = data.images(table)
    event = 1200 + np.arange(500)  # global event numbers encoded in the pixels
    k = np.arange(500)
    assert (maps[k, 0, 3, event % 80] == 1).all() and maps[:, 0].sum() == 500
    assert (maps[k, 1, event % 100, 7] == 2).all() and maps[:, 1].sum() == 1000
    # the fields travel with their rows and keep the layout's dtypes
    assert table.column("evt").to_pylist() == list(event)
    for name, dtype in fmt.FIELDS.items():
        assert table.column(name).type.to_pandas_dtype() == dtype, name


def test_selected_rows_only(three_files: Path) -> None:
    scan = data.scan(str(three_files))
    rows = [np.array([5, 900, 3]), np.array([], np.int64), np.array([849])]
    slices = data.plan_slices(scan.files, rows, 2)
    got = [(t.column("file")[i].as_py(), t.column("index")[i].as_py())
           for t in map(data.read_slice, slices) for i in range(len(t))]
    assert got == [("neutrino1.h5", 3), ("neutrino1.h5", 5), ("neutrino1.h5", 900), ("neutrino3.h5", 849)]


@pytest.mark.integration
def test_ray_dataset_reads_every_event_once(three_files: Path) -> None:
    from neutrino_ray import runtime

    runtime.init_ray()
    scan = data.scan(str(three_files))
    ds = data.dataset(data.plan_slices(scan.files, None, 300), num_cpus=0.25)
    seen = []
    for batch in ds.iter_batches(batch_size=256, batch_format="pyarrow"):
        maps = data.images(batch)
        evt = batch.column("evt").to_numpy().astype(np.int64)
        assert (maps[np.arange(len(batch)), 0, 3, evt % 80] == 1).all()
        seen.append(evt)
    assert np.array_equal(np.sort(np.concatenate(seen)), np.arange(2050))


def test_reads_from_s3(three_files: Path, bucket: str) -> None:
    for p in sorted(three_files.glob("*.h5")):
        storage.write_bytes(f"{bucket}/nova/{p.name}", p.read_bytes())
    scan = data.scan(f"{bucket}/nova")
    assert [m.name for m in scan.files] == ["neutrino1.h5", "neutrino2.h5", "neutrino3.h5"]
    t = data.read_slice(data.plan_slices(scan.files, None, 400)[2])
    assert t.column("index").to_pylist() == list(range(800, 1200))
    assert (data.images(t)[np.arange(400), 0, 3, np.arange(800, 1200) % 80] == 1).all()


def write_bad(path: Path, kind: str) -> None:
    n = 10
    maps, f = marked_maps(n, 0).reshape(n, -1), fields(n)
    if kind == "truncated":
        buf = io.BytesIO()
        fmt.write_h5(buf, maps, f, compression=None)
        path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
        return
    if kind == "not-hdf5":
        path.write_bytes(b"PAR1 this is not an HDF5 file")
        return
    with h5py.File(path, "w") as h:
        if kind != "no-cvnmap":
            h.create_dataset("cvnmap", data=maps[:, :15000] if kind == "wide" else
                             maps.astype(np.float32) if kind == "float-cvnmap" else maps)
        if kind == "no-group":
            return
        g = h.create_group("neutrino")
        for name, dtype in fmt.FIELDS.items():
            if kind == "missing-field" and name == "nuenergy":
                continue
            if kind == "field-not-dataset" and name == "evt":
                g.create_group(name)
                continue
            col = f[name].astype(np.float64 if kind == "float-field" and name == "interaction" else dtype)
            g.create_dataset(name, data=(col[:-1] if kind == "short-field" and name == "evt" else col).reshape(-1, 1))


@pytest.mark.parametrize(("kind", "message"), [
    ("no-cvnmap", "no 'cvnmap' dataset"),
    ("wide", "has shape (10, 15000); expected (N, 16000)"),
    ("float-cvnmap", "'cvnmap' has dtype float32; expected uint8"),
    ("no-group", "no 'neutrino' group with the event fields"),
    ("missing-field", "lacks fields ['nuenergy']"),
    ("field-not-dataset", "'neutrino/evt' is a Group, not a dataset"),
    ("short-field", "'neutrino/evt' has shape (9, 1) but 'cvnmap' has 10 events"),
    ("float-field", "'neutrino/interaction' has dtype float64; expected uint32"),
    ("truncated", "not a readable HDF5 file"),
    ("not-hdf5", "not a readable HDF5 file"),
])
def test_bad_files_named_or_skipped(three_files: Path, kind: str, message: str) -> None:
    bad = three_files / "neutrino4.h5"
    write_bad(bad, kind)
    with pytest.raises(data.DataError) as e:
        data.scan(str(three_files))
    assert str(bad) in str(e.value) and message in str(e.value)
    scan = data.scan(str(three_files), skip_bad=True)
    assert scan.n_events == 2050 and [u for u, _ in scan.skipped] == [str(bad)]


BAD_FILE_MESSAGES = {
    "no-cvnmap": "no 'cvnmap' dataset (has ['neutrino']); not a NOvA pixel-map file",
    "wide": "'cvnmap' has shape (10, 15000); expected (N, 16000) = (N, 2 views x 100 planes x 80 cells)",
    "float-cvnmap": "'cvnmap' has dtype float32; expected uint8",
    "no-group": "no 'neutrino' group with the event fields",
    "missing-field": "'neutrino' lacks fields ['nuenergy']",
    "field-not-dataset": "'neutrino/evt' is a Group, not a dataset",
    "short-field": "'neutrino/evt' has shape (9, 1) but 'cvnmap' has 10 events; expected (10, 1)",
    "float-field": "'neutrino/interaction' has dtype float64; expected uint32",
    "truncated": "not a readable HDF5 file (OSError: Unable to synchronously open file (truncated file: ",
    "not-hdf5": "not a readable HDF5 file (OSError: Unable to synchronously open file (file signature not found))",
}


@pytest.mark.parametrize("kind", BAD_FILE_MESSAGES)
def test_bad_file_through_cli_fails_or_is_skipped_and_counted(tmp_path: Path, kind: str,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI: exit 2 with one line naming the file and the problem, nothing published; with --skip-bad the
    file is left out and counted (report.json's inputs.skipped_files and the manifest's skipped_files).
    Planning fails before Ray starts."""
    fmt.write_h5(tmp_path / "neutrino1.h5", marked_maps(20, 0), fields(20))
    bad = tmp_path / "neutrino2.h5"
    write_bad(bad, kind)
    code = main(["-q", "nova", "train", str(tmp_path), "--target", "energy", "--out", str(tmp_path / "model")])
    err = capsys.readouterr().err
    line = one_line_error(code, err)
    assert line.startswith(f"neutrino-ray: error: {bad}: {BAD_FILE_MESSAGES[kind]}"), line
    assert not (tmp_path / "model").exists()
    # evaluate reads the same files: predictions for the good file only, the bad one skipped and counted
    energy = np.linspace(1, 9, 20)
    preds = pa.table({"file": ["neutrino1.h5"] * 20, "index": np.arange(20), "visible_energy": energy,
                      "predicted": energy}).replace_schema_metadata({b"neutrino_ray.task": b"nova-energy"})
    pq.write_table(preds, tmp_path / "preds.parquet")
    args = ["-q", "nova", "evaluate", str(tmp_path), "--predictions", str(tmp_path / "preds.parquet")]
    assert main([*args, "--out", str(tmp_path / "e")]) == 2 and str(bad) in capsys.readouterr().err
    assert not (tmp_path / "e").exists()
    assert main([*args, "--out", str(tmp_path / "e"), "--skip-bad"]) == 0
    report = json.loads((tmp_path / "e" / "report.json").read_text())
    assert report["inputs"]["skipped_files"] == [str(bad)] and report["n_events"] == 20
    assert json.loads((tmp_path / "e" / "_SUCCESS.json").read_text())["skipped_files"] == [str(bad)]


def test_no_files(tmp_path: Path) -> None:
    with pytest.raises(data.DataError, match="no HDF5 files"):
        data.scan(str(tmp_path))


def test_targets_of_every_task() -> None:
    inter = np.arange(16)
    assert targets.class_labels("numu-cc", inter).tolist() == [1] * 4 + [0] * 12
    assert targets.class_labels("flavour", inter).tolist() == [0] * 4 + [1] * 4 + [-1] * 5 + [2] + [-1] * 2
    assert targets.class_labels("mode", inter).tolist() == [0, 1, 2, 3] * 3 + [-1] * 4
    y, ok = targets.targets("y", {"nuenergy": np.array([2.0, 0.0, np.nan]), "lepenergy": np.array([0.5, 1, 1])})
    assert ok.tolist() == [True, False, False] and y[0] == 0.25
    e, ok = targets.targets("energy", {"nuenergy": np.array([2.0, 0.0]), "lepenergy": np.array([0.5, 0.0])})
    assert ok.tolist() == [True, False] and e[0] == 2.0
