"""Real KM3NeT offline ROOT files (km3net-testdata) → the canonical feature table."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from conftest import one_line_error

km3io = pytest.importorskip("km3io", reason="km3io is not installed: real KM3NeT offline files cannot be read")
pytest.importorskip("km3net_testdata", reason="km3net-testdata is not installed: no sample offline file")

from neutrino_ray.errors import InputError  # noqa: E402
from neutrino_ray.km3net import features, real  # noqa: E402

FP = km3io.definitions.fitparameters


@pytest.fixture(scope="module")
def table() -> pa.Table:
    return real.read_offline(real.sample_file(), "sample")


@pytest.fixture(scope="module")
def events():
    with km3io.OfflineReader(real.sample_file()) as f:
        yield f.events


def test_sample_counts_and_schema(table: pa.Table) -> None:
    assert table.schema.equals(features.SCHEMA)
    assert len(table) == 30
    is_shower = features.label(table["pdgid"].to_numpy(), table["is_cc"].to_numpy())
    assert (int((~is_shower).sum()), int(is_shower.sum())) == (14, 16)
    checked, skipped = features.validate(table, "x")
    assert len(checked) == 30 and skipped == 0


def test_values_match_km3io(table: pa.Table, events) -> None:
    track = km3io.tools.best_jmuon(events.tracks[0])
    shower = km3io.tools.best_jshower(events.tracks[0])
    row = {k: v[0] for k, v in table.slice(0, 1).to_pydict().items()}
    assert row["event_id"] == events.id[0]
    assert row["gandalf_beta0"] == track.fitinf[FP["JGANDALF_BETA0_RAD"]]
    assert row["gandalf_beta1"] == track.fitinf[FP["JGANDALF_BETA1_RAD"]]
    assert row["gandalf_energy_chi2"] == track.fitinf[FP["JENERGY_CHI2"]]
    assert row["gandalf_npe"] == track.fitinf[FP["JGANDALF_NUMBER_OF_HITS"]]
    assert row["track_energy"] == track.fitinf[FP["JENERGY_ENERGY"]]
    assert row["track_length"] == track.fitinf[FP["JSTART_LENGTH_METRES"]]
    assert row["gandalf_likelihood"] == track.lik and row["shower_likelihood"] == shower.lik
    assert row["shower_energy"] == shower.E and row["track_dir_z"] == track.dir_z
    assert row["track_shower_dt"] == pytest.approx(shower.t - track.t)
    hits = events.hits[0]
    assert row["n_hits"] == int(np.sum(np.asarray(hits.trig) != 0))
    assert row["n_doms"] == len(np.unique(np.asarray(hits.dom_id)[np.asarray(hits.trig) != 0]))
    assert row["pdgid"] == events.mc_tracks.pdgid[0][0] and row["energy"] == events.mc_tracks.E[0][0]


def test_counts_are_consistent(table: pa.Table) -> None:
    t = table.to_pydict()
    cher50, cher100, n_hits = (np.array(t[k]) for k in ("n_hits_cherenkov_50m", "n_hits_cherenkov_100m", "n_hits"))
    assert (cher50 <= cher100).all() and (cher100 <= n_hits).all() and (np.array(t["n_doms"]) <= n_hits).all()
    assert cher100.sum() > 0.5 * n_hits.sum()  # most triggered hits are causally related to the track


def test_missing_shower_fit_is_filled_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="neutrino_ray"):
        table = real.read_offline(real.sample_file(), "sample")
    assert "1 without a JShower fit" in caplog.text
    row = table.filter(pa.compute.equal(table["shower_energy"], 0.0)).to_pydict()  # the event lacking JShower
    assert len(row["event_id"]) == 1 and row["track_shower_distance"] == [0.0] and row["shower_likelihood"] == [0.0]


def test_file_object_reads_the_same(table: pa.Table) -> None:
    with open(real.sample_file(), "rb") as f:
        assert real.read_offline(f, "fileobj").equals(table)


def test_not_root_is_input_error(tmp_path) -> None:
    bad = tmp_path / "notes.root"
    bad.write_text("not a ROOT file\n" * 100)
    with pytest.raises(InputError, match=r"notes\.root: not a readable ROOT file"):
        real.read_offline(str(bad), str(bad))


def test_offline_file_lacking_what_we_need_is_input_error() -> None:
    import km3net_testdata

    no_truth = km3net_testdata.data_path("offline/usr-sample.root")  # JMuon fits, no MC
    with pytest.raises(InputError, match=r"usr-sample\.root: lacks MC truth"):
        real.read_offline(no_truth, no_truth)
    uncalibrated = km3net_testdata.data_path("offline/km3net_offline.root")  # hits without positions
    with pytest.raises(InputError, match=r"km3net_offline\.root: hits have no positions"):
        real.read_offline(uncalibrated, uncalibrated)
    no_fits = km3net_testdata.data_path("offline/multiHead.root")  # MC only, no reconstruction
    with pytest.raises(InputError, match=r"multiHead\.root: lacks fits: no JMuon"):
        real.read_offline(no_fits, no_fits)
    no_shower = km3net_testdata.data_path("offline/mcv6.0.gsg_muon_highE-CC_50-500GeV.km3sim.jterbr00008357."
                                          "jorcarec.aanet.905.root")  # JMuon fits only
    with pytest.raises(InputError, match=r"905\.root: lacks fits: no JShower fit"):
        real.read_offline(no_shower, no_shower)


def test_file_without_truth_reads_features_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Real (non-MC) data: with require_truth=False the keys and features come back, without truth."""
    def no_truth(*args: object) -> None:
        raise InputError("x: lacks MC truth")

    monkeypatch.setattr(real, "_truth", no_truth)
    table = real.read_offline(real.sample_file(), "sample", require_truth=False)
    assert len(table) == 30 and not set(features.TRUTH) & set(table.column_names)
    features.validate(table, "sample", need_truth=False)
    with pytest.raises(InputError, match="lacks MC truth"):
        real.read_offline(real.sample_file(), "sample")


