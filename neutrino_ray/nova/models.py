"""Models for NOvA pixel maps: a dual-view CNN, the course notebooks' CNN, a CVN-style residual network, and a
linear baseline on image summary features.

Both take the raw pixel maps, a uint8 tensor (N, 2, 100, 80) = (view, plane, cell), and return
(N, n_out): class logits, or one regression value.

The CNN has one convolutional tower per view (x–z and y–z see the event from different sides, so
they get their own filters), merged into a small fully connected head after pooling over the cells
(keeping the position along the beam axis) and over the whole view. The two
towers run as one grouped convolution (``groups=2``): channel block 0 only ever sees view 0 and block
1 only view 1, which is exactly two towers, in one call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from neutrino_ray.nova import format as fmt
from neutrino_ray.nova.architectures import BASELINE, COURSE_CNN, CVN_NAME, SIZES, CNNConfig
from neutrino_ray.nova.architectures import MODELS as MODELS  # re-exported: the names live in architectures.py

MAX_COUNT = 255.0


def scale_pixels(x: torch.Tensor) -> torch.Tensor:
    """uint8 counts → float in [0, 1] on a log scale (showers reach 255, tracks sit near 10–30)."""
    return torch.log1p(x.float()) * (1.0 / math.log1p(MAX_COUNT))


def _conv(c_in: int, c_out: int, kernel: int, stride: int) -> nn.Sequential:
    """Conv → BatchNorm → ReLU for both views at once (grouped: view blocks never mix)."""
    return nn.Sequential(
        nn.Conv2d(fmt.VIEWS * c_in, fmt.VIEWS * c_out, kernel, stride=stride, padding=kernel // 2,
                  groups=fmt.VIEWS, bias=False),
        nn.BatchNorm2d(fmt.VIEWS * c_out),
        nn.ReLU(inplace=True),
    )


class DualViewCNN(nn.Module):
    def __init__(self, cfg: CNNConfig, n_out: int):
        super().__init__()
        layers = [_conv(1, cfg.channels[0], 5, 2)]  # 100x80 → 50x40
        for c_in, c_out in zip(cfg.channels[:-1], cfg.channels[1:]):
            layers.append(_conv(c_in, c_out, 3, 2))  # halve
            layers += [_conv(c_out, c_out, 3, 1) for _ in range(cfg.depth)]
        layers.append(_conv(cfg.channels[-1], cfg.channels[-1], 3, 1))
        self.towers = nn.Sequential(*layers)
        planes = fmt.PLANES
        for _ in cfg.channels:  # each stage's stride-2 convolution halves the planes (rounding up)
            planes = (planes + 1) // 2
        # Per view: each channel's mean over the cells at every plane (where along the beam axis things are:
        # vertex, track end) and its maximum over the whole view.
        merged = fmt.VIEWS * cfg.channels[-1] * (planes + 1)
        self.head = nn.Sequential(nn.Linear(merged, cfg.hidden), nn.ReLU(inplace=True), nn.Dropout(cfg.dropout),
                                  nn.Linear(cfg.hidden, n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.towers(scale_pixels(x))  # (N, 2*C, planes, cells): channels [0, C) from view 0, [C, 2C) view 1
        pooled = torch.cat([h.mean(dim=3).flatten(1), h.amax(dim=(2, 3))], dim=1)
        return self.head(pooled)


# ----------------------------------------------------------------------------------------------
# The course notebooks' CNN (the reference the real-file anchors were measured with)
@dataclass(frozen=True)
class CourseConfig:
    """The course CNN's sizes: per view, one conv → max-pool 2×2 → dropout block per filter count."""

    filters: tuple[int, ...] = (16, 32, 64)
    kernels: tuple[int, ...] = (5, 3, 3)
    block_dropout: float = 0.25
    dense: int = 64
    dense_dropout: float = 0.5


COURSE = CourseConfig()
# The recipe the seed analyses trained it with (``nova train --model course-cnn`` plus these options):
# images scaled to [0, 1] (in the model), classes undersampled to balance (nova train's default), Adam at a
# constant learning rate, batch 256, cross-entropy, early stopping after 5 epochs without improvement of the
# validation loss (Keras' EarlyStopping default monitor).
COURSE_RECIPE: dict[str, Any] = {"optimizer": "adam", "schedule": "constant", "lr": 1e-3, "batch_size": 256,
                                  "patience": 5}


