"""``neutrino-ray bench DETECTOR``: the throughput benchmarks (IceCube stages and scale, NOvA, one GPU)."""

from __future__ import annotations

import argparse
from typing import Any

from neutrino_ray.argtypes import non_negative as _non_negative
from neutrino_ray.argtypes import positive as _positive
from neutrino_ray.argtypes import positive_float as _positive_float
from neutrino_ray.errors import InputError
from neutrino_ray.settings import PRECISIONS

# This family's line in `neutrino-ray --help` (the CLI lists it without building the family's parsers).
HELP = "throughput benchmarks"


def add(sub: Any, fmt: type[argparse.HelpFormatter]) -> None:
    """The ``bench`` command and its subcommands."""
    from neutrino_ray.icecube.architectures import ARCHITECTURES
    from neutrino_ray.nova.architectures import MODELS as NOVA_MODELS

    b = sub.add_parser("bench", help=HELP)
    b_sub = b.add_subparsers(dest="detector", required=True, metavar="DETECTOR")
    bi = b_sub.add_parser("icecube", formatter_class=fmt,
                          help="events/s for read, featurise, LineFit, the GNNs and transformers, end-to-end predict",
                          description="Generate (or reuse) N test events and time each stage.")
    bi.add_argument("--events", type=_non_negative, default=200_000,
                    help="events for the read/featurise/LineFit stages, 0 to skip them (200000)")
    bi.add_argument("--data", default="bench-data/icecube", help="dataset folder, reused if it matches "
                                                                 "(bench-data/icecube)")
    bi.add_argument("--seed", type=int, default=11, help="random seed for generation (11)")
    bi.add_argument("--gnn", default="small,dynedge,transformer-tiny",
                    help="models to benchmark, comma-separated (" + ", ".join(ARCHITECTURES) + "), or 'none' "
                         "(small,dynedge,transformer-tiny)")
    bi.add_argument("--gnn-events", type=_positive, default=20_000,
                    help="test events for the model stages, in their own dataset DATA-gnn (20000)")
    bi.add_argument("--scale", default=None, metavar="BATCHES",
                    help="instead: the scale benchmark, for each comma-separated number of batch files (e.g. "
                         "10,100,660) a cheap train split (3 pulses per event) planned and scored with LineFit "
                         "in a fresh driver process: plan time, driver and worker peak RSS, events/s")
    bi.add_argument("--scale-events-per-batch", type=_positive, default=200_000,
                    help="events per batch file for --scale (200000, the Kaggle batch size)")
    bi.add_argument("--scale-meta-row-group", type=_positive, default=None, metavar="ROWS",
                    help="for --scale: write the meta in row groups of ROWS rows across batches (e.g. 1048576, "
                         "as pandas or Spark write it) instead of one row group per batch")
    bi.add_argument("--scale-analysis", nargs="?", const="evaluate,compare", default="", metavar="COMMANDS",
                    help="for --scale: also run these comma-separated analysis commands (evaluate, compare) on the "
                         "predictions, each in a fresh driver process (evaluate,compare without a value)")
    bn = b_sub.add_parser("nova", formatter_class=fmt,
                          help="the NOvA simulator's events per CPU-second, and nova predict end to end",
                          description="The simulator's events per CPU-second on one core (median of REPEATS runs), "
                                      "then 'nova predict' of N simulated events (simulated once into DATA, reused) "
                                      "with each model, random weights: events/s end to end, with the load average.")
    bn.add_argument("--events", type=_positive, default=20_000, help="events to score with nova predict (20000)")
    bn.add_argument("--sim-events", type=_positive, default=4_000, help="events per simulator run (4000)")
    bn.add_argument("--repeats", type=_positive, default=3, help="simulator runs; the median is reported (3)")
    bn.add_argument("--data", default="bench-data/nova", help="dataset folder, reused if it matches "
                                                               "(bench-data/nova)")
    bn.add_argument("--models", default="small", help="models to score with, comma-separated (" +
                    ", ".join(NOVA_MODELS) + ") (small)")
    bg = b_sub.add_parser("gpu", formatter_class=fmt,
                          help="one GPU: training (dynedge, transformer-base, NOvA medium) and inference "
                               "(icecube predict --pipeline split with transformer-base, nova predict with medium): "
                               "events/s, peak memory, utilisation",
                          description="The GPU check. Training half: train each model for a fixed number of steps "
                                      "on one CUDA GPU. Inference half: score 200,000 simulated IceCube events "
                                      "through 'icecube predict --pipeline split' (CPU featurise tasks feeding a "
                                      "GPU actor) and 50,000 NOvA events through 'nova predict' (a GPU actor), "
                                      "models with random weights; events/s and the GPU's utilisation (mean, "
                                      "median), into OUT/bench-gpu-inference.json. Data simulated first; nothing "
                                      "downloaded; without CUDA it stops at once (--device cpu: the inference half "
                                      "on CPU actors, for tests).")
    bg.add_argument("--half", choices=("both", "training", "inference"), default="both",
                    help="which half of the check to run (both)")
    bg.add_argument("--out", default="bench-gpu", help="folder for the JSON reports (bench-gpu)")
    bg.add_argument("--steps", type=_positive, default=100, help="training: timed training steps per model (100)")
    bg.add_argument("--warmup", type=_non_negative, default=10, help="training: untimed steps first (10)")
    bg.add_argument("--precision", choices=PRECISIONS, default="auto",
                    help="training: auto: bf16 where the GPU has it, else fp16 with a gradient scaler (auto); "
                         "inference scores with the actors' auto policy")
    bg.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                    help="inference: cpu scores on CPU actors with the same code (the test seam; utilisation "
                         "'unavailable'); only with --half inference (cuda)")
    bg.add_argument("--icecube-events", type=_positive, default=200_000,
                    help="inference: simulated IceCube test events (200000)")
    bg.add_argument("--nova-events", type=_positive, default=50_000, help="inference: simulated NOvA events (50000)")
    bg.add_argument("--icecube-model", choices=list(ARCHITECTURES), default="transformer-base",
                    help="inference: IceCube architecture, random weights (transformer-base)")
    bg.add_argument("--nova-model", choices=list(NOVA_MODELS), default="medium",
                    help="inference: NOvA architecture, random weights (medium)")
    bg.add_argument("--cpus-per-actor", type=_positive_float, default=1.0,
                    help="inference: CPUs each scoring actor holds (1; the rest run IceCube's featurise tasks)")


