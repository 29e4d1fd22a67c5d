"""Load a trained model (with its load-time checks) and score new events → Parquet, atomically."""

from __future__ import annotations

import json
import logging
import pickle
import time
from typing import Any

import numpy as np
import pyarrow as pa
import ray

from neutrino_ray import runtime, storage
from neutrino_ray.errors import InputError
from neutrino_ray.km3net import features, models
from neutrino_ray.km3net.data import list_inputs, read_validated
from neutrino_ray.km3net.train import FORMAT, METADATA_FILE, MODEL_FILE

log = logging.getLogger("neutrino_ray")

PREDICTIONS = "predictions.parquet"


def load_model(uri: str) -> tuple[Any, dict[str, Any]]:
    """The estimator and its metadata; refuses artefacts of another format or feature list.

    The model is a pickle: load only models you trust (your own object storage).
    """
    try:
        meta = json.loads(storage.read_bytes(storage.join(uri, METADATA_FILE)))
    except FileNotFoundError as e:
        raise InputError(f"{uri}: no trained model here ({METADATA_FILE} not found)") from e
    except json.JSONDecodeError as e:
        raise InputError(f"{storage.join(uri, METADATA_FILE)}: not valid JSON: {e}") from e
    if meta.get("format") != FORMAT:
        raise InputError(f"{uri}: model format {meta.get('format')!r} is not {FORMAT!r}")
    if meta.get("features") != list(features.FEATURES):
        have, want = meta.get("features") or [], list(features.FEATURES)
        raise InputError(f"{uri}: model was trained on a different feature list (missing here: "
                         f"{sorted(set(have) - set(want))}, new here: {sorted(set(want) - set(have))}, "
                         f"order differs: {have != want}); retrain it")
    if meta.get("label_definition") != features.LABEL_DEFINITION:
        raise InputError(f"{uri}: model label {meta.get('label_definition')!r} is not {features.LABEL_DEFINITION!r}")
    try:
        model = pickle.loads(storage.read_bytes(storage.join(uri, MODEL_FILE)))
    except FileNotFoundError as e:
        raise InputError(f"{uri}: {MODEL_FILE} missing") from e
    return model, meta


def score_table(model: Any, table: pa.Table) -> pa.Table:
    """Keys + P(shower) + predicted class (threshold 0.5) + true label when the table has truth."""
    p = models.shower_probability(model, features.feature_matrix(table))
    cols = {"event_id": table.column("event_id"), features.SOURCE: table.column(features.SOURCE),
            "p_shower": pa.array(p), "is_shower_pred": pa.array(p >= 0.5)}
    if "pdgid" in table.column_names:
        cols[features.LABEL] = pa.array(features.label(table.column("pdgid").to_numpy(),
                                                       table.column("is_cc").to_numpy(zero_copy_only=False)))
    return pa.table(cols)


@ray.remote
def _score_file(model_ref: Any, uri: str, skip_bad: bool) -> tuple[pa.Table, int]:
    table, skipped = read_validated(uri, need_truth=None, skip_bad=skip_bad)
    return score_table(model_ref, table), skipped


def predict(data: str, model_uri: str, out: str, skip_bad: bool = False,
            command: list[str] | None = None) -> dict[str, Any]:
    """Score every event under DATA (one Ray task per file); publish OUT/predictions.parquet."""
    started = time.time()
    model, meta = load_model(model_uri)  # before any work, so a wrong model fails fast
    files = list_inputs(data)
    runtime.init_ray()
    model_ref = ray.put(model)
    parts = ray.get([_score_file.remote(model_ref, f, skip_bad) for f in files])
    result = pa.concat_tables([t for t, _ in parts], promote_options="default")
    skipped = sum(n for _, n in parts)
    if skipped:
        log.warning("%s: skipped %d events with non-finite features (--skip-bad)", data, skipped)
    with storage.Output(out, command=command, inputs=[data, model_uri], started=started) as output:
        output.write(PREDICTIONS, storage.parquet_bytes(result))
        extra: dict[str, Any] = {}
        if features.LABEL in result.column_names:
            truth = result.column(features.LABEL).to_numpy(zero_copy_only=False)
            pred = result.column("is_shower_pred").to_numpy(zero_copy_only=False)
            extra["accuracy"] = float(np.mean(truth == pred))
        manifest = output.commit(kind="km3net-predict", model=meta["model"], rows={PREDICTIONS: len(result)},
                                 events=len(result), skipped_events=skipped, **extra)
    log.info("scored %d events from %d files with %s (%d skipped)%s → %s", len(result), len(files), meta["model"],
             skipped, f"; accuracy {extra['accuracy']:.4f}" if extra else "", storage.join(out, PREDICTIONS))
    return manifest
