"""One writer per output (storage.Lease): a second run fails at once naming the holder, or waits (bounded);
a dead holder's lease is taken over and its staging cleaned only after the new run published; a run removes
no other run's staging. On local disk and on S3 (moto, with S3's conditional writes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from neutrino_ray import storage
from neutrino_ray.storage import leases

HOLDER = """
import sys, time
from neutrino_ray import storage
with storage.Output(sys.argv[1]) as out:
    out.write("a.txt", b"holder")
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
    out.commit()
"""


@pytest.fixture(params=["local", "s3"])
def out(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "s3":
        return request.getfixturevalue("bucket") + "/out"
    return str(tmp_path / "out")


def _holder(out: str, seconds: float) -> subprocess.Popen[str]:
    """Another process that holds OUT's lease for ``seconds`` and then publishes a.txt = 'holder'."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, out, str(seconds)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ}, start_new_session=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def _lease(out: str) -> dict:
    """The lease document, in one request (a holder may renew it at any moment)."""
    got = storage.Lease(out).store.read()
    assert got is not None, f"no lease at {out}"
    return json.loads(got[0])


def test_a_second_writer_fails_at_once_naming_the_holder(out: str) -> None:
    proc = _holder(out, 30)
    try:
        held = _lease(out)
        assert held["state"] == "held" and held["pid"] == proc.pid and held["host"]
        t0 = time.monotonic()
        with pytest.raises(storage.LeaseHeld) as e, storage.Output(out) as o:
            o.write("a.txt", b"second")
        assert time.monotonic() - t0 < 5
        msg = str(e.value)
        assert "\n" not in msg and f"pid {proc.pid}" in msg and held["run_id"] in msg and "--wait" in msg
        assert not [p for p in storage.listdir(out) if "_staging-" in p and p.rstrip("/") not in held["staging"]]
    finally:
        proc.kill()
        proc.wait()