def run(args: argparse.Namespace, command: list[str]) -> int:
    """Run one benchmark."""
    if args.detector == "gpu":
        from neutrino_ray.gpubench import bench_gpu, bench_gpu_inference

        if args.device == "cpu" and args.half != "inference":
            raise InputError("--device cpu runs only the inference half (the training half needs CUDA): add "
                             "--half inference")
        if args.half in ("both", "training"):
            bench_gpu(args.steps, args.warmup, args.precision, args.out)
        if args.half in ("both", "inference"):
            bench_gpu_inference(args.out, args.device, args.icecube_events, args.nova_events, args.icecube_model,
                                args.nova_model, args.cpus_per_actor)
    elif args.detector == "nova":
        from neutrino_ray.nova.architectures import MODELS as NOVA_MODELS
        from neutrino_ray.nova.bench import bench_nova

        models = [m.strip() for m in args.models.split(",") if m.strip()]
        unknown = sorted(set(models) - set(NOVA_MODELS))
        if unknown or not models:
            raise InputError(f"--models {args.models}: expected some of {', '.join(NOVA_MODELS)}")
        bench_nova(args.events, args.sim_events, args.repeats, args.data, models)
    else:
        from neutrino_ray.icecube.architectures import ARCHITECTURES
        from neutrino_ray.icecube.bench import bench, bench_gnn, bench_scale, scale_analysis_commands

        if args.scale is not None:
            try:
                batches = [int(x) for x in args.scale.split(",") if x.strip()]
            except ValueError as e:
                raise InputError(f"--scale {args.scale}: expected comma-separated batch-file counts") from e
            if not batches or min(batches) < 1:
                raise InputError(f"--scale {args.scale}: expected positive batch-file counts")
            bench_scale(batches, args.data.rstrip("/") + "-scale", args.scale_events_per_batch,
                        args.scale_meta_row_group, scale_analysis_commands(args.scale_analysis))
            return 0
        if args.events:
            bench(args.events, args.data, args.seed)
        sizes = [] if args.gnn == "none" else [s.strip() for s in args.gnn.split(",") if s.strip()]
        unknown = sorted(set(sizes) - set(ARCHITECTURES))
        if unknown:
            raise InputError(f"--gnn: unknown models {unknown}; expected some of {', '.join(ARCHITECTURES)}, or none")
        if sizes:
            bench_gnn(sizes, args.gnn_events, args.data.rstrip("/") + "-gnn")
    return 0

