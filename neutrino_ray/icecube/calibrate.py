"""``icecube calibrate``: fit a monotone recalibration of a model's κ on held-out events, store it with the model.

The held-out events are, for ``--split train``, the model's own validation slice (the last ``val_events``
events of the train split, which training never stepped on); for a split with truth (a simulated test
split) all its events, or its last ``--events``. The model scores them through the same actor pool as
``predict`` with its raw κ; :func:`~neutrino_ray.icecube.uncertainty.fit_kappa_calibration` fits
κ → κ'; the model artefact is republished atomically with ``calibration.json`` beside its weights, which
``predict`` applies from then on.

An ensemble (several ``--model``, with ``--weights`` / ``--kappa-weighted``) is calibrated as a whole: its
members score with their own calibrations, the combined κ (that of the product of their vMFs, which is
overconfident where correlated members agree) is fitted the same way, and an *ensemble artefact* is
published at ``--out``: ``ensemble.json`` (members, weights, κ rule, pulse cap) and ``calibration.json``.
``predict --model OUT`` then scores that ensemble with its calibrated κ.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from typing import Any

import numpy as np
import pyarrow as pa

from neutrino_ray import artefact, storage
from neutrino_ray.errors import InputError
from neutrino_ray.icecube import data as icdata
from neutrino_ray.icecube import uncertainty
from neutrino_ray.icecube.metrics import errors_against_truth
from neutrino_ray.icecube.options import ScoringOptions
from neutrino_ray.icecube.predict import run_inference
from neutrino_ray.icecube.scoring import ENSEMBLE, check_models, ensemble_spec
from neutrino_ray.icecube.train import TASK

log = logging.getLogger("neutrino_ray")


def _held_out_events(members: tuple[str, ...], split: str, events: int | None) -> int | None:
    """The last N events of the split that no member trained on: ``events``, or for ``--split train`` the
    smallest validation slice that the members' ``config.json`` records."""
    if events is not None or split != "train":
        return events
    slices = []
    for uri in members:
        config = artefact.read_config(uri, TASK)
        n = int((config.get("data") or {}).get("val_events") or 0)
        if not n:
            raise InputError(f"{uri}: the model's config.json does not say which train events were held out; "
                             "pass --events N (the last N events of the split, which must not have been trained on)")
        slices.append(n)
    return min(slices)


def _truth_uri(data: str, split: str) -> str:
    """Where the split's true directions are: the train meta, or ``{split}_truth.parquet``."""
    uri = icdata.meta_uri(data, split) if split == "train" else storage.join(data, f"{split}_truth.parquet")
    if not storage.exists(uri):
        raise icdata.DataError(f"{uri}: no truth for split {split!r}" +
                               (" (the real Kaggle test set has none)" if split != "train" else ""))
    return uri


def held_out_truth(data: str, split: str, event_ids: np.ndarray) -> pa.Table:
    """The true directions of the scored events only: the rows of the train meta (or the split's truth file)
    in the scored ids' range, read with predicate pushdown on event_id, so calibrating on the last 5,000
    of 132M train events reads the meta's last row groups, not the whole meta (and never sorts it)."""
    if len(event_ids) == 0:
        return pa.table({"event_id": pa.array([], pa.int64()), "azimuth": pa.array([], pa.float64()),
                         "zenith": pa.array([], pa.float64())})
    uri = _truth_uri(data, split)
    try:
        return storage.read_parquet_range(uri, "event_id", int(event_ids.min()), int(event_ids.max()),
                                          ["event_id", "azimuth", "zenith"])
    except KeyError as e:
        raise icdata.DataError(str(e.args[0])) from e


def calibrate(data: str, model: str | tuple[str, ...], split: str = "train", events: int | None = None,
              scoring: ScoringOptions | None = None, command: list[str] | None = None,
              out: str | None = None) -> dict[str, Any]:
    """Fit and store the κ calibration of the model at ``model``, or of the ensemble of several models
    (published as an ensemble artefact at ``out``); returns the calibration with coverage on the
    calibration events before and after."""
    started = time.time()
    if scoring is None:
        scoring = ScoringOptions(model=model)
    members = scoring.members
    if scoring.is_linefit:
        raise InputError("--model: calibrate takes trained models; LineFit's empirical uncertainty is fitted by "
                         "'icecube predict --model linefit' itself (--uncertainty-events)")
    ensemble = len(members) > 1
    if ensemble and out is None:
        raise InputError("calibrating an ensemble publishes an ensemble artefact: pass --out URI "
                         "(then score it with 'icecube predict --model URI')")
    if not ensemble and out is not None:
        raise InputError("--out is for ensembles: a single model's calibration is stored with the model itself")
    if not ensemble and storage.exists(storage.join(members[0], ENSEMBLE)):
        raise InputError(f"{members[0]} is an ensemble artefact: recalibrate it from its members with "
                         f"--model A --model B … --out {members[0]}")
    plan = check_models(scoring)  # bad models, weights or caps fail before any work
    events = _held_out_events(members, split, events)
    _truth_uri(data, split)  # a split without truth fails before any work
    # Single model: its raw κ. Ensemble: calibrated members, the combined κ raw.
    res = run_inference(data, split, replace(scoring, calibrated=ensemble), last_events=events)
    pred = res.predictions
    err = errors_against_truth(held_out_truth(data, split, pred.column("event_id").to_numpy()), pred)
    kappa = pred.column("kappa").to_numpy()
    cal = uncertainty.fit_kappa_calibration(kappa, err)
    after = uncertainty.apply_kappa_calibration(cal, kappa)
    cal.update({"split": split, "held_out": f"the last {len(pred)} events of the {split} split",
                "coverage_before": dict(zip(("50", "68", "90"), uncertainty.coverage(err, kappa).tolist())),
                "coverage_after": dict(zip(("50", "68", "90"), uncertainty.coverage(err, after).tolist()))})
    summary = {"split": split, "events": len(pred), "coverage_after": cal["coverage_after"]}
    if ensemble:
        assert out is not None
        spec = ensemble_spec(members, plan.weights, scoring.kappa_weighted, scoring.max_pulses)
        with storage.Output(out, command=command, inputs=[data, *members], started=started) as output:
            output.write(ENSEMBLE, json.dumps(spec, indent=2).encode())
            output.write(uncertainty.CALIBRATION, json.dumps(cal, indent=2).encode())
            output.commit(kind="icecube-ensemble", members=list(members), weights=list(plan.weights),
                          kappa_weighted=scoring.kappa_weighted, kappa_calibration=summary)
        where = out
    else:
        where = members[0]
        previous = storage.read_manifest(where)
        files = {name: storage.read_bytes(storage.join(where, name)) for name in previous["files"]
                 if name != uncertainty.CALIBRATION}
        kept = {k: v for k, v in previous.items() if k not in storage.RESERVED_MANIFEST_KEYS}
        inputs = list(dict.fromkeys([*previous.get("inputs", []), data]))
        with storage.Output(where, command=command, inputs=inputs, started=started) as output:
            for name, blob in files.items():
                output.write(name, blob)
            output.write(uncertainty.CALIBRATION, json.dumps(cal, indent=2).encode())
            output.commit(**{**kept, "kappa_calibration": summary})
    log.info("calibrated κ of %s on %d held-out events: coverage 50/68/90 %% %s → %s", where, len(pred),
             cal["coverage_before"], cal["coverage_after"])
    return {**cal, "stored_in": storage.join(where, uncertainty.CALIBRATION)}

