"""What every subcommand module shares: the environment epilogue, the DATA / --split / --out options, the
actor-pool options and the deprecated-alias action."""

from __future__ import annotations

import argparse
from typing import Any

from neutrino_ray.argtypes import non_negative_float, positive, positive_float

ENV_HELP = """environment:
  RAY_ADDRESS                 connect to this Ray cluster (else start a local Ray)
  AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL   S3 endpoint (MinIO, moto, ...)
  AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION   S3 credentials and region
  NEUTRINO_RAY_S3_RETRIES     attempts per S3 request, with exponential backoff (default 8)
  NEUTRINO_RAY_S3_READ_TIMEOUT  seconds to wait for an S3 response before retrying (default 60)
  NEUTRINO_RAY_PROGRESS_SECONDS  seconds between progress lines when stderr is not a terminal (30)
  NEUTRINO_RAY_LEASE_STALE_MINUTES  an output's lease is taken over once its heartbeat is this old (5)
"""


class Deprecated(argparse.Action):
    """An option's old name, kept for one release: stores under the new name's ``dest`` and records a
    deprecation notice, which :func:`neutrino_ray.cli.main` logs as a warning."""

    def __init__(self, option_strings: list[str], dest: str, new: str, **kwargs: Any):
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, values)
        notices = [*getattr(namespace, "deprecated", []), f"{option_string} is deprecated and will be removed in "
                   f"the next release: use {self.new}"]
        namespace.deprecated = notices


def add_actor_args(p: argparse.ArgumentParser, batch_size: int) -> None:
    """Options of model inference on a Ray Data actor pool."""
    p.add_argument("--batch-size", type=positive, default=batch_size,
                   help=f"events per model forward pass ({batch_size})")
    p.add_argument("--actors", type=positive, default=None,
                   help="model actors (default: the cluster's GPUs / --gpus-per-actor, else CPUs / --cpus-per-actor)")
    p.add_argument("--cpus-per-actor", type=positive_float, default=1.0,
                   help="CPUs (torch threads) per model actor (1)")
    p.add_argument("--gpus-per-actor", type=non_negative_float, default=0.0,
                   help="GPUs per model actor; > 0 scores on GPUs (bf16 autocast where the GPU has it, else fp16) (0)")
    p.add_argument("--resource-wait-minutes", type=non_negative_float, default=15.0,
                   help="GPU actors: wait this long for the autoscaler to bring their GPUs; 0 refuses at once (15)")



OUT_HELP = "output URI (a folder)"
TRAIN_OUT_HELP = "output URI (a folder): checkpoints in OUT/train, model in OUT/model"


def add_io(p: argparse.ArgumentParser, data_help: str, split: str | None = None, split_help: str = "split",
           splits: tuple[str, ...] = ("train", "test"), out_help: str = OUT_HELP) -> None:
    """The positional DATA, ``--split`` (when the command reads one split; ``split`` is its default) and the
    required ``--out`` of a command that reads a dataset and publishes to OUT."""
    p.add_argument("data", metavar="DATA", help=data_help)
    if split is not None:
        p.add_argument("--split", choices=list(splits), default=split, help=f"{split_help} ({split})")
    p.add_argument("--out", required=True, help=out_help)
