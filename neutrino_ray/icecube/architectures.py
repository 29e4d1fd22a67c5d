"""The IceCube direction architectures: their shapes, names and pulse caps (no torch: the CLI reads them).

One table per family holds the named shapes: :data:`GNN_SIZES` (DynEdge-class graph networks, built by
:mod:`neutrino_ray.icecube.models`) and :data:`TRANSFORMER_SIZES` (IceMix-class transformers, built by
:mod:`neutrino_ray.icecube.transformer`). The architecture names are the tables' keys, so a new shape is one
entry here and nothing else.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from neutrino_ray.icecube.features import DEFAULT_MAX_PULSES

N_NEIGHBOURS = 8  # DynEdge's k-NN


@dataclass(frozen=True)
class DynEdgeConfig:
    """Layer sizes. ``dynedge`` is GraphNeT's competition benchmark shape (1.35M parameters). ``seeded``: the
    network refines the event's Kaggle LineFit direction (its input and starting point) instead of predicting a
    direction from scratch."""

    conv: tuple[tuple[int, ...], ...]
    post: tuple[int, ...]
    readout: tuple[int, ...]
    k: int = N_NEIGHBOURS
    seeded: bool = False  # a LineFit-seeded refinement (models.SeededDynEdge), not a direction from scratch

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, object]) -> DynEdgeConfig:
        conv = tuple(tuple(int(v) for v in layer) for layer in d["conv"])  # type: ignore[attr-defined]
        return DynEdgeConfig(conv, tuple(d["post"]), tuple(d["readout"]), int(d["k"]),  # type: ignore[arg-type,call-overload]
                             bool(d.get("seeded", False)))


@dataclass(frozen=True)
class TransformerConfig:
    """Shapes. ``transformer-base`` is GraphNeT's ``DeepIce`` default (hidden 384, Fourier base 128,
    4 relative-bias blocks, 12 plain blocks, head size 32); ``transformer-small`` its hidden-192,
    depth-8 variant."""

    hidden: int
    depth: int  # plain blocks after the CLS token
    depth_rel: int  # blocks with the space-time bias, before the CLS token
    head_size: int = 32
    fourier: int = 128  # sinusoidal embedding width per input quantity
    fourier_mlp: int = 1536  # hidden width of the embedding MLP
    mlp_ratio: int = 4
    layer_scale: float | None = None  # LayerScale's initial value (CaiT); None: off

    @property
    def heads(self) -> int:
        return self.hidden // self.head_size

    def to_dict(self) -> dict[str, object]:
        return {"family": "transformer", **asdict(self)}

    @staticmethod
    def from_dict(d: dict[str, object]) -> TransformerConfig:
        d = {k: v for k, v in d.items() if k != "family"}
        return TransformerConfig(**d)  # type: ignore[arg-type]


GNN_SIZES = {
    "small": DynEdgeConfig(conv=((64, 64), (96, 64), (96, 64)), post=(128, 96), readout=(64,)),
    "dynedge": DynEdgeConfig(conv=((128, 256), (336, 256), (336, 256), (336, 256)), post=(336, 256), readout=(128,)),
    # The demo's model: one light EdgeConv, seeded by LineFit (models.SeededDynEdge), quick to train on CPUs.
    "refine": DynEdgeConfig(conv=((32, 32),), post=(64, 64), readout=(64,), seeded=True),
}
TRANSFORMER_SIZES = {
    "transformer-tiny": TransformerConfig(hidden=64, depth=2, depth_rel=1, head_size=16, fourier=32,
                                          fourier_mlp=256),
    "transformer-small": TransformerConfig(hidden=192, depth=8, depth_rel=4),
    "transformer-base": TransformerConfig(hidden=384, depth=12, depth_rel=4, layer_scale=1.0),
}
GNNS = tuple(GNN_SIZES)
TRANSFORMERS = tuple(TRANSFORMER_SIZES)
ARCHITECTURES = (*GNNS, *TRANSFORMERS)
TRANSFORMER_MAX_PULSES = 192  # transformers train on at most 192 pulses, as IceMix ...
TRANSFORMER_INFERENCE_MAX_PULSES = 768  # ... and score with up to 768


def is_transformer(size: str) -> bool:
    return size in TRANSFORMER_SIZES


def model_config(size: str) -> DynEdgeConfig | TransformerConfig:
    """The named shape of an architecture."""
    return TRANSFORMER_SIZES[size] if is_transformer(size) else GNN_SIZES[size]


def default_max_pulses(size: str) -> int:
    """The training pulse cap of an architecture when --max-pulses is not given."""
    return TRANSFORMER_MAX_PULSES if is_transformer(size) else DEFAULT_MAX_PULSES