def glorot_limit(layer: nn.Conv2d | nn.Linear) -> float:
    """Keras' ``glorot_uniform`` bound sqrt(6 / (fan_in + fan_out)) for one layer, per tower.

    Keras counts a Conv2D's fans as kernel area × input channels and kernel area × filters of the layer
    itself; one of our grouped convolutions is ``groups`` Keras layers side by side (one per view), so
    both fans are per group. A Dense layer: inputs and units."""
    if isinstance(layer, nn.Conv2d):
        area = layer.kernel_size[0] * layer.kernel_size[1]
        fan_in = area * layer.in_channels // layer.groups
        fan_out = area * layer.out_channels // layer.groups
    else:
        fan_in, fan_out = layer.in_features, layer.out_features
    return math.sqrt(6.0 / (fan_in + fan_out))


def keras_init(layer: nn.Conv2d | nn.Linear) -> None:
    """Initialise a layer as Keras does by default: kernel ``glorot_uniform``, bias ``zeros``.

    Source: the Keras layer defaults (``Conv2D``, ``SeparableConv2D``, ``Dense``:
    ``kernel_initializer="glorot_uniform"``, ``bias_initializer="zeros"``; keras.io/api/layers). The course
    notebooks build their layers without naming an initialiser, so these are theirs. PyTorch's defaults
    differ (kaiming_uniform with a = √5, i.e. U(±1/√fan_in), and biases U(±1/√fan_in)): for the 15,360-input
    dense layer that is a bound of 0.008 against Keras' 0.0197, which makes the untrained network's
    outputs ~2.5× smaller and its first epochs slower."""
    bound = glorot_limit(layer)
    with torch.no_grad():
        layer.weight.uniform_(-bound, bound)
        if layer.bias is not None:
            layer.bias.zero_()


