"""``neutrino-ray``: one command line for every pipeline. Subcommands are thin wrappers.

Every input and output is a URI (local path, file:// or s3://). S3 endpoint and credentials come
from the standard AWS environment variables. Ray: connects to ``RAY_ADDRESS`` when set, else starts
a local Ray.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

from neutrino_ray import logs, storage
from neutrino_ray.argtypes import non_negative as _non_negative
from neutrino_ray.argtypes import non_negative_float as _non_negative_float
from neutrino_ray.argtypes import positive as _positive
from neutrino_ray.argtypes import positive_float as _positive_float
from neutrino_ray.errors import InputError
from neutrino_ray.settings import PRECISIONS, add_training_args, training_kwargs

log = logging.getLogger("neutrino_ray")

ENV_HELP = """environment:
  RAY_ADDRESS                 connect to this Ray cluster (else start a local Ray)
  AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL   S3 endpoint (MinIO, moto, ...)
  AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION   S3 credentials and region
  NEUTRINO_RAY_S3_RETRIES     attempts per S3 request, with exponential backoff (default 8)
  NEUTRINO_RAY_S3_READ_TIMEOUT  seconds to wait for an S3 response before retrying (default 60)
  NEUTRINO_RAY_PROGRESS_SECONDS  seconds between progress lines when stderr is not a terminal (30)
  NEUTRINO_RAY_LEASE_STALE_MINUTES  an output's lease is taken over once its heartbeat is this old (5)
