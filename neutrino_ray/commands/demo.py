"""``neutrino-ray demo``: the README's first command."""

from __future__ import annotations

import argparse
from typing import Any

from neutrino_ray.argtypes import positive as _positive
from neutrino_ray.argtypes import positive_float as _positive_float
from neutrino_ray.icecube.architectures import GNNS

# This family's line in `neutrino-ray --help` (the CLI lists it without building the family's parsers).
HELP = "simulate → LineFit → train a LineFit-seeded GNN → predict with uncertainties → compare"


def add(sub: Any, fmt: type[argparse.HelpFormatter]) -> None:
    """The ``demo`` command (the README's first)."""
    d = sub.add_parser("demo", formatter_class=fmt,
                       help=HELP,
                       description="The main job on embedded defaults: simulate a small dataset, score it with the "
                                   "Kaggle LineFit, train a GNN briefly (Ray Train; by default 'refine', which "
                                   "refines each event's LineFit direction), calibrate its κ, score the test split "
                                   "with per-event uncertainties and compare the two, printing where everything is "
                                   "and whether the model beat LineFit (paired 95 % interval).")
    d.add_argument("--out", default="demo-output", help="output folder or URI (demo-output)")
    d.add_argument("--events", type=_positive, default=30_000, help="events to simulate (30000)")
    d.add_argument("--seed", type=int, default=7, help="random seed (7)")
    d.add_argument("--train-minutes", type=_positive_float,
                   help="the model's training budget in minutes (default: the demo's, 2)")
    d.add_argument("--model", choices=list(GNNS),
                   help="the DynEdge-family model to train: 'refine' (LineFit-seeded, the default) or one trained "
                        "from scratch")
    d.add_argument("--workers", type=_positive, default=2, help="Ray Train workers for the GNN (2)")


def run(args: argparse.Namespace, command: list[str]) -> int:
    """Run the demo."""
    from neutrino_ray.icecube.demo import demo

    chosen = {"train_minutes": args.train_minutes, "model_name": args.model}
    demo(args.out, args.events, args.seed, workers=args.workers, **{k: v for k, v in chosen.items() if v is not None})
    return 0
