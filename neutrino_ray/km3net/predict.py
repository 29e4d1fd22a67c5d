"""Load a trained model (with its load-time checks) and score new events → Parquet, atomically."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import pyarrow as pa
import ray

from neutrino_ray import runtime, storage
from neutrino_ray.km3net import features, models
from neutrino_ray.km3net.artefact import load_model
from neutrino_ray.km3net.data import list_inputs, read_validated

log = logging.getLogger("neutrino_ray")

PREDICTIONS = "predictions.parquet"


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
