"""The KM3NeT model artefact, one folder: ``model.pkl`` (the fitted scikit-learn estimator) and
``metadata.json`` (format, feature list, label definition, search and test figures).

Training writes it, prediction and evaluation read it, all through this module.
"""

from __future__ import annotations

import json
import pickle
from typing import Any

from neutrino_ray import storage
from neutrino_ray.errors import InputError
from neutrino_ray.km3net import features

MODEL_FILE = "model.pkl"
METADATA_FILE = "metadata.json"
FORMAT = "neutrino-ray km3net model v1"


def write_model(output: storage.Output, estimator: Any, meta: dict[str, Any]) -> None:
    """Stage the estimator and its metadata in an open :class:`~neutrino_ray.storage.Output`."""
    output.write(MODEL_FILE, pickle.dumps(estimator))
    output.write(METADATA_FILE, json.dumps({**meta, "format": FORMAT}, indent=2, default=str).encode())


def load_model(uri: str) -> tuple[Any, dict[str, Any]]:
    """The estimator and its metadata; refuses artefacts of another format or feature list.

    The model is a pickle: load only models you trust (your own object storage).
    """
    meta = storage.read_format_json(storage.join(uri, METADATA_FILE), FORMAT, "a model's metadata")
    if meta is None:
        raise InputError(f"{uri}: no trained model here ({METADATA_FILE} not found)")
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
