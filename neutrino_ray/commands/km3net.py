"""``neutrino-ray km3net ACTION``: train, predict and evaluate the KM3NeT classifiers."""

from __future__ import annotations

import argparse
from typing import Any

from neutrino_ray import storage
from neutrino_ray.argtypes import non_negative as _non_negative
from neutrino_ray.argtypes import positive as _positive
from neutrino_ray.commands.common import ENV_HELP, add_io

# This family's line in `neutrino-ray --help` (the CLI lists it without building the family's parsers).
HELP = "KM3NeT track/shower classification (scikit-learn on Ray)"


def add(sub: Any, fmt: type[argparse.HelpFormatter]) -> None:
    """The ``km3net`` command and its subcommands."""
    km = sub.add_parser("km3net", help=HELP)
    km_sub = km.add_subparsers(dest="action", required=True, metavar="ACTION")
    data_help = "feature data URI: a .h5/.parquet/.root file or a folder/prefix of them"
    kt = km_sub.add_parser("train", formatter_class=fmt, epilog=ENV_HELP, help="tune, refit and save a classifier",
                           description="Cross-validated hyperparameter search (each trial a Ray task), refit of the "
                                       "best pipeline, analysis of a held-out split, and the model saved to OUT "
                                       "(model.pkl, metadata.json, cv_results.json, analysis/).")
    add_io(kt, data_help, out_help="model output URI (a folder)")
    kt.add_argument("--model", required=True, choices=["linear-svc", "svc", "random-forest", "hist-gb"],
                    help="classifier")
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
    add_io(kp, data_help)
    kp.add_argument("--model", required=True, help="trained model URI (the OUT of km3net train)")
    kp.add_argument("--skip-bad", action="store_true", help="drop (and count) events with non-finite features")
    ke = km_sub.add_parser("evaluate", formatter_class=fmt, epilog=ENV_HELP, help="analysis plots + report.json",
                           description="Accuracy, ROC/AUC, confusion matrix, efficiency vs energy, feature "
                                       "importance, track-start density and likelihood plots on labelled DATA.")
    add_io(ke, data_help)
    ke.add_argument("--model", required=True, help="trained model URI")
    ke.add_argument("--energy-cut", type=float, default=None, help="GeV: likelihood plots only above this true energy")
    ke.add_argument("--skip-bad", action="store_true", help="drop (and count) events with non-finite features")


def run(args: argparse.Namespace, command: list[str]) -> int:
    """Run one ``km3net`` action."""
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

