"""The log levels (default, -v, -q), the stderr filter for Ray's internal chatter, and progress lines."""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
import textwrap

import pytest

from neutrino_ray import logs, progress

# Lines as Ray 2.60 wrote them in a `make demo` run before this filter (the examples among them).
RAY_CHATTER = [
    "2026-12-07 02:36:25,859\tWARNING authentication_token_setup.py:85 -- Token authentication is enabled for this "
    "Ray cluster. Set RAY_AUTH_MODE=disabled to opt out.",
    "2026-12-07 02:36:25,859\tINFO authentication_token_setup.py:50 -- Generated new authentication token and saved "
    "to /root/.ray/auth_token",
    "2026-12-07 02:37:06,109\tWARNING __init__.py:28 -- Progress bars disabled. To enable, set "
    "`ray.data.DataContext.get_current().enable_progress_bars = True`.",
    "[2026-12-07 02:38:57,628 E 7147 7147] core_worker.cc:2465: Actor with class name: "
    "'MapWorker(MapBatches(DirectionScorer))' and ID: 'cc49' has constructor arguments in the object store and "
    "max_restarts > 0.",
    "\x1b[36m(TrainController pid=10148)\x1b[0m Requesting resources: {'CPU': 0.75} * 2",
    "\x1b[36m(TrainController pid=10148)\x1b[0m - (ip=192.0.2.2, pid=10417) world_rank=0, local_rank=0, node_rank=0",
    "\x1b[36m(PlacementGroupCleaner pid=10333)\x1b[0m Traceback (most recent call last):",
    "\x1b[36m(SplitCoordinator pid=10733)\x1b[0m ✔️  Dataset train_035A_0 execution finished in 46.54 seconds",
    "\x1b[33m(raylet)\x1b[0m [2026-12-07 02:37:07,662 I 9912 9912] logging.cc:303: Set ray log level from "
    "environment variable RAY_BACKEND_LOG_LEVEL to 2",
    "2026-12-07 02:40:00,000\tWARNING train_controller.py:1 -- Failed to query Ray Train Controller actor state. "
    "State API may be temporarily unavailable",
    "/x/ray/data/_internal/execution/interfaces/execution_options.py:1: RayDeprecationWarning: "
    "ExecutionOptions.exclude_resources is deprecated",
    "\x1b[36m(RayTrainWorker pid=21927)\x1b[0m Setting up process group for: env:// [rank=0, world_size=2]",
    "\x1b[36m(RayTrainWorker pid=29102)\x1b[0m Checkpoint successfully created at: Checkpoint(filesystem=local, "
    "path=/tmp/demo1/gnn/train/checkpoint_2026-12-07_12-41-00.666206)",
]
# Lines that must always show: ours, real warnings and errors, from the driver or a worker.
KEPT = [
    "2026-12-07 02:37:08,262 INFO neutrino_ray: predicted 6000 events in 3.4 s",
    "2026-12-07 02:37:08,262 WARNING neutrino_ray: /data/test: 3 batch files have no meta rows",
    "\x1b[36m(RayTrainWorker pid=10417)\x1b[0m [train 02:38:46] train: step 42/400 (10.5 %), loss 2.5288",
    "neutrino-ray: error: /data/test/batch_1.parquet: not a readable Parquet file",
    "[2026-12-07 02:38:57,628 E 7147 7147] raylet_client.cc:1: the raylet died",
    "2026-12-07 02:40:00,000\tWARNING worker.py:1 -- A worker died or was killed while executing a task",
    "(MapWorker(MapBatches(DirectionScorer)) pid=99) OutOfMemoryError: CUDA out of memory",
]


@pytest.mark.parametrize("line", RAY_CHATTER)
def test_ray_chatter_is_hidden(line: str) -> None:
    assert logs.hidden(line), line


@pytest.mark.parametrize("line", KEPT)
def test_real_lines_are_kept(line: str) -> None:
    assert not logs.hidden(line), line


def test_progress_line_has_total_rate_elapsed_and_eta() -> None:
    p = progress.Progress("predict", 1_000_000, stream=io.StringIO(), tty=False, interval=1e9)
    p.started -= 40.0  # 40 s in
    p.done = 400_000
    line = p.line()
    assert re.fullmatch(r"predict: 400,000/1,000,000 events \(40\.0 %\), 10,0\d\d events/s, elapsed 0:40, "
                        r"ETA 1:0\d", line), line
    unknown = progress.Progress("simulate", None, stream=io.StringIO(), tty=False)
    assert "ETA" not in unknown.line() and "elapsed" in unknown.line()