def _broken_sample(path, how: str):
    data = bytearray(Path(real.sample_file()).read_bytes())
    if how == "truncated":
        data = data[: len(data) // 2]
    elif how == "corrupt":  # zeroes over compressed baskets: opens fine, fails when the events are read
        lo = int(len(data) * 0.4)
        data[lo:lo + 4000] = bytes(4000)
    else:
        data = b"not a ROOT file\n" * 100
    path.write_bytes(bytes(data))
    return path


def _test_data(name: str):
    import km3net_testdata

    def make(path):
        path.write_bytes(Path(km3net_testdata.data_path(f"offline/{name}")).read_bytes())
        return path
    return make


ROOT_CASES = {  # case: (make the file, message after "FILE: ")
    "not_root": (lambda p: _broken_sample(p, "text"),
                 "not a readable ROOT file (ValueError: not a ROOT file: first four bytes are b'not ' in file "),
    "truncated": (lambda p: _broken_sample(p, "truncated"),
                  "not a readable ROOT file (OSError: expected Chunk of length 723, received 0 bytes from FSSpecSource "
                  "for file path "),
    "corrupt": (lambda p: _broken_sample(p, "corrupt"),
                "corrupt ROOT file, cannot read its events (Error -3 while decompressing data: incorrect data check)"),
    "without_fits": (_test_data("multiHead.root"),
                     "lacks fits: no JMuon (JGandalf) track fit in any event (both kinds are needed)"),
    "without_truth": (_test_data(real.SAMPLE.removeprefix("offline/")),
                      "missing columns ['pdgid', 'is_cc', 'bjorkeny', 'energy'] (no MC truth: training and evaluation "
                      "need labelled events)"),
}


@pytest.mark.parametrize("case", ROOT_CASES)
def test_bad_root_files_through_cli(tmp_path, case: str, capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Exit 2 and one line naming the file and the problem (uproot's own messages span lines); nothing published."""
    from neutrino_ray.cli import main

    if case == "without_truth":  # real data: the sample read as if it had no MC truth
        def no_truth(*args: object) -> None:
            raise InputError("x: lacks MC truth")

        monkeypatch.setattr(real, "_truth", no_truth)
    make, message = ROOT_CASES[case]
    bad = make(tmp_path / f"{case}.root")
    code = main(["-q", "km3net", "train", str(bad), "--model", "hist-gb", "--out", str(tmp_path / "m")])
    err = capsys.readouterr().err
    line = one_line_error(code, err)
    assert line.startswith(f"neutrino-ray: error: {bad}: {message}"), line
    assert not (tmp_path / "m").exists()
