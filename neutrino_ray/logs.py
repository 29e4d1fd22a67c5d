"""The three log levels every command shares, and the filter that keeps Ray's internal chatter out of view.

``neutrino-ray`` sets the level once (:func:`configure`, from ``-v`` / ``-q``):

- **default**: our own log lines and progress lines (INFO), real warnings and errors, from the driver
  and from the workers whose output Ray forwards. Ray's own INFO lines, Ray Data's progress bars, and
  the internal notices in :data:`RAY_NOISE` that a user cannot act on are hidden.
- **-v** (verbose): everything, Ray's INFO lines and Ray Data's progress bars included.
- **-q** (quiet): errors and the command's final summary (printed to stdout) only.

Where the chatter comes from, and so why the filter works on file descriptor 2: Ray's Python loggers
(reconfigured inside ``ray.init``, so a ``logging`` filter attached beforehand is dropped), Ray's C++
components (the driver's core worker logs to fd 2 directly: the ``core_worker.cc`` notices), and worker
output that Ray forwards to the driver (written through ``sys.stderr`` with a ``(name pid=...)`` prefix).
At the default and quiet levels :func:`configure` puts a pipe on fd 2 and a thread that passes on every
line except Ray's INFO-level lines (Python and C++ formats) and the lines matching :data:`RAY_NOISE`;
processes started from here (a local Ray's raylet and workers) inherit the same pipe. A partial line is
passed on after 0.2 s, and at exit the pipe is drained before fd 2 is restored. Python warnings that Ray
raises about its own deprecations are ignored here and, through ``PYTHONWARNINGS``, in local workers.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import select
import sys
import threading
import warnings
from typing import IO

DEFAULT, VERBOSE, QUIET = "default", "verbose", "quiet"
LEVEL_ENV = "NEUTRINO_RAY_LOG_LEVEL"  # the level in force, for child processes and a local Ray's workers
FILTER_ENV = "NEUTRINO_RAY_FILTER_STDERR"  # "0": leave fd 2 alone (the test suite, which captures it itself)

# Ray-internal notices a user cannot act on: hidden at the default and quiet levels (one list; -v shows all).
RAY_NOISE: tuple[str, ...] = (
    r"Failed to query Ray Train Controller actor state",  # Train V2's controller polling the state API
    r"State API may be temporarily unavailable",
    r"core_worker\.cc:\d+: Actor with class name",  # actor constructor arguments in the object store
    r"ExecutionOptions\.exclude_resources",  # a RayDeprecationWarning from Ray Data's own executor
    r"RayDeprecationWarning",
    r"minimum (number of )?actors|min_size.*actor",  # Ray Data's actor-pool sizing UserWarning
    r"Progress bars disabled\. To enable",  # we disable them at the default level on purpose
    r"Token authentication is enabled for this Ray cluster",  # a local Ray's generated token
    r"Generated new authentication token",
    r"Requesting resources: \{",  # Train controller: worker group scheduling
    r"world_rank=\d+, local_rank=\d+",
    r"Started training worker group|Attempting to start training worker group",
    r"Reporting training result \d+: TrainingReport",  # Ray Train's echo of every ray.train.report
    r"Checkpoint successfully created at: Checkpoint\(",  # ... and of every checkpoint it persists
    r"Setting up process group for: env://|Moving model to device: |Wrapping provided model in Distributed",
    r"Dataset \S+ execution finished in",  # Ray Data's per-dataset completion line in a SplitCoordinator
    r"\((PlacementGroupCleaner|SplitCoordinator|StatsActor|AutoscalingRequester|_StatsActor) pid=",
    r"\[repeated \d+x across cluster\]\s*$",  # Ray's de-duplication footers of hidden lines
    r"Ray deduplicates logs by default",
    r"logging\.cc:\d+: Set ray log level",
)
_NOISE = re.compile("|".join(f"(?:{p})" for p in RAY_NOISE))
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# Ray's Python log format ("2026-12-07 02:36:25,859<TAB>INFO file.py:50 -- ...") and glog's
# ("[2026-12-07 02:38:57,628 I 7147 7147] file.cc:303: ..."), INFO and DEBUG levels.
_RAY_INFO = re.compile(r"^(\(\S+( pid=\d+)?(, ip=[\d.]+)?\)\s*)?(\d{4}-\d\d-\d\d [\d:,.]+\t(INFO|DEBUG) \S+:\d+ --"
                       r"|\[\d{4}-\d\d-\d\d [\d:,.]+ [ID] \d+ \d+\])")

_state: dict[str, object] = {}


def level() -> str:
    """The level in force: the one :func:`configure` set (inherited by child processes), else default."""
    v = os.environ.get(LEVEL_ENV, DEFAULT)
    return v if v in (DEFAULT, VERBOSE, QUIET) else DEFAULT


def hidden(line: str) -> bool:
    """Whether a line written to stderr is Ray chatter that the default and quiet levels hide."""
    plain = _ANSI.sub("", line)
    return bool(_RAY_INFO.search(plain) or _NOISE.search(plain))


def terminal() -> IO[str]:
    """The stream for in-place progress lines: the real stderr (a terminal or not), never the filter's pipe."""
    out = _state.get("terminal")
    return out if out is not None else sys.stderr  # type: ignore[return-value]


