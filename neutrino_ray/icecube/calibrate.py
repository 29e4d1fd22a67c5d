"""``icecube calibrate``: fit a monotone recalibration of a model's κ on held-out events, store it with the model.

The held-out events are, for ``--split train``, the model's own validation slice (the last ``val_events``
events of the train split, which training never stepped on); for a split with truth (a simulated test
split) all its events, or its last ``--events``. The model scores them through the same actor pool as
``predict`` with its raw κ; :func:`~neutrino_ray.icecube.uncertainty.fit_kappa_calibration` fits
κ → κ'; the model artefact is republished atomically with ``calibration.json`` beside its weights, which
``predict`` applies from then on.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import numpy as np

from neutrino_ray import storage, training
from neutrino_ray.errors import InputError
from neutrino_ray.icecube import data as icdata
from neutrino_ray.icecube import uncertainty
from neutrino_ray.icecube.metrics import angular_distance
from neutrino_ray.icecube.predict import Scoring, check_models, run_inference

log = logging.getLogger("neutrino_ray")
RESERVED = ("output", "files", "inputs", "command", "code_version", "wall_seconds", "finished_at")  # Output's own


def calibrate(data: str, model: str, split: str = "train", events: int | None = None,
              scoring: Scoring | None = None, command: list[str] | None = None) -> dict[str, Any]:
    """Fit and store the κ calibration of the model at ``model``; returns the calibration with coverage
    on the calibration events before and after."""
    started = time.time()
    if scoring is None:
        scoring = Scoring(model=model)
    if len(scoring.members) != 1 or scoring.is_linefit:
        raise InputError("--model: calibrate takes one trained model (calibrate ensemble members one by one)")
    check_models(scoring)  # a bad model fails before any work
    config = json.loads(storage.read_bytes(storage.join(model, training.CONFIG)))
    if events is None and split == "train":
        events = int((config.get("data") or {}).get("val_events") or 0) or None
        if events is None:
            raise InputError(f"{model}: the model's config.json does not say which train events were held out; "
                             "pass --events N (the last N events of the split, which must not have been trained on)")
    truth = icdata.split_truth(data, split).sort_by("event_id")  # fails for a split without truth
    res = run_inference(data, split, Scoring(**{**scoring.__dict__, "calibrated": False}), last_events=events)
    pred = res.predictions
    rows = np.searchsorted(truth.column("event_id").to_numpy(), pred.column("event_id").to_numpy())
    err = angular_distance(truth.column("azimuth").to_numpy()[rows], truth.column("zenith").to_numpy()[rows],
                           pred.column("azimuth").to_numpy(), pred.column("zenith").to_numpy())
    kappa = pred.column("kappa").to_numpy()
    cal = uncertainty.fit_kappa_calibration(kappa, err)
    after = uncertainty.apply_kappa_calibration(cal, kappa)
    cal.update({"split": split, "held_out": f"the last {len(pred)} events of the {split} split",
                "coverage_before": dict(zip(("50", "68", "90"), uncertainty.coverage(err, kappa).tolist())),
                "coverage_after": dict(zip(("50", "68", "90"), uncertainty.coverage(err, after).tolist()))})
    previous = storage.read_manifest(model)
    files = {name: storage.read_bytes(storage.join(model, name)) for name in previous["files"]
             if name != uncertainty.CALIBRATION}
    kept = {k: v for k, v in previous.items() if k not in RESERVED}
    inputs = list(dict.fromkeys([*previous.get("inputs", []), data]))
    with storage.Output(model, command=command, inputs=inputs, started=started) as out:
        for name, blob in files.items():
            out.write(name, blob)
        out.write(uncertainty.CALIBRATION, json.dumps(cal, indent=2).encode())
        out.commit(**{**kept, "kappa_calibration": {"split": split, "events": len(pred),
                                                     "coverage_after": cal["coverage_after"]}})
    log.info("calibrated κ of %s on %d held-out events: coverage 50/68/90 %% %s → %s", model, len(pred),
             cal["coverage_before"], cal["coverage_after"])
    return cal
