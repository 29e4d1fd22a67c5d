"""``neutrino-ray icecube ACTION``: train, predict, calibrate, evaluate, compare, stats and bound."""

from __future__ import annotations

import argparse
from typing import Any

from neutrino_ray import storage
from neutrino_ray.argtypes import non_negative as _non_negative
from neutrino_ray.argtypes import positive as _positive
from neutrino_ray.argtypes import positive_float as _positive_float
from neutrino_ray.commands.common import ENV_HELP, TRAIN_OUT_HELP, add_actor_args, add_io
from neutrino_ray.settings import add_training_args, training_kwargs

# This family's line in `neutrino-ray --help` (the CLI lists it without building the family's parsers).
HELP = "IceCube reconstruction pipelines"


def add(sub: Any, fmt: type[argparse.HelpFormatter]) -> None:
    """The ``icecube`` command and its subcommands."""
    from neutrino_ray.icecube.options import DEFAULT_BATCH_SIZE, STATS_EVENTS_PER_TASK

    ic = sub.add_parser("icecube", help=HELP)
    ic_sub = ic.add_subparsers(dest="action", required=True, metavar="ACTION")
    _add_train(ic_sub, fmt)
    _add_predict(ic_sub, fmt)
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
    add_io(ev, "Kaggle-layout dataset URI", split="test")
    ev.add_argument("--predictions", required=True,
                    help="submission URI: CSV or Parquet, or the OUT/predictions/ folder of --format parquet")

    cm = ic_sub.add_parser("compare", formatter_class=fmt, epilog=ENV_HELP,
                           help="several reconstructions side by side: report.json, summary.md, overlaid plots",
                           description="Score each predictions file (submission.csv or predictions.parquet) "
                                       "against the split's truth with the competition formula, with bootstrap "
                                       "68 %% intervals, breakdowns by energy, pulse count, true zenith and "
                                       "topology, coverage of the uncertainties where given; publish "
                                       "report.json, summary.md and PNG plots to OUT.")
    add_io(cm, "Kaggle-layout dataset URI (with truth for the split)", split="test")
    cm.add_argument("--predictions", nargs="+", required=True, metavar="URI",
                    help="predictions files, one per model (local or S3)")
    cm.add_argument("--labels", nargs="+", default=None, metavar="LABEL",
                    help="a label per predictions file (default: the name of the folder holding it)")

    stt = ic_sub.add_parser("stats", formatter_class=fmt, epilog=ENV_HELP,
                            help="dataset profile: stats.json, summary.md + plots, beside the real data's figures",
                            description="Profile a split of a Kaggle-layout dataset (real or simulated): pulses per "
                                        "event, auxiliary fraction by event size, charge, pulse and first-pulse "
                                        "times, event spans, sensors hit and, with truth, zenith and the LineFit "
                                        "scores, side by side with the published figures of the real Kaggle data. "
                                        "Plans per batch file: one Ray task per batch file reads only its own meta, "
                                        "truth and pulses; the partial profiles are merged exactly. Publishes "
                                        "OUT/stats.json, OUT/summary.md and PNG histograms, and prints the table.")
    add_io(stt, "Kaggle-layout dataset URI", split="train", split_help="split to profile")
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
    add_io(bd, "simulated Kaggle-layout dataset URI (with test_truth.parquet)", split="test", splits=("test",),
           split_help="split, the one with full truth")
    bd.add_argument("--events-per-task", type=_positive, default=200,
                    help="events per Ray task (one read block each) (200)")
    bd.add_argument("--events", type=_positive, default=None,
                    help="fit only the split's last N events in file order (all)")


def _add_train(ic_sub: Any, fmt: type[argparse.HelpFormatter]) -> None:
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
    add_io(tr, "Kaggle-layout dataset URI (its train split and meta are used)", out_help=TRAIN_OUT_HELP)
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