def configure(verbosity: str = DEFAULT, filter_stderr: bool | None = None) -> None:
    """Set the level for this process and what it starts: our loggers, Ray's, Python warnings, fd 2."""
    if verbosity not in (DEFAULT, VERBOSE, QUIET):
        raise ValueError(f"unknown verbosity {verbosity!r}")
    os.environ[LEVEL_ENV] = verbosity
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    ours = logging.ERROR if verbosity == QUIET else logging.INFO
    logging.getLogger("neutrino_ray").setLevel(ours)
    logging.getLogger("neutrino_ray.progress").setLevel(ours)
    if verbosity != VERBOSE:
        warnings.filterwarnings("ignore", module=r"ray(\.|$)")
        warnings.filterwarnings("ignore", message=_NOISE.pattern)
        extra = "ignore::DeprecationWarning,ignore::FutureWarning"
        current = os.environ.get("PYTHONWARNINGS", "")
        if extra not in current:
            os.environ["PYTHONWARNINGS"] = f"{current},{extra}" if current else extra
        if filter_stderr if filter_stderr is not None else os.environ.get(FILTER_ENV, "1") != "0":
            _filter_fd2()
    quiet_ray()


def quiet_ray() -> None:
    """Ray's Python loggers at the level in force (``ray.init`` resets them: the runtime helper calls again)."""
    if "ray" not in sys.modules:
        return
    ray_level = {DEFAULT: logging.WARNING, VERBOSE: logging.INFO, QUIET: logging.ERROR}[level()]
    for name in ("ray", "ray.data", "ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(ray_level)


def _filter_fd2() -> None:
    """Put the line filter on file descriptor 2 (once per process)."""
    if "thread" in _state:
        return
    try:
        sys.stderr.flush()
        original = os.dup(2)
    except (OSError, ValueError):  # no fd 2 (an embedded interpreter): nothing to filter
        return
    tty = os.isatty(original)
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    out = os.fdopen(original, "w", buffering=1, closefd=False)
    # In-place progress goes straight to the real stderr; isatty() must answer for it, not for the pipe.
    _state["terminal"] = _Terminal(out, tty)
    stop = threading.Event()

    def pump() -> None:
        buf = b""
        quiet = 0.0
        while True:
            ready, _, _ = select.select([read_fd], [], [], 0.2)
            if not ready:
                if buf:  # a partial line (a prompt, a line being written): pass it on
                    _write(original, buf)
                    buf = b""
                quiet += 0.2
                # At exit: Ray forwards worker output with a lag, so wait for 1 s of quiet (at most the join's
                # timeout) before fd 2 goes back to the terminal unfiltered.
                if stop.is_set() and quiet >= 1.0:
                    return
                continue
            quiet = 0.0
            chunk = os.read(read_fd, 1 << 16)
            if not chunk:
                break
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                if not hidden(line.decode("utf-8", "replace")):
                    _write(original, line + b"\n")
        if buf:
            _write(original, buf)

    thread = threading.Thread(target=pump, name="neutrino-ray-stderr-filter", daemon=True)
    thread.start()
    _state["thread"] = thread

    def restore() -> None:
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        stop.set()
        thread.join(timeout=5.0)  # drains what is in the pipe, then stops after 1 s of quiet
        os.dup2(original, 2)

    atexit.register(restore)


def _write(fd: int, data: bytes) -> None:
    try:
        os.write(fd, data)
    except OSError:
        pass


class _Terminal:
    """The real stderr, for in-place progress lines while fd 2 is the filter's pipe."""

    def __init__(self, out: IO[str], tty: bool) -> None:
        self._out, self._tty = out, tty

    def write(self, text: str) -> int:
        return self._out.write(text)

    def flush(self) -> None:
        self._out.flush()

    def isatty(self) -> bool:
        return self._tty


def shutdown_ray() -> None:
    """End this process's Ray while the stderr filter still runs (a command's last step): Ray forwards worker
    output with a lag, and lines that arrive after the filter lets go of fd 2 would reach the user unfiltered.
    Only where the filter is on (a command's own process), never under the test suite's shared Ray."""
    if "thread" not in _state or "ray" not in sys.modules:
        return
    import ray

    if ray.is_initialized():
        ray.shutdown()