"""


WAIT_MINUTES = 60.0  # --wait without a value


class _Deprecated(argparse.Action):
    """An option's old name, kept for one release: stores under the new name's ``dest`` and records a
    deprecation notice, which :func:`main` logs as a warning."""

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
    p.add_argument("--batch-size", type=_positive, default=batch_size,
                   help=f"events per model forward pass ({batch_size})")
    p.add_argument("--actors", type=_positive, default=None,
                   help="model actors (default: the cluster's GPUs / --gpus-per-actor, else CPUs / --cpus-per-actor)")
    p.add_argument("--cpus-per-actor", type=_positive_float, default=1.0,
                   help="CPUs (torch threads) per model actor (1)")
    p.add_argument("--gpus-per-actor", type=_non_negative_float, default=0.0,
                   help="GPUs per model actor; > 0 scores on GPUs (bf16 autocast where the GPU has it, else fp16) (0)")
    p.add_argument("--resource-wait-minutes", type=_non_negative_float, default=15.0,
                   help="GPU actors: wait this long for the autoscaler to bring their GPUs; 0 refuses at once (15)")


def build_parser() -> argparse.ArgumentParser:
    """The CLI: one small builder per command below."""
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
    _add_simulate(sub, fmt)
    _add_nova(sub, fmt)
    _add_icecube(sub, fmt)
    _add_km3net(sub, fmt)
    _add_demo(sub, fmt)
    _add_bench(sub, fmt)
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


def _add_simulate(sub: Any, fmt: type[argparse.HelpFormatter]) -> None:
    """The ``simulate`` command and its subcommands."""
    sim = sub.add_parser("simulate", help="write simulated datasets in the real formats")
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


def _add_nova(sub: Any, fmt: type[argparse.HelpFormatter]) -> None:
    """The ``nova`` command and its subcommands."""
    from neutrino_ray.nova.architectures import MODELS as NOVA_MODELS
    from neutrino_ray.nova.targets import TASKS

    nova = sub.add_parser("nova", help="NOvA-style pixel-map CNNs (Ray Train) and analysis")
    nova_sub = nova.add_subparsers(dest="action", required=True, metavar="ACTION")
    nova_data = "NOvA HDF5 data URI: a neutrino{i}.h5 file or a folder/prefix of them"
    nt = nova_sub.add_parser("train", formatter_class=fmt, epilog=ENV_HELP,
                             help="train a dual-view CNN (or the baseline) for one task → OUT/model",
                             description="Data-parallel training (Ray Train) of a model for one task on every file "
                                         "under DATA, streamed through the Ray Data HDF5 reader. The last "
                                         "--val-events in-task events validate. Checkpoints go to OUT/train "
                                         "(re-running with the same OUT resumes); the model to OUT/model.")
    nt.add_argument("data", metavar="DATA", help=nova_data)
    target = nt.add_mutually_exclusive_group(required=True)
    target.add_argument("--target", choices=list(TASKS),
                        help="what to predict: numu-cc (binary), flavour (numu CC / nue CC / NC), mode (QE / RES / "
                             "DIS / other, CC events), energy (neutrino energy), y (E_lepton / E_nu; E_nu = 0 "
                             "skipped)")
    target.add_argument("--task", choices=list(TASKS), dest="target", action=_Deprecated, new="--target",
                        help=argparse.SUPPRESS)  # the old name, for one release
    nt.add_argument("--out", required=True, help="output URI (a folder): checkpoints in OUT/train, model in OUT/model")
    nt.add_argument("--model", choices=list(NOVA_MODELS), default="small",
                    help="'small' dual-view CNN (CPU-friendly), 'medium' CNN, or 'baseline' (a linear model on image "
                         "summary features) (small)")
    nt.add_argument("--balance", choices=["undersample", "weights", "none"], default=None,
                    help="classification: undersample every class to the rarest, or weight the loss by inverse class "
                         "frequency (default: undersample; regressions: none)")
    add_training_args(nt, batch_size=64, lr=2e-3)
    nt.add_argument("--val-events", type=_positive, default=2_000,
                    help="held-out validation set: the last N in-task events in file order (2000)")
    nt.add_argument("--events-per-task", type=_positive, default=500, help="events per Ray Data read task (500)")
    nt.add_argument("--skip-bad", action="store_true", help="skip (and count) unreadable or malformed files")
    np_ = nova_sub.add_parser("predict", formatter_class=fmt, epilog=ENV_HELP,
                              help="score every event → OUT/predictions.parquet",
                              description="Batch inference on a Ray Data actor pool (model loaded once per actor); "
                                          "publishes OUT/predictions.parquet (file, index, run, subrun, cycle, evt, "
                                          "subevt, visible_energy, prob_<class>..., predicted) atomically.")
    np_.add_argument("data", metavar="DATA", help=nova_data)
    np_.add_argument("--model", required=True, help="trained model URI (OUT/model of 'nova train')")
    np_.add_argument("--out", required=True, help="output URI (a folder)")
    add_actor_args(np_, 256)
    np_.add_argument("--events-per-task", type=_positive, default=1_000, help="events per read slice (1000)")
    np_.add_argument("--skip-bad", action="store_true", help="skip (and count) unreadable or malformed files")
    ne = nova_sub.add_parser("evaluate", formatter_class=fmt, epilog=ENV_HELP,
                             help="analysis: report.json, summary.md, plots",
                             description="Join predictions with DATA's truth and publish the analysis: accuracy "
                                         "(natural and balanced), ROC/AUC, accuracy vs threshold, confusion matrix, "
                                         "efficiency vs interaction type, final state and energies; resolution and "
                                         "bias for regressions.")
    ne.add_argument("data", metavar="DATA", help=nova_data + " (the truth)")
    ne.add_argument("--predictions", required=True, help="predictions URI (OUT/predictions.parquet of 'nova predict')")
    ne.add_argument("--out", required=True, help="output URI (a folder)")
    ne.add_argument("--threshold", type=float, default=0.5, help="numu-cc selection cut on prob_numu-CC (0.5)")
    ne.add_argument("--skip-bad", action="store_true", help="skip bad files (as predict did)")


def _add_icecube(sub: Any, fmt: type[argparse.HelpFormatter]) -> None:
    """The ``icecube`` command and its subcommands."""
    from neutrino_ray.icecube.predict import DEFAULT_BATCH_SIZE
    from neutrino_ray.icecube.stats import DEFAULT_EVENTS_PER_TASK as STATS_EVENTS_PER_TASK

    ic = sub.add_parser("icecube", help="IceCube reconstruction pipelines")
    ic_sub = ic.add_subparsers(dest="action", required=True, metavar="ACTION")
    _add_icecube_train(ic_sub, fmt)
    _add_icecube_predict(ic_sub, fmt)
    ca = ic_sub.add_parser("calibrate", formatter_class=fmt, epilog=ENV_HELP,
                           help="fit a monotone recalibration of a model's (or an ensemble's) κ on held-out events",
                           description="Score held-out events with a trained model (for --split train: the "
                                       "model's own validation slice), fit κ → κ' so that the vMF containment "
                                       "radii cover 50/68/90 %% of the true errors, and republish the model "
                                       "with calibration.json, which 'icecube predict' then applies. With several "
                                       "--model, calibrate their ensemble's combined κ and publish an ensemble "
                                       "artefact at --out.")
    ca.add_argument("data", metavar="DATA", help="Kaggle-layout dataset URI (with truth for the split)")
    ca.add_argument("--model", required=True, action="append", metavar="MODEL",
                    help="the trained model's URI (OUT/model of 'icecube train'); repeat it to calibrate an "
                         "ensemble as a whole, published as an ensemble artefact at --out")
    ca.add_argument("--weights", type=_positive_float, nargs="+", default=None,
                    help="ensemble: one weight per --model, in order (equal)")
    ca.add_argument("--kappa-weighted", action="store_true",
                    help="ensemble: weight each member's direction by its κ too")
    ca.add_argument("--out", default=None,
                    help="ensemble: the ensemble artefact's URI (ensemble.json + calibration.json), for "
                         "'icecube predict --model OUT'")
    ca.add_argument("--split", choices=["train", "test"], default="train",
                    help="held-out events: train (the model's validation slice) or a test split with truth (train)")
    ca.add_argument("--events", type=_positive, default=None,
                    help="calibrate on the last N events of the split (default: the model's validation slice "
                         "for train, every event for test)")
    ca.add_argument("--max-pulses", type=_positive, default=None, help="transformers: the inference pulse cap")
    add_actor_args(ca, DEFAULT_BATCH_SIZE)

    ev = ic_sub.add_parser("evaluate", formatter_class=fmt, epilog=ENV_HELP,
                           help="score predictions: report.json + plots",
                           description="Compare predictions with the split's truth (train meta, or "
                                       "test_truth.parquet) and publish report.json and PNG plots to OUT.")
    ev.add_argument("data", metavar="DATA", help="Kaggle-layout dataset URI")
    ev.add_argument("--split", choices=["train", "test"], default="test", help="split (test)")
    ev.add_argument("--predictions", required=True,
                    help="submission URI: CSV or Parquet, or the OUT/predictions/ folder of --format parquet")
    ev.add_argument("--out", required=True, help="output URI (a folder)")

    cm = ic_sub.add_parser("compare", formatter_class=fmt, epilog=ENV_HELP,
                           help="several reconstructions side by side: report.json, summary.md, overlaid plots",
                           description="Score each predictions file (submission.csv or predictions.parquet) "
                                       "against the split's truth with the competition formula, with bootstrap "
                                       "68 %% intervals, breakdowns by energy, pulse count, true zenith and "
                                       "topology, coverage of the uncertainties where given; publish "
                                       "report.json, summary.md and PNG plots to OUT.")
    cm.add_argument("data", metavar="DATA", help="Kaggle-layout dataset URI (with truth for the split)")
    cm.add_argument("--split", choices=["train", "test"], default="test", help="split (test)")
    cm.add_argument("--predictions", nargs="+", required=True, metavar="URI",
                    help="predictions files, one per model (local or S3)")
    cm.add_argument("--labels", nargs="+", default=None, metavar="LABEL",
                    help="a label per predictions file (default: the name of the folder holding it)")
    cm.add_argument("--out", required=True, help="output URI (a folder)")

    stt = ic_sub.add_parser("stats", formatter_class=fmt, epilog=ENV_HELP,
                            help="dataset profile: stats.json, summary.md + plots, beside the real data's figures",
                            description="Profile a split of a Kaggle-layout dataset (real or simulated): pulses per "
                                        "event, auxiliary fraction by event size, charge, pulse and first-pulse "
                                        "times, event spans, sensors hit and, with truth, zenith and the LineFit "
                                        "scores, side by side with the published figures of the real Kaggle data. "
                                        "Plans per batch file: one Ray task per batch file reads only its own meta, "
                                        "truth and pulses; the partial profiles are merged exactly. Publishes "
                                        "OUT/stats.json, OUT/summary.md and PNG histograms, and prints the table.")
    stt.add_argument("data", metavar="DATA", help="Kaggle-layout dataset URI")
    stt.add_argument("--split", choices=["train", "test"], default="train", help="split to profile (train)")
    stt.add_argument("--out", required=True, help="output URI (a folder)")
    stt.add_argument("--events-per-task", type=_positive, default=STATS_EVENTS_PER_TASK,
                     help=f"events read at once inside a batch file's task, cut at row groups "
                          f"({STATS_EVENTS_PER_TASK})")
    stt.add_argument("--no-linefit", action="store_true",
                     help="skip the LineFit scores (the pulse profile and truth figures only)")
    bd = ic_sub.add_parser("bound", formatter_class=fmt, epilog=ENV_HELP,
                           help="information bound: max-likelihood directions under the simulator's own model",
                           description="NOT a production reconstruction: an upper bound on the directional "
                                       "information the simulated pulses hold. Each event is fitted by maximum "
                                       "likelihood under the simulator's own generative model, seeded with its TRUE "
                                       "vertex, energy, interaction and topology and free in direction (coarse "
                                       "sphere grid, then local refinement); refuses data without the simulation's "
                                       "full truth. Publishes OUT/submission.csv, OUT/predictions.parquet (model "
                                       "'bound', null kappa) and OUT/bound_report.json (per pulse-count bin, per "
                                       "topology above 10 TeV, and the chi-square(2 dof) calibration check).")
    bd.add_argument("data", metavar="DATA", help="simulated Kaggle-layout dataset URI (with test_truth.parquet)")
    bd.add_argument("--split", choices=["test"], default="test", help="split (test: the one with full truth)")
    bd.add_argument("--out", required=True, help="output URI (a folder)")
    bd.add_argument("--events-per-task", type=_positive, default=200,
                    help="events per Ray task (one read block each) (200)")
    bd.add_argument("--events", type=_positive, default=None,
                    help="fit only the split's last N events in file order (all)")


def _add_icecube_train(ic_sub: Any, fmt: type[argparse.HelpFormatter]) -> None:
    """``icecube train``: the Ray Train scaffold's flags plus the model's."""
    from neutrino_ray.icecube.architectures import (
        ARCHITECTURES,
        TRANSFORMER_INFERENCE_MAX_PULSES,
        TRANSFORMER_MAX_PULSES,
    )
    from neutrino_ray.icecube.features import DEFAULT_MAX_PULSES

    tr = ic_sub.add_parser("train", formatter_class=fmt, epilog=ENV_HELP,
                           help="train a DynEdge-class direction GNN with Ray Train → OUT/model",
                           description="Data-parallel training (Ray Train, DDP: gloo on CPUs, NCCL + bf16 on GPUs) of "
                                       "a direction GNN on DATA's train split, streamed through Ray Data. Checkpoints "
                                       "go to OUT/train (re-running with the same OUT resumes); the final model is "
                                       "published to OUT/model (model.pt, config.json, metrics.json, "
                                       "learning_curve.png) for 'icecube predict --model OUT/model'.")
    tr.add_argument("data", metavar="DATA", help="Kaggle-layout dataset URI (its train split and meta are used)")
    tr.add_argument("--out", required=True, help="output URI (a folder): checkpoints in OUT/train, model in OUT/model")
    tr.add_argument("--model", choices=list(ARCHITECTURES), default="small",
                    help="architecture: the DynEdge-class GNNs 'small' (~0.1M parameters, CPU-friendly) and "
                         "'dynedge' (GraphNeT's competition benchmark shape, 1.35M parameters), or the "
                         "IceMix-class transformers 'transformer-tiny' (0.23M, CPU-friendly), "
                         "'transformer-small' (7.0M) and 'transformer-base' (GraphNeT's DeepIce default "
                         "shape, 30.4M) (small)")
    add_training_args(tr, batch_size=128, lr=1e-3)
    tr.add_argument("--loss", choices=["vmf", "vmf+angle"], default="vmf",
                    help="von Mises-Fisher negative log-likelihood, optionally plus the angular distance (vmf)")
    tr.add_argument("--max-pulses", type=_positive, default=None,
                    help="training pulse cap per event, stored with the model; the aux = False pulses are kept "
                         f"first, then the earliest ({TRANSFORMER_MAX_PULSES} for a transformer, "
                         f"{DEFAULT_MAX_PULSES} for DynEdge, whose predict uses the same cap)")
    tr.add_argument("--inference-max-pulses", type=_positive, default=None,
                    help="transformers only: the pulse cap 'predict' uses by default, stored with the model "
                         f"({TRANSFORMER_INFERENCE_MAX_PULSES}, as IceMix)")
    tr.add_argument("--val-events", type=_positive, default=5_000,
                    help="held-out validation slice: the last N events of the train split (5000)")
    tr.add_argument("--val-batches", type=_positive, default=None,
                    help="held-out validation slice: the last N batch files of the train split instead "
                         "(e.g. 1 for the real split's batch 660)")


def _add_icecube_predict(ic_sub: Any, fmt: type[argparse.HelpFormatter]) -> None:
    """``icecube predict``: what to score with, the output, the actor pool."""
    from neutrino_ray.icecube.linefit import KAGGLE_CHARGE_CAP
    from neutrino_ray.icecube.predict import DEFAULT_BATCH_SIZE, DEFAULT_EVENTS_PER_TASK, GNN_EVENTS_PER_TASK, PIPELINES

    pr = ic_sub.add_parser("predict", formatter_class=fmt, epilog=ENV_HELP,
                           help="batch inference → OUT/submission.csv",
                           description="Score every event of a split with Ray Data (LineFit in read tasks, or a "
                                       "trained model on an actor pool) and publish OUT/submission.csv "
                                       "(event_id,azimuth,zenith) or OUT/predictions/ and OUT/_SUCCESS.json. A "
                                       "killed run re-run with the same command reuses the parts it finished.")
    pr.add_argument("data", metavar="DATA", help="Kaggle-layout dataset URI")
    pr.add_argument("--split", choices=["train", "test"], default="test", help="split to score (test)")
    pr.add_argument("--model", action="append", default=None, metavar="MODEL",
                    help="'linefit' (default: the Kaggle public baseline, a least-squares line through the "
                         "auxiliary = False pulses, all pulses when fewer than 2), 'linefit-all' (every pulse), "
                         "'linefit-clean' (linefit after improved LineFit's scattered-light cleaning), or a "
                         "trained model's URI (OUT/model of 'icecube train'); repeat it with several trained "
                         "models to score their ensemble (weighted mean of the unit directions)")
    pr.add_argument("--weights", type=_positive_float, nargs="+", default=None,
                    help="ensemble: one weight per --model, in order (equal)")
    pr.add_argument("--kappa-weighted", action="store_true",
                    help="ensemble: weight each member's direction by its predicted vMF concentration κ too")
    pr.add_argument("--uncertainty-events", type=_non_negative, default=20_000,
                    help="LineFit: fit its empirical uncertainty (vMF κ per pulse count) on the last N events of "
                         "DATA's train split, written to OUT/linefit_uncertainty.json; 0: none, kappa and "
                         "sigma_* null (20000)")
    pr.add_argument("--out", required=True, help="output URI (a folder)")
    pr.add_argument("--format", choices=["csv", "parquet"], default=None,
                    help="csv: OUT/submission.csv (Kaggle format, sorted) and OUT/predictions.parquet; parquet: "
                         "OUT/predictions/part-NNNNN.parquet in event-id order, listed in OUT/_SUCCESS.json "
                         "(csv for --split test, parquet for train)")
    pr.add_argument("--max-pulses", type=_positive, default=None,
                    help=f"LineFit: fit at most this many of the selected pulses, highest charge first "
                         f"({KAGGLE_CHARGE_CAP}, as the Kaggle notebook); a transformer: its inference pulse cap "
                         "(default: the one stored with it, 768 unless trained otherwise); a DynEdge model "
                         "always uses the pulse cap it was trained with")
    pr.add_argument("--events-per-task", type=_positive, default=None,
                    help=f"events per Ray Data read task, cut at row groups ({DEFAULT_EVENTS_PER_TASK} for "
                         f"LineFit, {GNN_EVENTS_PER_TASK} for a model)")
    add_actor_args(pr, DEFAULT_BATCH_SIZE)
    pr.add_argument("--pipeline", choices=PIPELINES, default="auto",
                    help="trained models: 'split' reads and featurises in Ray Data CPU tasks and sends only packed, "
                         "featurised batches to the model actors (a GPU never waits on decoding); 'fused' has each "
                         "actor read, featurise and score its own tasks (faster on CPUs); auto: split when the "
                         "actors hold GPUs, else fused (auto)")
    pr.add_argument("--featurise-tasks", type=_positive, default=None,
                    help="split pipeline: concurrent read + featurise tasks (default: the CPUs the actors leave; "
                         "'bench icecube --gnn' prints events/s per CPU, so R events/s on a GPU needs about "
                         "R / that many)")


def _add_km3net(sub: Any, fmt: type[argparse.HelpFormatter]) -> None:
    """The ``km3net`` command and its subcommands."""
    km = sub.add_parser("km3net", help="KM3NeT track/shower classification (scikit-learn on Ray)")
    km_sub = km.add_subparsers(dest="action", required=True, metavar="ACTION")
    data_help = "feature data URI: a .h5/.parquet/.root file or a folder/prefix of them"
    kt = km_sub.add_parser("train", formatter_class=fmt, epilog=ENV_HELP, help="tune, refit and save a classifier",
                           description="Cross-validated hyperparameter search (each trial a Ray task), refit of the "
                                       "best pipeline, analysis of a held-out split, and the model saved to OUT "
                                       "(model.pkl, metadata.json, cv_results.json, analysis/).")
    kt.add_argument("data", metavar="DATA", help=data_help)
    kt.add_argument("--model", required=True, choices=["linear-svc", "svc", "random-forest", "hist-gb"],
                    help="classifier")
    kt.add_argument("--out", required=True, help="model output URI (a folder)")
    kt.add_argument("--workers", type=_positive, default=2, help="Ray tasks running trials at once (2)")
    kt.add_argument("--search", choices=["grid", "random"], default="grid",
                    help="grid: the model's small grid; random: --n-iter draws from a wider space (grid)")
    kt.add_argument("--n-iter", type=_positive, default=8, help="candidates for --search random (8)")
    kt.add_argument("--cv", type=_positive, default=3, help="cross-validation folds (3)")
    kt.add_argument("--balance", choices=["undersample", "weights", "none"], default="undersample",
                    help="equalise (particle type, is_cc) groups in training: undersample or sample weights")
    kt.add_argument("--test-fraction", type=float, default=0.25, help="held-out fraction, never tuned on (0.25)")
    kt.add_argument("--max-train-events", type=_non_negative, default=20_000,
                    help="cap on training events after balancing, 0 = no cap (20000; kernel SVMs scale as n^2)")
    kt.add_argument("--seed", type=int, default=42, help="seed for split, balancing, folds and models (42)")
    kt.add_argument("--skip-bad", action="store_true", help="drop (and count) events with non-finite features")
    kp = km_sub.add_parser("predict", formatter_class=fmt, epilog=ENV_HELP, help="score events → Parquet",
                           description="Per-event P(shower) and class for every event under DATA, written "
                                       "atomically to OUT/predictions.parquet.")
    kp.add_argument("data", metavar="DATA", help=data_help)
    kp.add_argument("--model", required=True, help="trained model URI (the OUT of km3net train)")
    kp.add_argument("--out", required=True, help="output URI (a folder)")
    kp.add_argument("--skip-bad", action="store_true", help="drop (and count) events with non-finite features")
    ke = km_sub.add_parser("evaluate", formatter_class=fmt, epilog=ENV_HELP, help="analysis plots + report.json",
                           description="Accuracy, ROC/AUC, confusion matrix, efficiency vs energy, feature "
                                       "importance, track-start density and likelihood plots on labelled DATA.")
    ke.add_argument("data", metavar="DATA", help=data_help)
    ke.add_argument("--model", required=True, help="trained model URI")
    ke.add_argument("--out", required=True, help="output URI (a folder)")
    ke.add_argument("--energy-cut", type=float, default=None, help="GeV: likelihood plots only above this true energy")
    ke.add_argument("--skip-bad", action="store_true", help="drop (and count) events with non-finite features")


def _add_demo(sub: Any, fmt: type[argparse.HelpFormatter]) -> None:
    """The ``demo`` command (the README's first)."""
    from neutrino_ray.icecube.architectures import GNNS
    d = sub.add_parser("demo", formatter_class=fmt,
                       help="simulate → LineFit → train a LineFit-seeded GNN → predict with uncertainties → compare",
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


def _add_bench(sub: Any, fmt: type[argparse.HelpFormatter]) -> None:
    """The ``bench`` command and its subcommands."""
    from neutrino_ray.icecube.architectures import ARCHITECTURES
    from neutrino_ray.nova.architectures import MODELS as NOVA_MODELS

    b = sub.add_parser("bench", help="throughput benchmarks")
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


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    command = ["neutrino-ray", *argv]
    if args.command == "simulate" and args.detector == "km3net":
        from neutrino_ray.km3net.simwrite import simulate_dataset as simulate_km3net

        m = simulate_km3net(args.out, args.events, args.files, args.seed, command=command)
        print(f"simulated {m['events']} KM3NeT events into {args.out} ({m['wall_seconds']:.1f} s)")
    elif args.command == "simulate" and args.detector == "nova":
        from neutrino_ray.nova.simwrite import simulate_dataset as simulate_nova

        m = simulate_nova(args.out, args.files, args.events_per_file, args.seed, args.mix, command=command)
        print(f"simulated {m['events']} NOvA events in {args.files} files into {args.out} ({m['wall_seconds']:.1f} s)")
    elif args.command == "km3net":
        return run_km3net(args, command)
    elif args.command == "nova":
        return run_nova(args, command)
    elif args.command == "simulate":
        from neutrino_ray.icecube.simwrite import simulate_dataset

        m = simulate_dataset(args.out, args.events_per_batch, args.train_batches, args.test_batches, args.seed,
                             command=command)
        print(f"simulated {m['events']} events into {args.out} "
              f"({m['wall_seconds']:.1f} s, {m['simulate_events_per_second']:.0f} events/s)")
    elif args.command == "icecube" and args.action == "train":
        from neutrino_ray.icecube.train import train

        res = train(args.data, args.out, args.model, loss=args.loss, max_pulses=args.max_pulses,
                    inference_max_pulses=args.inference_max_pulses, val_events=args.val_events,
                    val_batches=args.val_batches, command=command,
                    **training_kwargs(args))
        t = res.config["training"]
        print(f"trained {args.model} ({res.config['n_parameters']:,} parameters) on {t['events']} events in "
              f"{t['minutes']:.1f} min ({t['events_per_second']} events/s); validation mean angular error "
              f"{t['final_validation'].get('val_mean_angular_error', float('nan')):.4f} rad "
              f"→ {storage.join(args.out, 'model')}")
    elif args.command == "icecube" and args.action == "predict":
        from neutrino_ray.icecube.predict import PREDICTIONS_DIR, SUBMISSION, Scoring, predict

        models = tuple(args.model or ["linefit"])
        scoring = Scoring(models[0] if len(models) == 1 else models, args.max_pulses, args.events_per_task,
                          args.batch_size, args.actors, args.cpus_per_actor, args.gpus_per_actor,
                          weights=None if args.weights is None else tuple(args.weights),
                          kappa_weighted=args.kappa_weighted, uncertainty_events=args.uncertainty_events,
                          resource_wait_minutes=args.resource_wait_minutes, pipeline=args.pipeline,
                          featurise_tasks=args.featurise_tasks)
        m = predict(args.data, args.split, args.out, scoring, command=command, fmt=args.format)
        resumed = f"; {m['parts_reused']} of {m['parts']} parts reused from a killed run" if m["parts_reused"] else ""
        print(f"predicted {m['events']} events in {m['wall_seconds']:.1f} s "
              f"({m['events_per_second']:.0f} events/s end to end{resumed}) → "
              f"{storage.join(args.out, SUBMISSION if m['format'] == 'csv' else PREDICTIONS_DIR + '/')}")
    elif args.command == "icecube" and args.action == "calibrate":
        from neutrino_ray.icecube.calibrate import calibrate
        from neutrino_ray.icecube.predict import Scoring

        models = tuple(args.model)
        model = models[0] if len(models) == 1 else models
        cal = calibrate(args.data, model, args.split, args.events,
                        Scoring(model, args.max_pulses, None, args.batch_size, args.actors, args.cpus_per_actor,
                                args.gpus_per_actor, weights=None if args.weights is None else tuple(args.weights),
                                kappa_weighted=args.kappa_weighted, resource_wait_minutes=args.resource_wait_minutes),
                        command=command, out=args.out)
        before, after = cal["coverage_before"], cal["coverage_after"]
        print(f"calibrated on {cal['events']} held-out events: coverage at 50/68/90 % "
              f"{before['50']:.3f}/{before['68']:.3f}/{before['90']:.3f} → {after['50']:.3f}/{after['68']:.3f}/"
              f"{after['90']:.3f}; stored in {cal['stored_in']}")
    elif args.command == "icecube" and args.action == "compare":
        from neutrino_ray.icecube.compare import SUMMARY, compare

        rep = compare(args.data, args.split, args.predictions, args.labels, args.out, command=command)
        for m in rep["models"]:
            print(f"{m['label']:<24} mean angular error {m['mean_angular_error']:.4f} rad "
                  f"[{m['mean_interval_68'][0]:.4f}, {m['mean_interval_68'][1]:.4f}], {m['n_events']} events")
        print(f"→ {storage.join(args.out, SUMMARY)}")
    elif args.command == "icecube" and args.action == "evaluate":
        from neutrino_ray.icecube.evaluate import REPORT, evaluate

        r = evaluate(args.data, args.split, args.predictions, args.out, command=command)
        print(f"mean angular error {r['mean_angular_error']:.4f} rad over {r['n_events']} events "
              f"→ {storage.join(args.out, REPORT)}")
    elif args.command == "icecube" and args.action == "stats":
        from neutrino_ray.icecube.stats import STATS, side_by_side, stats

        r = stats(args.data, args.split, args.out, args.events_per_task, linefit=not args.no_linefit,
                  command=command)
        rows = [("quantity", "this dataset", "real Kaggle data", "definition"), *side_by_side(r)]
        widths = [max(len(row[i]) for row in rows) for i in range(3)]
        for row in rows:
            print("  ".join(c.ljust(w) for c, w in zip(row[:3], widths)) + "  " + row[3])
        print(f"profiled {r['events']} events in {r['batch_files']} batch files → {storage.join(args.out, STATS)}")
    elif args.command == "icecube" and args.action == "bound":
        from neutrino_ray.icecube.bound import REPORT as BOUND_REPORT
        from neutrino_ray.icecube.bound import bound

        m = bound(args.data, args.split, args.out, args.events_per_task, args.events, command=command)
        r = m["report"]
        print(f"bound: {m['events']} events, mean angular error {r['all']['mean_rad']:.4f} rad, median "
              f"{r['all']['median_deg']:.2f} deg; chi2(2 dof) fractions below 68/90 % quantiles "
              f"{r['chi2_check']['fraction_below_68']}/{r['chi2_check']['fraction_below_90']} "
              f"→ {storage.join(args.out, BOUND_REPORT)}")
    elif args.command == "demo":
        from neutrino_ray.icecube.demo import demo

        chosen = {"train_minutes": args.train_minutes, "model_name": args.model}
        demo(args.out, args.events, args.seed, workers=args.workers,
             **{k: v for k, v in chosen.items() if v is not None})
    elif args.command == "bench" and args.detector == "gpu":
        from neutrino_ray.gpubench import bench_gpu, bench_gpu_inference

        if args.device == "cpu" and args.half != "inference":
            raise InputError("--device cpu runs only the inference half (the training half needs CUDA): add "
                             "--half inference")
        if args.half in ("both", "training"):
            bench_gpu(args.steps, args.warmup, args.precision, args.out)
        if args.half in ("both", "inference"):
            bench_gpu_inference(args.out, args.device, args.icecube_events, args.nova_events, args.icecube_model,
                                args.nova_model, args.cpus_per_actor)
    elif args.command == "bench":
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


def run_km3net(args: argparse.Namespace, command: list[str]) -> int:
    if args.action == "train":
        from neutrino_ray.km3net.train import train

        m = train(args.data, args.model, args.out, args.workers, args.search, args.n_iter, args.cv, args.balance,
                  args.test_fraction, args.seed, args.max_train_events or None, args.skip_bad, command=command)
        t = m["test_metrics"]
        print(f"{args.model}: test accuracy {t['accuracy']:.4f}, AUC {t['roc_auc']:.4f} on {t['n_events']} held-out "
              f"events; tuning {m['timing']['tune_seconds']:.1f} s on {args.workers} workers → {args.out}")
    elif args.action == "predict":
        from neutrino_ray.km3net.predict import PREDICTIONS
        from neutrino_ray.km3net.predict import predict as km3net_predict

        m = km3net_predict(args.data, args.model, args.out, args.skip_bad, command=command)
        acc = f", accuracy {m['accuracy']:.4f}" if "accuracy" in m else ""
        print(f"scored {m['events']} events{acc} → {storage.join(args.out, PREDICTIONS)}")
    elif args.action == "evaluate":
        from neutrino_ray.km3net.evaluate import evaluate as km3net_evaluate

        r = km3net_evaluate(args.data, args.model, args.out, args.energy_cut, args.skip_bad, command=command)
        s = r["summary"]
        auc = f"{s['roc_auc']:.4f}" if s["roc_auc"] is not None else "n/a"
        print(f"accuracy {s['accuracy']:.4f}, AUC {auc} on {s['n_events']} events → {args.out}")
    return 0


def run_nova(args: argparse.Namespace, command: list[str]) -> int:
    if args.action == "train":
        from neutrino_ray.nova.train import train as nova_train

        res = nova_train(args.data, args.out, args.target, args.model, balance=args.balance, val_events=args.val_events,
                         events_per_task=args.events_per_task, skip_bad=args.skip_bad, command=command,
                         **training_kwargs(args))
        t = res.config["training"]
        val = ", ".join(f"{k} {v:.4f}" for k, v in t["final_validation"].items() if isinstance(v, float))
        print(f"trained {args.model} for {args.target} ({res.config['n_parameters']:,} parameters) on {t['events']} "
              f"events in {t['minutes']:.1f} min; {val} → {storage.join(args.out, 'model')}")
    elif args.action == "predict":
        from neutrino_ray.nova.predict import PREDICTIONS, Scoring
        from neutrino_ray.nova.predict import predict as nova_predict

        scoring = Scoring(args.model, args.events_per_task, args.batch_size, args.actors, args.cpus_per_actor,
                          args.gpus_per_actor, args.resource_wait_minutes)
        m = nova_predict(args.data, args.out, scoring, args.skip_bad, command=command)
        print(f"scored {m['events']} events in {m['wall_seconds']:.1f} s ({m['events_per_second']:.0f} events/s end "
              f"to end) → {storage.join(args.out, PREDICTIONS)}")
    elif args.action == "evaluate":
        from neutrino_ray.nova.analysis import notebook_line
        from neutrino_ray.nova.evaluate import SUMMARY
        from neutrino_ray.nova.evaluate import evaluate as nova_evaluate

        report = nova_evaluate(args.data, args.predictions, args.out, args.threshold, args.skip_bad, command=command)
        if "notebook" in report:  # classification: the course notebooks' figures
            print(f"as the course notebooks measured it: {notebook_line(report['notebook'])}")
        print(f"evaluated → {storage.join(args.out, SUMMARY)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
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
