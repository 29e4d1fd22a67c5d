"""Names of the IceCube direction architectures and their pulse caps (no torch: the CLI reads them).

The shapes themselves live with the models: :data:`neutrino_ray.icecube.models.SIZES` (DynEdge-class
GNNs) and :data:`neutrino_ray.icecube.transformer.SIZES` (IceMix-class transformers).
"""

from __future__ import annotations

from neutrino_ray.icecube.features import DEFAULT_MAX_PULSES

GNNS = ("small", "dynedge")
TRANSFORMERS = ("transformer-tiny", "transformer-small", "transformer-base")
ARCHITECTURES = (*GNNS, *TRANSFORMERS)
TRANSFORMER_MAX_PULSES = 192  # transformers train on at most 192 pulses, as IceMix ...
TRANSFORMER_INFERENCE_MAX_PULSES = 768  # ... and score with up to 768


def is_transformer(size: str) -> bool:
    return size in TRANSFORMERS


def default_max_pulses(size: str) -> int:
    """The training pulse cap of an architecture when --max-pulses is not given."""
    return TRANSFORMER_MAX_PULSES if is_transformer(size) else DEFAULT_MAX_PULSES