class CourseCNN(nn.Module):
    """The dual-input CNN of the NOvA course notebooks (the "seed analyses" of the real course files).

    Source: the seed analyses as described in issue 27 (the notebooks are not in this repository): per view,
    three blocks of conv → max-pool 2×2 → dropout with filters growing layer by layer (the notebook found
    growing filters better than shrinking ones); the two views' feature maps flattened and concatenated, one
    dense layer, dropout, and a softmax head (categorical cross-entropy; for ν_μ CC a 2-class softmax, the
    same model as one sigmoid output). Inputs scaled to [0, 1] by count / 255 (the 8-bit pixel's range).

    Our variant (the exact numbers are assumptions where the descriptions are silent): filters 16 → 32 → 64,
    kernels 5×5 then 3×3 ('same' padding, ReLU; the other notebook's wide first layer, 32 separable 7×7
    filters, is not used), dropout 0.25 after each block, dense 64 (ReLU), dropout 0.5. Per view 100×80 →
    50×40 → 25×20 → 12×10; flattened 2 × 64 × 12 × 10 = 15,360 features. 1.0 M parameters, ~98 % of them in
    the dense layer, as in a Keras Flatten → Dense network. No batch normalisation (the notebooks had none).
    The two towers are one grouped convolution (``groups=2``): channel block 0 only sees view 0, block 1
    only view 1. Weights start as Keras' would (:func:`keras_init`: glorot_uniform kernels per tower, zero
    biases), not PyTorch's defaults.

    Input scaling: the issue's recipe scales images to [0, 1]; count / 255 does that with the 8-bit range
    (a fixed map, as a notebook's ``X / 255``, not a per-event maximum). A public student notebook for the
    same course files (UCL PHAS0056 NOvA project) fed the raw uint8 counts to Keras unscaled: with zero
    biases, ReLU and max-pooling (positively homogeneous) that only multiplies the untrained network's
    logits by 255; we keep the [0, 1] scaling the issue names.
    """

    def __init__(self, n_out: int, cfg: CourseConfig = COURSE):
        super().__init__()
        v = fmt.VIEWS
        layers: list[nn.Module] = []
        c_in = 1
        planes, cells = fmt.PLANES, fmt.CELLS
        for f, k in zip(cfg.filters, cfg.kernels):
            layers += [nn.Conv2d(v * c_in, v * f, k, padding=k // 2, groups=v), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2), nn.Dropout(cfg.block_dropout)]
            c_in = f
            planes, cells = planes // 2, cells // 2
        self.towers = nn.Sequential(*layers)
        self.flat = v * c_in * planes * cells
        self.head = nn.Sequential(nn.Linear(self.flat, cfg.dense), nn.ReLU(inplace=True), nn.Dropout(cfg.dense_dropout),
                                  nn.Linear(cfg.dense, n_out))
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                keras_init(m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.towers(x.float() * (1.0 / MAX_COUNT))  # (N, 2F, 12, 10): channels [0, F) view 0, [F, 2F) view 1
        n, c = h.shape[:2]
        # Flatten view by view (each view's maps in a row, as a Keras Concatenate of two Flatten outputs).
        return self.head(h.reshape(n, fmt.VIEWS, c // fmt.VIEWS, -1).flatten(1))


# ----------------------------------------------------------------------------------------------
# A CVN-style residual network, sized for CPUs
@dataclass(frozen=True)
class CVNConfig:
    """The CVN-style network's sizes (per view until the fusion; see :class:`CVN`)."""

    stem: int = 16  # 5x5 stride-2 convolution
    widths: tuple[int, ...] = (32, 64)  # one stage each: a 3x3 stride-2 convolution, then residual blocks
    blocks: int = 1  # residual blocks per stage
    fused: int = 96  # after the views are joined: a 1x1 convolution to this width, then residual blocks
    fused_blocks: int = 1
    hidden: int = 128
    dropout: float = 0.3


CVN_SIZES = CVNConfig()


class ResBlock(nn.Module):
    """He et al.'s basic residual block (arXiv:1512.03385): x + BN(conv(ReLU(BN(conv(x))))), then ReLU;
    3x3 convolutions in ``groups`` independent channel blocks (groups=2: one per view)."""

    def __init__(self, c: int, groups: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c, c, 3, padding=1, groups=groups, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
            nn.Conv2d(c, c, 3, padding=1, groups=groups, bias=False), nn.BatchNorm2d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.body(x))


class CVN(nn.Module):
    """A CPU-sized network in the manner of NOvA's CVN: one residual tower per view, fused afterwards.

    Source: Aurisano et al., "A Convolutional Neural Network Neutrino Event Classifier", JINST 11 (2016)
    P09001, arXiv:1604.01444, Fig. 4: each view goes through its own stack (a 7x7 stride-2 convolution, pooling,
    1x1 and 3x3 convolutions, two inception modules), the two stacks' feature maps are concatenated, one more
    inception module sees both views, then average pooling and the softmax. CVN runs on GPUs (~2.5 M
    inception parameters per tower at 80x100); here the towers are residual blocks (He et al., arXiv:1512.03385,
    the successor of GoogLeNet's modules that later NOvA networks used) at widths a single CPU core trains in
    minutes. Shape (per view, both views as one grouped convolution, ``groups=2``, as :class:`DualViewCNN`):

    - stem: 5x5 stride-2 convolution, 16 filters, BN, ReLU: 100x80 -> 50x40;
    - stage 1: 3x3 stride-2 convolution to 32 filters (BN, ReLU), one residual block: 25x20;
    - stage 2: 3x3 stride-2 convolution to 64 filters (BN, ReLU), one residual block: 13x10;
    - fusion: the two views' 64 maps concatenated (2 x 64 channels), a 1x1 convolution to 96 (BN, ReLU) and one
      residual block over both views (CVN's joint inception module);
    - head: per channel the mean over the cells at each of the 13 plane positions (where along the beam the
      vertex and the track end are) and the maximum over the map: 96 x 14 = 1,344 features, dense 128, ReLU,
      dropout 0.3, the output layer. 330,000 parameters for 2 outputs.

    Inputs on a log scale (:func:`scale_pixels`), as :class:`DualViewCNN`: tracks (10-30 counts) and showers
    (up to 255) both in view. Assumed, not from the paper: the residual blocks, the widths, the stem's 5x5
    kernel (CVN: 7x7 on 80x100 maps), and the pooled head (CVN: average pooling of the joint maps).
    """

    def __init__(self, n_out: int, cfg: CVNConfig = CVN_SIZES):
        super().__init__()
        v = fmt.VIEWS
        towers: list[nn.Module] = [_conv(1, cfg.stem, 5, 2)]
        c_in = cfg.stem
        for width in cfg.widths:
            towers.append(_conv(c_in, width, 3, 2))
            towers += [ResBlock(v * width, groups=v) for _ in range(cfg.blocks)]
            c_in = width
        self.towers = nn.Sequential(*towers)  # (N, 2 * width, planes, cells): views in channel blocks 0 and 1
        self.fusion = nn.Sequential(
            nn.Conv2d(v * c_in, cfg.fused, 1, bias=False), nn.BatchNorm2d(cfg.fused), nn.ReLU(inplace=True),
            *(ResBlock(cfg.fused, groups=1) for _ in range(cfg.fused_blocks)))
        planes = fmt.PLANES
        for _ in range(1 + len(cfg.widths)):  # each stride-2 convolution halves the planes (rounding up)
            planes = (planes + 1) // 2
        self.head = nn.Sequential(nn.Linear(cfg.fused * (planes + 1), cfg.hidden), nn.ReLU(inplace=True),
                                  nn.Dropout(cfg.dropout), nn.Linear(cfg.hidden, n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fusion(self.towers(scale_pixels(x)))  # (N, fused, 13, 10)
        return self.head(torch.cat([h.mean(dim=3).flatten(1), h.amax(dim=(2, 3))], dim=1))


SUMMARY_FEATURES = tuple(
    f"{name}_{v}" for v in ("xz", "yz")
    for name in ("log_counts", "log_hits", "log_max", "width", "cell_rms", "mean_plane", "track_planes"))
SUMMARY_FEATURES += ("plane_extent", "first_plane", "late_fraction", "counts_per_hit")


def summary_features(x: torch.Tensor) -> torch.Tensor:
    """A few physics summaries of each event's views (N, len(SUMMARY_FEATURES)): the baseline's inputs.

    Per view: total counts, hit pixels and the brightest pixel (logs), mean hit cells per hit plane
    (track-like events are thin), the charge-weighted cell spread, charge-weighted mean plane behind
    the first hit, the fraction of hit planes with at most two hit cells; for the event: plane extent,
    first hit plane, fraction of charge more than 20 planes behind the first hit, counts per hit.
    """
    c = x.float()  # (N, 2, P, C)
    hit = c > 0
    n, planes, cells = c.shape[0], c.shape[2], c.shape[3]
    plane_idx = torch.arange(planes, dtype=torch.float32, device=x.device).view(1, 1, planes)
    cell_idx = torch.arange(cells, dtype=torch.float32, device=x.device).view(1, 1, 1, cells)
    counts = c.sum(dim=(2, 3))  # (N, 2)
    hits = hit.sum(dim=(2, 3)).float()
    per_plane = c.sum(dim=3)  # (N, 2, P)
    cells_per_plane = hit.sum(dim=3).float()
    hit_planes = (cells_per_plane > 0).float()
    n_hit_planes = hit_planes.sum(dim=2).clamp(min=1)
    width = cells_per_plane.sum(dim=2) / n_hit_planes
    track_planes = ((cells_per_plane > 0) & (cells_per_plane <= 2)).float().sum(dim=2) / n_hit_planes
    safe = counts.clamp(min=1)
    mean_cell = (c * cell_idx).sum(dim=(2, 3)) / safe
    cell_rms = ((c * (cell_idx - mean_cell.view(n, 2, 1, 1)) ** 2).sum(dim=(2, 3)) / safe).sqrt()
    any_plane = hit_planes.amax(dim=1)  # (N, P): a hit in either view
    has_any = any_plane.sum(dim=1) > 0
    first = torch.where(has_any, any_plane.argmax(dim=1).float(), torch.zeros(n, device=x.device))
    last = torch.where(has_any, planes - 1 - any_plane.flip(1).argmax(dim=1).float(), torch.zeros(n, device=x.device))
    extent = torch.where(has_any, last - first + 1, torch.zeros(n, device=x.device))
    rel = plane_idx - first.view(n, 1, 1)
    mean_plane = (per_plane * rel).sum(dim=2) / safe
    total = counts.sum(dim=1)
    late = (per_plane * (rel > 20).float()).sum(dim=(1, 2)) / total.clamp(min=1)
    per_view = torch.stack([torch.log1p(counts), torch.log1p(hits), torch.log1p(c.amax(dim=(2, 3))), width / 10,
                            cell_rms / 10, mean_plane / 20, track_planes], dim=2)  # (N, 2, 7)
    event = torch.stack([extent / 50, first / 50, late, total / hits.sum(dim=1).clamp(min=1) / 50], dim=1)
    return torch.cat([per_view.reshape(n, -1), event], dim=1)


class SummaryLinear(nn.Module):
    """The cheap baseline: standardised summary features → a linear layer (logistic/softmax regression)."""

    def __init__(self, n_out: int):
        super().__init__()
        self.norm = nn.BatchNorm1d(len(SUMMARY_FEATURES))  # learns the features' mean and spread
        self.linear = nn.Linear(len(SUMMARY_FEATURES), n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(summary_features(x)))


def build(model: str, n_out: int, sizes: dict[str, Any] | None = None) -> nn.Module:
    """The named model ('baseline', 'course-cnn', 'cvn', or a CNN size; ``sizes`` overrides a CNN's layer sizes)."""
    if model == BASELINE:
        return SummaryLinear(n_out)
    if model == COURSE_CNN:
        return CourseCNN(n_out)
    if model == CVN_NAME:
        return CVN(n_out)
    cfg = CNNConfig.from_dict(sizes) if sizes else SIZES[model]
    return DualViewCNN(cfg, n_out)


def n_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