def test_a_waiting_writer_publishes_after_the_holder(out: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEUTRINO_RAY_LEASE_POLL_SECONDS", "0.2")
    proc = _holder(out, 2)
    try:
        with storage.Output(out) as o:  # a plain Output joins the lease taken here with a bounded wait
            pass
    except storage.LeaseHeld:
        pass
    else:
        pytest.fail("the second writer got the lease while the first held it")
    with storage.lease(out, wait_minutes=1), storage.Output(out) as o:
        assert proc.wait(timeout=30) == 0  # the holder had finished and published
        assert storage.read_bytes(storage.join(out, "a.txt")) == b"holder"
        o.write("a.txt", b"second")
        o.commit()
    assert storage.read_bytes(storage.join(out, "a.txt")) == b"second"
    assert storage.read_manifest(out)["files"] == ["a.txt"]
    assert not storage.exists(storage.join(out, storage.LEASE))
    assert [p.rsplit("/", 1)[-1] for p in storage.listdir(out)] == [storage.SUCCESS, "a.txt"]


def test_a_bounded_wait_gives_up_naming_the_holder(out: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEUTRINO_RAY_LEASE_POLL_SECONDS", "0.1")
    proc = _holder(out, 30)
    try:
        t0 = time.monotonic()
        with pytest.raises(storage.LeaseHeld, match=r"in use by run \w+ .*waited 0.02 min"), \
                storage.lease(out, wait_minutes=0.02):
            pass
        assert 1.0 < time.monotonic() - t0 < 10
    finally:
        proc.kill()
        proc.wait()


def test_a_sigkilled_holder_is_taken_over_at_once_and_its_staging_cleaned_after_publishing(out: str) -> None:
    proc = _holder(out, 60)
    dead = _lease(out)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert any(s.rstrip("/") in dead["staging"] for s in storage.listdir(out))  # its staging is left behind
    with storage.Output(out) as o:  # same host, pid gone: no waiting
        assert o.lease.taken_over is not None and o.lease.taken_over["run_id"] == dead["run_id"]
        assert o.lease.inherited_staging() == dead["staging"]
        assert storage.exists(dead["staging"][0])  # kept until this run has published
        o.write("a.txt", b"second")
        o.commit()
    assert [p.rsplit("/", 1)[-1] for p in storage.listdir(out)] == [storage.SUCCESS, "a.txt"]
    assert storage.read_bytes(storage.join(out, "a.txt")) == b"second"


def test_a_stale_heartbeat_is_taken_over_and_the_old_holder_cannot_publish(out: str,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    first = storage.Lease(out).acquire()
    first._stop.set()  # a holder that hangs: no more heartbeats
    monkeypatch.setenv("NEUTRINO_RAY_LEASE_STALE_MINUTES", "0.01")  # 0.6 s
    time.sleep(1.0)
    second = storage.Lease(out).acquire()
    try:
        assert second.taken_over is not None and second.taken_over["run_id"] == first.run_id
        with pytest.raises(storage.StorageError, match=f"lease lost to run {second.run_id}"):
            first.check()  # the old holder wakes up: it must not publish
        first.release()  # and leaves the new holder's lease alone
        assert _lease(out)["run_id"] == second.run_id
    finally:
        second.release()
    assert not storage.exists(storage.join(out, storage.LEASE))


def test_one_of_two_simultaneous_writers_wins_and_the_output_is_exactly_its(out: str) -> None:
    """Two runs race for OUT (threads with their own leases, as two processes would): exactly one publishes,
    the other fails naming it; nothing of the loser is left."""
    results: dict[str, object] = {}
    barrier = threading.Barrier(2)

    def run(name: str) -> None:
        lease = storage.Lease(out)
        barrier.wait()
        try:
            lease.acquire()
        except storage.LeaseHeld as e:
            results[name] = e
            return
        try:
            leases._HELD[out] = lease  # what storage.lease() does, per process
            with storage.Output(out) as o:
                for i in range(3):
                    o.write(f"f{i}.txt", name.encode())
                results[name] = o.commit(run=name)
        finally:
            leases._HELD.pop(out, None)
            lease.release()

    threads = [threading.Thread(target=run, args=(n,)) for n in ("A", "B")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    won = [n for n, r in results.items() if isinstance(r, dict)]
    lost = [n for n, r in results.items() if isinstance(r, storage.LeaseHeld)]
    assert len(won) == 1 and len(lost) == 1, results
    assert storage.read_manifest(out)["run"] == won[0]
    for i in range(3):
        assert storage.read_bytes(storage.join(out, f"f{i}.txt")) == won[0].encode()
    assert sorted(p.rsplit("/", 1)[-1] for p in storage.listdir(out)) == [storage.SUCCESS, "f0.txt", "f1.txt",
                                                                        "f2.txt"]


def test_a_run_removes_only_its_own_staging(tmp_path: Path) -> None:
    out = tmp_path / "out"
    other = out / f"{storage.STAGING_PREFIX}someone-else"
    other.mkdir(parents=True)
    (other / "x").write_bytes(b"x")
    with storage.Output(str(out)) as o:
        o.write("a.txt", b"a")
        o.commit()
    assert (other / "x").exists()


def test_a_failed_run_hands_its_resume_staging_to_the_next(tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    parts = storage.join(out, f"{storage.STAGING_PREFIX}parts-x")
    with pytest.raises(RuntimeError), storage.lease(out) as held:
        storage.write_bytes(storage.join(parts, "p.parquet"), b"p")
        held.add_staging(parts)
        raise RuntimeError("failed")
    assert _lease(out)["state"] == "released" and _lease(out)["staging"] == [parts]
    with storage.Output(out) as o:
        assert o.lease.taken_over is None and o.lease.inherited_staging() == [parts]
        o.commit()
    assert not storage.exists(parts) and not storage.exists(storage.join(out, storage.LEASE))


@pytest.mark.integration  # a CLI subprocess
def test_cli_second_run_fails_with_one_line_naming_the_holder(tmp_path: Path) -> None:
    out = str(tmp_path / "sim")
    proc = _holder(out, 60)
    try:
        r = subprocess.run([sys.executable, "-m", "neutrino_ray.cli", "-q", "simulate", "icecube", out,
                            "--events-per-batch", "100", "--train-batches", "1", "--test-batches", "0"],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 2
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and f"pid {proc.pid}" in lines[0] and "in use by run" in lines[0], r.stderr
    finally:
        proc.kill()
        proc.wait()
