"""``neutrino-ray nova ACTION``: train, predict and evaluate the NOvA pixel-map models."""

from __future__ import annotations

import argparse
from typing import Any

from neutrino_ray import storage
from neutrino_ray.argtypes import positive as _positive
from neutrino_ray.commands.common import ENV_HELP, TRAIN_OUT_HELP, Deprecated, add_actor_args, add_io
from neutrino_ray.settings import add_training_args, training_kwargs

# This family's line in `neutrino-ray --help` (the CLI lists it without building the family's parsers).
HELP = "NOvA-style pixel-map CNNs (Ray Train) and analysis"


def add(sub: Any, fmt: type[argparse.HelpFormatter]) -> None:
    """The ``nova`` command and its subcommands."""
    from neutrino_ray.nova.architectures import DEFAULT_BATCH_SIZE
    from neutrino_ray.nova.architectures import MODELS as NOVA_MODELS
    from neutrino_ray.nova.targets import TASKS

    nova = sub.add_parser("nova", help=HELP)
    nova_sub = nova.add_subparsers(dest="action", required=True, metavar="ACTION")
    nova_data = "NOvA HDF5 data URI: a neutrino{i}.h5 file or a folder/prefix of them"
    nt = nova_sub.add_parser("train", formatter_class=fmt, epilog=ENV_HELP,
                             help="train a dual-view CNN (or the baseline) for one task → OUT/model",
                             description="Data-parallel training (Ray Train) of a model for one task on every file "
                                         "under DATA, streamed through the Ray Data HDF5 reader. The last "
                                         "--val-events in-task events validate. Checkpoints go to OUT/train "
                                         "(re-running with the same OUT resumes); the model to OUT/model.")
    add_io(nt, nova_data, out_help=TRAIN_OUT_HELP)
    target = nt.add_mutually_exclusive_group(required=True)
    target.add_argument("--target", choices=list(TASKS),
                        help="what to predict: numu-cc (binary), flavour (numu CC / nue CC / NC), mode (QE / RES / "
                             "DIS / other, CC events), energy (neutrino energy), y (E_lepton / E_nu; E_nu = 0 "
                             "skipped)")
    target.add_argument("--task", choices=list(TASKS), dest="target", action=Deprecated, new="--target",
                        help=argparse.SUPPRESS)  # the old name, for one release
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
    add_io(np_, nova_data)
    np_.add_argument("--model", required=True, help="trained model URI (OUT/model of 'nova train')")
    add_actor_args(np_, DEFAULT_BATCH_SIZE)
    np_.add_argument("--events-per-task", type=_positive, default=1_000, help="events per read slice (1000)")
    np_.add_argument("--skip-bad", action="store_true", help="skip (and count) unreadable or malformed files")
    ne = nova_sub.add_parser("evaluate", formatter_class=fmt, epilog=ENV_HELP,
                             help="analysis: report.json, summary.md, plots",
                             description="Join predictions with DATA's truth and publish the analysis: accuracy "
                                         "(natural and balanced), ROC/AUC, accuracy vs threshold, confusion matrix, "
                                         "efficiency vs interaction type, final state and energies; resolution and "
                                         "bias for regressions.")
    add_io(ne, nova_data + " (the truth)")
    ne.add_argument("--predictions", required=True, help="predictions URI (OUT/predictions.parquet of 'nova predict')")
    ne.add_argument("--threshold", type=float, default=0.5, help="numu-cc selection cut on prob_numu-CC (0.5)")
    ne.add_argument("--skip-bad", action="store_true", help="skip bad files (as predict did)")


def run(args: argparse.Namespace, command: list[str]) -> int:
    """Run one ``nova`` action."""
    if args.action == "train":
        from neutrino_ray.nova.train import train as nova_train

        res = nova_train(args.data, args.out, args.target, args.model, balance=args.balance, val_events=args.val_events,
                         events_per_task=args.events_per_task, skip_bad=args.skip_bad, command=command,
                         **training_kwargs(args))
        t = res.config["training"]
        pub = t["published"]
        val = ", ".join(f"{k} {v:.4f}" for k, v in t["published_validation"].items() if isinstance(v, float))
        which = f" (the best checkpoint's weights: epoch {pub['epoch']}, step {pub['step']})" \
            if pub["keep"] == "best" else ""
        print(f"trained {args.model} for {args.target} ({res.config['n_parameters']:,} parameters) on {t['events']} "
              f"events in {t['minutes']:.1f} min; {val}{which} → {storage.join(args.out, 'model')}")
    elif args.action == "predict":
        from neutrino_ray.nova.predict import PREDICTIONS, Scoring
        from neutrino_ray.nova.predict import predict as nova_predict

        scoring = Scoring(args.model, args.events_per_task, args.batch_size, args.actors, args.cpus_per_actor,
                          args.gpus_per_actor, args.resource_wait_minutes)
        m = nova_predict(args.data, args.out, scoring, args.skip_bad, command=command)
        print(f"scored {m['events']} events in {m['wall_seconds']:.1f} s ({m['events_per_second']:.0f} events/s end "
              f"to end) → {storage.join(args.out, PREDICTIONS)}")
    elif args.action == "evaluate":
        from neutrino_ray.nova.analysis_render import notebook_line
        from neutrino_ray.nova.evaluate import SUMMARY
        from neutrino_ray.nova.evaluate import evaluate as nova_evaluate

        report = nova_evaluate(args.data, args.predictions, args.out, args.threshold, args.skip_bad, command=command)
        if "notebook" in report:  # classification: the course notebooks' figures
            print(f"as the course notebooks measured it: {notebook_line(report['notebook'])}")
        print(f"evaluated → {storage.join(args.out, SUMMARY)}")
    return 0

