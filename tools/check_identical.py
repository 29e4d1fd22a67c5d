#!/usr/bin/env python3
"""Byte-identical check: do `simulate icecube`, LineFit `icecube predict`, `icecube evaluate` and `icecube stats`
write the same bytes in this checkout as in BASE?

    .venv/bin/python tools/check_identical.py BASE [--events-per-batch N] [--expect-differ simulate] [--keep DIR]

BASE (a commit, branch or tag) is checked out into a temporary git worktree and run with this checkout's Python
environment (``PYTHONPATH`` puts its tree first), so only the code differs. Each command runs in both trees
with fixed seeds, from a working folder of its own, with the same relative paths, so the recorded command lines
agree. Simulated inputs: each tree simulates its own dataset (compared as the ``simulate`` step), then predict,
evaluate and stats of BOTH trees read the dataset BASE simulated, so a change of the simulator that an issue
makes on purpose (``--expect-differ simulate``) does not hide whether the analysis commands changed.

Every file of each output is compared byte for byte, except the ``_SUCCESS.json`` manifests, which are compared
as JSON without their timing and version keys (:data:`VOLATILE`), and the timestamps a few outputs print
(:data:`TIMESTAMPS`: evaluate's ``report.html`` says when it was written), blanked before the comparison;
``_LEASE.json`` is never part of an output.
A step listed with ``--expect-differ`` (an intentional change, to be documented with the commit making it) is
reported but does not fail the check. Exit status: 0 when every other step is identical, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
STEPS = ("simulate", "predict", "evaluate", "stats")
# Manifest keys that measure time or name the code version: they differ between any two runs. predict's
# ``fingerprint`` hashes the code version with its inputs (a part of another version is never reused).
VOLATILE = re.compile(r"(^|_)(seconds|wall_seconds|events_per_second|finished_at|started|code_version|version"
                      r"|fingerprint)$")
# Timestamps inside other outputs, replaced before the byte comparison: (file name, pattern).
TIMESTAMPS = [("report.html", re.compile(rb"written \d{4}-\d\d-\d\d \d\d:\d\d UTC"))]


def _content(path: Path) -> bytes:
    """The file's bytes, with its known timestamps (:data:`TIMESTAMPS`) blanked."""
    data = path.read_bytes()
    for name, pattern in TIMESTAMPS:
        if path.name == name:
            data = pattern.sub(b"written <time>", data)
    return data


def _commands(events_per_batch: int, uncertainty_events: int) -> dict[str, list[str]]:
    """Each step's CLI arguments, relative to a step's working folder (inputs: ``data``)."""
    return {
        "simulate": ["simulate", "icecube", "out", "--events-per-batch", str(events_per_batch),
                     "--train-batches", "2", "--test-batches", "1", "--seed", "29"],
        "predict": ["icecube", "predict", "data", "--split", "test", "--out", "out",
                    "--uncertainty-events", str(uncertainty_events)],
        "evaluate": ["icecube", "evaluate", "data", "--split", "test", "--predictions", "predictions/submission.csv",
                     "--out", "out"],
        "stats": ["icecube", "stats", "data", "--split", "train", "--out", "out"],
    }


RAY_START_FAILED = "timed out during startup"  # a loaded machine: the local Ray did not come up; tried again


def _run(side: str, tree: Path, cwd: Path, args: list[str], timeout: float, attempts: int = 3) -> float:
    """``neutrino-ray ARGS`` with ``tree``'s package first on the path; returns the wall seconds."""
    env = {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{os.environ.get('PYTHONPATH', '')}".rstrip(os.pathsep)}
    env.pop("RAY_ADDRESS", None)  # a local Ray per run, as the tests use
    probe = subprocess.run([sys.executable, "-c", "import neutrino_ray; print(neutrino_ray.__file__)"], env=env,
                           cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()
    if not Path(probe).resolve().is_relative_to(tree.resolve()):
        raise SystemExit(f"{tree}: its neutrino_ray is not the one imported ({probe})")
    for attempt in range(1, attempts + 1):
        for leftover in cwd.glob("out*"):  # a failed attempt publishes nothing, but may leave its lease folder
            shutil.rmtree(leftover, ignore_errors=True)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "neutrino_ray.cli", "-q", *args], env=env, cwd=cwd,
                              capture_output=True, text=True, timeout=timeout)
        if proc.returncode == 0:
            return time.perf_counter() - t0
        if RAY_START_FAILED not in proc.stderr or attempt == attempts:
            break
        print(f"  {side}: Ray did not start (attempt {attempt} of {attempts}); again", flush=True)
    raise SystemExit(f"{side}: neutrino-ray {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")


