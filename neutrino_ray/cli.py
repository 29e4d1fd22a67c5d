"""``neutrino-ray``: one command line for every pipeline. Subcommands are thin wrappers.

This module builds the parser from the subcommand modules in :mod:`neutrino_ray.commands` (one per command
family: each has ``add`` and ``run``), holds the options every publishing command shares (``--wait``, the log
level) and turns bad input into a one-line error. Every input and output is a URI (local path, file:// or
s3://). S3 endpoint and credentials come from the standard AWS environment variables. Ray: connects to
``RAY_ADDRESS`` when set, else starts a local Ray.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections.abc import Sequence

from neutrino_ray import logs, storage
from neutrino_ray.argtypes import non_negative_float as _non_negative_float
from neutrino_ray.commands import bench, demo, icecube, km3net, nova, simulate
from neutrino_ray.commands.common import ENV_HELP
from neutrino_ray.errors import InputError

log = logging.getLogger("neutrino_ray")

WAIT_MINUTES = 60.0  # --wait without a value

# The command families, in the order of the help; each module's add() builds its parser, run() runs it.
COMMANDS = {"simulate": simulate, "nova": nova, "icecube": icecube, "km3net": km3net, "demo": demo,
            "bench": bench}


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The CLI: one builder per command family (:data:`COMMANDS`). Given the command line ``argv``, only the
    family it names is built in full; the others are listed by their ``HELP`` line, so that a command runs
    no other family's code (and ``neutrino-ray --help`` still lists them all)."""
    chosen = next((a for a in argv or () if not a.startswith("-")), None)  # None: build every family
    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(
        prog="neutrino-ray", epilog=ENV_HELP, formatter_class=fmt,
        description="Distributed machine learning for neutrino-telescope events on Ray.\n\n"
                    "Every input and output is a URI (local path, file:// or s3://); outputs are published\n"
                    "atomically with a _SUCCESS.json manifest. Connects to RAY_ADDRESS when set, else starts\n"
                    "a local Ray.")
    level = p.add_mutually_exclusive_group()
    level.add_argument("-v", "--verbose", action="store_true",
                       help="also Ray's INFO logs, Ray Data's progress bars and Ray's internal notices")
    level.add_argument("-q", "--quiet", action="store_true",
                       help="errors and the final summary only (no progress lines)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        if chosen not in COMMANDS or chosen == name:  # an unknown name: argparse names the choices
            module.add(sub, fmt)
        else:
            sub.add_parser(name, help=module.HELP)
    _add_wait(p)
    return p


def _add_wait(p: argparse.ArgumentParser) -> None:
    """``--wait [MINUTES]`` on every command that publishes (has an OUT): one writer per output (storage.Lease)."""
    subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        if any(a.dest == "out" for a in p._actions):
            p.add_argument("--wait", type=_non_negative_float, nargs="?", const=WAIT_MINUTES, default=0.0,
                           metavar="MINUTES", help="when another run is writing OUT, wait up to MINUTES for it "
                           f"to finish ({WAIT_MINUTES:g} without a value) instead of failing at once")
        return
    for child in {id(c): c for c in subs[0].choices.values()}.values():
        _add_wait(child)


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Run the parsed command; its manifest records ``neutrino-ray ARGV``."""
    return int(COMMANDS[args.command].run(args, ["neutrino-ray", *argv]))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    logs.configure(logs.QUIET if args.quiet else logs.VERBOSE if args.verbose else logs.DEFAULT)
    for notice in getattr(args, "deprecated", []):
        log.warning("%s", notice)
    try:
        out = getattr(args, "out", None)
        if not out or (args.command == "bench" and args.detector != "gpu"):  # bench gpu's OUT holds its reports
            return run(args, argv)
        with storage.lease(out, getattr(args, "wait", 0.0)):  # one writer per output, before any work
            return run(args, argv)
    except KeyboardInterrupt:
        print("neutrino-ray: interrupted; nothing partial was published", file=sys.stderr)
        return 130
    except Exception as e:
        cause = user_error(e)
        if cause is None:
            raise
        print(f"neutrino-ray: error: {' '.join(str(cause).split())}", file=sys.stderr)  # always one line
        return 2
    finally:
        logs.shutdown_ray()


def user_error(exc: BaseException) -> BaseException | None:
    """The bad-input or storage error behind an exception, unwrapping Ray's task errors."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        # Ray's RayTaskError(InputError) is an InputError too, but its text is the whole remote traceback:
        # take the original exception it carries instead.
        cause = getattr(e, "cause", None)
        if isinstance(cause, InputError | storage.StorageError | FileNotFoundError):
            stack.append(cause)
            continue
        if isinstance(e, InputError | storage.StorageError | FileNotFoundError):
            return e
        # Ray ships a task's exception chain as text: recover our own error's message from it.
        found = re.findall(r"^neutrino_ray\.[\w.]*?(\w+Error): (.+)$",
                           f"{getattr(e, 'traceback_str', '')}\n{e}", flags=re.M)
        if found:
            kind, message = found[-1]
            return (storage.StorageError if kind == "StorageError" else InputError)(message)
        stack += [e.__cause__, e.__context__, cause]
    return None


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