def test_progress_lines_in_a_log_at_the_interval_and_at_the_end(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="neutrino_ray.progress")
    with progress.Progress("stats", 10, interval=0.0, stream=io.StringIO(), tty=False) as p:
        for _ in range(10):
            p.update(1)
    lines = [r.getMessage() for r in caplog.records if r.name == "neutrino_ray.progress"]
    assert len(lines) == 11 and lines[-1].startswith("stats: 10/10 events (100.0 %)") and "ETA 0:00" in lines[-1]
    caplog.clear()
    with progress.Progress("stats", 10, interval=3600.0, stream=io.StringIO(), tty=False) as p:
        p.update(10)
    assert len([r for r in caplog.records if r.name == "neutrino_ray.progress"]) == 1  # the final line only


def test_progress_on_a_terminal_updates_one_line() -> None:
    out = io.StringIO()
    logging.getLogger("neutrino_ray.progress").setLevel(logging.INFO)
    with progress.Progress("simulate nova", 4, interval=0.0, stream=out, tty=True) as p:
        for _ in range(4):
            p.update(1)
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n") and text.count("\r") == 5


def test_progress_ticks_while_nothing_finishes(caplog: pytest.LogCaptureFixture) -> None:
    """A blocking wait still gets a line every interval: a stuck job and a slow one look different."""
    import time

    caplog.set_level(logging.INFO, logger="neutrino_ray.progress")
    with progress.Progress("predict", 100, interval=0.05, stream=io.StringIO(), tty=False, tick=True):
        time.sleep(1.3)
    assert len([r for r in caplog.records if "0/100 events" in r.getMessage()]) >= 1


SCRIPT = textwrap.dedent("""
    import logging, os, subprocess, sys
    from neutrino_ray import logs
    logs.configure(sys.argv[1])
    log = logging.getLogger("neutrino_ray")
    lines = {chatter!r} + {kept!r}
    for line in lines:
        os.write(2, (line + "\\n").encode())  # as Ray's C++ core worker writes: straight to fd 2
    subprocess.run([sys.executable, "-c", "import os; os.write(2, " + repr({chatter!r}[3] + "\\n") + ".encode())"])
    log.info("our own info line")
    logging.getLogger("ray.data").info("a Ray INFO line")
    print("the summary", flush=True)
""")


def run_level(flag: str) -> tuple[str, str]:
    code = SCRIPT.format(chatter=RAY_CHATTER, kept=KEPT)
    env = {**os.environ, logs.FILTER_ENV: "1"}
    r = subprocess.run([sys.executable, "-c", code, flag], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout, r.stderr


def test_default_level_filters_fd2_in_this_process_and_its_children() -> None:
    out, err = run_level(logs.DEFAULT)
    assert out == "the summary\n"
    for line in KEPT:
        assert line in err, line
    for line in RAY_CHATTER:
        assert line not in err, line
    assert "our own info line" in err and "a Ray INFO line" not in err


def test_verbose_shows_everything_and_quiet_only_errors() -> None:
    out, err = run_level(logs.VERBOSE)
    assert all(line in err for line in RAY_CHATTER + KEPT) and "our own info line" in err
    assert err.count(RAY_CHATTER[3]) == 2  # the child's line too
    out, err = run_level(logs.QUIET)
    assert out == "the summary\n" and "our own info line" not in err
    assert not any(line in err for line in RAY_CHATTER)


def test_training_status_line_has_step_total_and_eta() -> None:
    from neutrino_ray.training import TrainingState as TrainProgress
    from neutrino_ray.training import status_line

    p = TrainProgress(epoch=1, step=300, events=76_800, seconds=120.0)
    line = status_line(p, 1_200, None, 1.2345, 5e-4, 640.0)
    assert line == ("train: step 300/1,200 (25.0 %), epoch 1, loss 1.2345, lr 5.00e-04, 640 events/s, 76,800 events, "
                    "elapsed 2:00, ETA 6:00")
    # a time budget that ends the run before the planned steps: the ETA is the budget left
    assert status_line(p, 1_200, 180.0, 1.0, 1e-3, 640.0).endswith("elapsed 2:00, ETA 1:00")
    assert status_line(TrainProgress(), 100, None, float("nan"), 1e-3, 0.0).endswith("ETA ?")