def _manifest(path: Path) -> Any:
    def strip(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if not VOLATILE.search(k)}
        if isinstance(x, list):
            return [strip(v) for v in x]
        return x
    return strip(json.loads(path.read_text()))


def compare(a: Path, b: Path) -> list[str]:
    """The differences between output folders ``a`` and ``b``, one line each (empty: identical)."""
    def files(root: Path) -> set[str]:
        return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != "_LEASE.json"}
    fa, fb = files(a), files(b)
    diffs = [f"only in {a.parent.name}: {n}" for n in sorted(fa - fb)]
    diffs += [f"only in {b.parent.name}: {n}" for n in sorted(fb - fa)]
    for name in sorted(fa & fb):
        pa_, pb_ = a / name, b / name
        if Path(name).name == "_SUCCESS.json":
            ma, mb = _manifest(pa_), _manifest(pb_)
            if ma != mb:
                keys = sorted(k for k in set(ma) | set(mb) if ma.get(k) != mb.get(k))
                diffs.append(f"{name}: manifests differ in {keys}")
        elif _content(pa_) != _content(pb_):
            diffs.append(f"{name}: bytes differ ({pa_.stat().st_size} against {pb_.stat().st_size} bytes)")
    return diffs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("base", metavar="BASE", help="the commit to compare this checkout with")
    p.add_argument("--events-per-batch", type=int, default=4_000,
                   help="events per simulated batch file (2 train + 1 test batches) (4000)")
    p.add_argument("--uncertainty-events", type=int, default=2_000,
                   help="predict: train events LineFit's uncertainty is fitted on (2000)")
    p.add_argument("--expect-differ", action="append", default=[], choices=STEPS, metavar="STEP",
                   help="a step whose outputs change on purpose: reported, not a failure (repeatable)")
    p.add_argument("--keep", default=None, metavar="DIR",
                   help="work in DIR and keep it (default: a temporary folder, removed at the end)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per command (900)")
    args = p.parse_args(argv)

    sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", f"{args.base}^{{commit}}"],
                         capture_output=True, text=True, check=True).stdout.strip()
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, check=True).stdout.strip()
    work = Path(args.keep).resolve() if args.keep else Path(tempfile.mkdtemp(prefix="check-identical-"))
    work.mkdir(parents=True, exist_ok=True)
    base_tree = work / "base-tree"
    if not base_tree.exists():  # --force: a kept work folder removed by hand leaves its worktree registered
        made = subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--force", "--detach", str(base_tree), sha],
                              capture_output=True, text=True)
        if made.returncode != 0:
            raise SystemExit(f"git worktree add {base_tree} {sha[:9]}: {made.stderr.strip()}")
    trees = {"base": base_tree, "head": REPO}
    print(f"base {sha[:9]} against this checkout ({head}{', with uncommitted changes' if dirty else ''}); "
          f"work in {work}", flush=True)
    commands = _commands(args.events_per_batch, args.uncertainty_events)
    failed = False
    try:
        for step in STEPS:
            for side, tree in trees.items():
                cwd = work / side / step
                if cwd.exists():
                    shutil.rmtree(cwd)
                cwd.mkdir(parents=True)
                if step != "simulate":  # both sides read the dataset the base simulated
                    (cwd / "data").symlink_to(work / "base" / "simulate" / "out")
                if step == "evaluate":  # both sides score the base's predictions
                    (cwd / "predictions").symlink_to(work / "base" / "predict" / "out")
                seconds = _run(side, tree, cwd, commands[step], args.timeout)
                print(f"  {step:<9} {side}: {seconds:6.1f} s", flush=True)
            diffs = compare(work / "base" / step / "out", work / "head" / step / "out")
            if not diffs:
                print(f"{step}: identical", flush=True)
                continue
            expected = step in args.expect_differ
            failed |= not expected
            print(f"{step}: DIFFERS{' (intentional: --expect-differ)' if expected else ''}", flush=True)
            for d in diffs:
                print(f"    {d}", flush=True)
    finally:
        if not args.keep:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(base_tree)],
                           capture_output=True)
            shutil.rmtree(work, ignore_errors=True)
    print("result: " + ("DIFFERENT" if failed else "identical (apart from the steps expected to differ)"
                        if args.expect_differ else "identical"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
