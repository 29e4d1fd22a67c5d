"""``neutrino-ray simulate DETECTOR``: the three simulators, writing the real formats."""

from __future__ import annotations

import argparse
from typing import Any

from neutrino_ray.argtypes import non_negative as _non_negative
from neutrino_ray.argtypes import positive as _positive
from neutrino_ray.commands.common import ENV_HELP

# This family's line in `neutrino-ray --help` (the CLI lists it without building the family's parsers).
HELP = "write simulated datasets in the real formats"


def add(sub: Any, fmt: type[argparse.HelpFormatter]) -> None:
    """The ``simulate`` command and its subcommands."""
    sim = sub.add_parser("simulate", help=HELP)
    sim_sub = sim.add_subparsers(dest="detector", required=True, metavar="DETECTOR")
    s = sim_sub.add_parser("icecube", formatter_class=fmt, epilog=ENV_HELP,
                           help="Kaggle 'Neutrinos in Deep Ice' layout",
                           description="Simulate IceCube events into OUT in the exact Kaggle layout "
                                       "(train/ and test/ batch files, meta, truth, geometry).")
    s.add_argument("out", metavar="OUT", help="output dataset URI")
    s.add_argument("--events-per-batch", type=_positive, default=200_000, help="events per batch file (200000)")
    s.add_argument("--train-batches", type=_non_negative, default=1, help="number of train batch files (1)")
    s.add_argument("--test-batches", type=_non_negative, default=1, help="number of test batch files (1)")
    s.add_argument("--seed", type=int, default=1, help="random seed; same seed, same files (1)")

    k = sim_sub.add_parser("km3net", formatter_class=fmt, epilog=ENV_HELP,
                           help="KM3NeT/ORCA per-event reconstruction features (HDF5)",
                           description="Simulate KM3NeT/ORCA-like reconstruction features with truth into "
                                       "OUT/km3net_{i}.h5 (group /events, one dataset per column).")
    k.add_argument("out", metavar="OUT", help="output folder URI")
    k.add_argument("--events", type=_positive, default=200_000, help="number of events (200000)")
    k.add_argument("--files", type=_positive, default=4, help="number of HDF5 files (4)")
    k.add_argument("--seed", type=int, default=1, help="random seed (1)")

    nv = sim_sub.add_parser("nova", formatter_class=fmt, epilog=ENV_HELP,
                            help="NOvA-style dual-view pixel maps (the course HDF5 layout)",
                            description="Simulate NOvA-like events into OUT/neutrino{i}.h5 (i = 1..F): 'cvnmap' "
                                        "(N, 16000) uint8 = (2 views, 100 planes, 80 cells) and the group 'neutrino' "
                                        "with 16 (N, 1) truth fields.")
    nv.add_argument("out", metavar="OUT", help="output folder URI")
    nv.add_argument("--files", type=_positive, default=4, help="number of files (4)")
    nv.add_argument("--events-per-file", type=_positive, default=7_000, help="events per file (7000)")
    nv.add_argument("--seed", type=int, default=1, help="random seed; same seed, same files (1)")
    nv.add_argument("--mix", default=None,
                    help="class mix, e.g. 'numu_cc=0.5,nue_cc=0.25,nc=0.25' (families: numu_cc, nue_cc, nutau_cc, "
                         "nc, nu_on_e, cosmic, other; CC modes: qe, res, dis, other_mode); default: like the real "
                         "files (88%% numu CC, 1%% nue CC, 11%% NC; DIS 55%%, RES 28%%, QE 12%%)")


def run(args: argparse.Namespace, command: list[str]) -> int:
    """Simulate one detector's dataset into OUT."""
    if args.detector == "km3net":
        from neutrino_ray.km3net.simwrite import simulate_dataset as simulate_km3net

        m = simulate_km3net(args.out, args.events, args.files, args.seed, command=command)
        print(f"simulated {m['events']} KM3NeT events into {args.out} ({m['wall_seconds']:.1f} s)")
    elif args.detector == "nova":
        from neutrino_ray.nova.simwrite import simulate_dataset as simulate_nova

        m = simulate_nova(args.out, args.files, args.events_per_file, args.seed, args.mix, command=command)
        print(f"simulated {m['events']} NOvA events in {args.files} files into {args.out} ({m['wall_seconds']:.1f} s)")
    else:
        from neutrino_ray.icecube.simwrite import simulate_dataset

        m = simulate_dataset(args.out, args.events_per_batch, args.train_batches, args.test_batches, args.seed,
                             command=command)
        print(f"simulated {m['events']} events into {args.out} "
              f"({m['wall_seconds']:.1f} s, {m['simulate_events_per_second']:.0f} events/s)")
    return 0
