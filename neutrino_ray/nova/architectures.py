"""The NOvA model names and CNN shapes (no torch: the CLI reads them; :mod:`neutrino_ray.nova.models` builds them).

The model names are derived from :data:`SIZES` (the dual-view CNN's named shapes) plus the three models with
no shape table: the linear baseline on image summary features, the course notebooks' CNN and the CVN-style
residual network.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

# Events per forward pass: on CPUs, 128 events' activations (the first convolution's output is 128 x 16 x 50 x 40
# floats, 16 MB) stay in the caches where 256 events' do not; docs/nova.md ("Throughput in `neutrino-ray bench
# nova`") has the measurement. A GPU scorer may want more: --batch-size.
DEFAULT_BATCH_SIZE = 128


@dataclass(frozen=True)
class CNNConfig:
    """Tower widths per stage (each stage halves the image), extra 3x3 convolutions per stage, head width."""

    channels: tuple[int, ...] = (8, 24, 48)
    depth: int = 0
    hidden: int = 64
    dropout: float = 0.1

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "channels": list(self.channels)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CNNConfig:
        return cls(channels=tuple(int(c) for c in d["channels"]), depth=int(d["depth"]), hidden=int(d["hidden"]),
                   dropout=float(d["dropout"]))


SIZES = {
    "small": CNNConfig(),  # 67k parameters, CPU-friendly
    "medium": CNNConfig(channels=(16, 32, 64), depth=1, hidden=128),
}
BASELINE = "baseline"
COURSE_CNN = "course-cnn"
CVN_NAME = "cvn"
MODELS = (BASELINE, *SIZES, COURSE_CNN, CVN_NAME)