def _add_predict(ic_sub: Any, fmt: type[argparse.HelpFormatter]) -> None:
    """``icecube predict``: what to score with, the output, the actor pool."""
    from neutrino_ray.icecube.linefit import KAGGLE_CHARGE_CAP
    from neutrino_ray.icecube.options import (
        DEFAULT_BATCH_SIZE,
        FORMATS,
        GNN_EVENTS_PER_TASK,
        LINEFIT_EVENTS_PER_TASK,
        PIPELINES,
    )

    pr = ic_sub.add_parser("predict", formatter_class=fmt, epilog=ENV_HELP,
                           help="batch inference → OUT/submission.csv",
                           description="Score every event of a split with Ray Data (LineFit fused into the read, or a "
                                       "trained model on an actor pool) and publish OUT/submission.csv "
                                       "(event_id,azimuth,zenith) or OUT/predictions/ and OUT/_SUCCESS.json. A "
                                       "killed run re-run with the same command reuses the parts it finished.")
    add_io(pr, "Kaggle-layout dataset URI", split="test", split_help="split to score")
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
    pr.add_argument("--format", choices=FORMATS, default=None,
                    help="csv: OUT/submission.csv (Kaggle format, sorted) and OUT/predictions.parquet; parquet: "
                         "OUT/predictions/part-NNNNN.parquet in event-id order, listed in OUT/_SUCCESS.json "
                         "(csv for --split test, parquet for train)")
    pr.add_argument("--max-pulses", type=_positive, default=None,
                    help=f"LineFit: fit at most this many of the selected pulses, highest charge first "
                         f"({KAGGLE_CHARGE_CAP}, as the Kaggle notebook); a transformer: its inference pulse cap "
                         "(default: the one stored with it, 768 unless trained otherwise); a DynEdge model "
                         "always uses the pulse cap it was trained with")
    pr.add_argument("--events-per-task", type=_positive, default=None,
                    help=f"events per slice (one Ray Data read), cut at row groups ({LINEFIT_EVENTS_PER_TASK} for "
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


def run(args: argparse.Namespace, command: list[str]) -> int:
    """Run one ``icecube`` action."""
    if args.action == "train":
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
    elif args.action == "predict":
        from neutrino_ray.icecube.options import ScoringOptions
        from neutrino_ray.icecube.predict import PREDICTIONS_DIR, SUBMISSION, predict

        models = tuple(args.model or ["linefit"])
        scoring = ScoringOptions(models[0] if len(models) == 1 else models, args.max_pulses, args.events_per_task,
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
    elif args.action == "calibrate":
        from neutrino_ray.icecube.calibrate import calibrate
        from neutrino_ray.icecube.options import ScoringOptions

        models = tuple(args.model)
        model = models[0] if len(models) == 1 else models
        cal = calibrate(args.data, model, args.split, args.events,
                        ScoringOptions(model, args.max_pulses, None, args.batch_size, args.actors, args.cpus_per_actor,
                                args.gpus_per_actor, weights=None if args.weights is None else tuple(args.weights),
                                kappa_weighted=args.kappa_weighted, resource_wait_minutes=args.resource_wait_minutes),
                        command=command, out=args.out)
        before, after = cal["coverage_before"], cal["coverage_after"]
        print(f"calibrated on {cal['events']} held-out events: coverage at 50/68/90 % "
              f"{before['50']:.3f}/{before['68']:.3f}/{before['90']:.3f} → {after['50']:.3f}/{after['68']:.3f}/"
              f"{after['90']:.3f}; stored in {cal['stored_in']}")
    elif args.action == "compare":
        from neutrino_ray.icecube.compare import SUMMARY, compare

        rep = compare(args.data, args.split, args.predictions, args.labels, args.out, command=command)
        for m in rep["models"]:
            print(f"{m['label']:<24} mean angular error {m['mean_angular_error']:.4f} rad "
                  f"[{m['mean_interval_68'][0]:.4f}, {m['mean_interval_68'][1]:.4f}], {m['n_events']} events")
        print(f"→ {storage.join(args.out, SUMMARY)}")
    elif args.action == "evaluate":
        from neutrino_ray.icecube.evaluate import REPORT, evaluate

        r = evaluate(args.data, args.split, args.predictions, args.out, command=command)
        print(f"mean angular error {r['mean_angular_error']:.4f} rad over {r['n_events']} events "
              f"→ {storage.join(args.out, REPORT)}")
    elif args.action == "stats":
        from neutrino_ray.icecube.stats import STATS, stats
        from neutrino_ray.icecube.stats_report import side_by_side

        r = stats(args.data, args.split, args.out, args.events_per_task, linefit=not args.no_linefit,
                  command=command)
        rows = [("quantity", "this dataset", "real Kaggle data", "definition"), *side_by_side(r)]
        widths = [max(len(row[i]) for row in rows) for i in range(3)]
        for row in rows:
            print("  ".join(c.ljust(w) for c, w in zip(row[:3], widths)) + "  " + row[3])
        print(f"profiled {r['events']} events in {r['batch_files']} batch files → {storage.join(args.out, STATS)}")
    elif args.action == "bound":
        from neutrino_ray.icecube.bound import REPORT as BOUND_REPORT
        from neutrino_ray.icecube.bound import bound

        m = bound(args.data, args.split, args.out, args.events_per_task, args.events, command=command)
        r = m["report"]
        print(f"bound: {m['events']} events, mean angular error {r['all']['mean_rad']:.4f} rad, median "
              f"{r['all']['median_deg']:.2f} deg; chi2(2 dof) fractions below 68/90 % quantiles "
              f"{r['chi2_check']['fraction_below_68']}/{r['chi2_check']['fraction_below_90']} "
              f"→ {storage.join(args.out, BOUND_REPORT)}")
    return 0
