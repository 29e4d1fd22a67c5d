"""Direction models for IceCube events: a DynEdge-class graph network, its pure-torch k-NN, the vMF loss.

Read top to bottom: how a batch of events is packed, the k-nearest-neighbour search, one EdgeConv
layer, the DynEdge network (GraphNeT's competition benchmark shape, or a small CPU-friendly one), its
LineFit-seeded refinement, and the von Mises–Fisher loss on the unit sphere.

Events of a batch are *packed*: one (P, F) node matrix for all pulses, ``ptr`` marking where each
event starts (PyG's layout). The k-NN groups events of similar length and pads each group only to
its own longest event, so a batch never pays for its single 256-pulse event on every small one.
Neighbour lists are dense (P, k) index tensors with a validity mask, so message passing is a gather
and a masked sum: no torch-cluster, torch-scatter or pyg-lib needed.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import global_max_pool, global_mean_pool

from neutrino_ray.icecube.architectures import GNN_SIZES, N_NEIGHBOURS, DynEdgeConfig
from neutrino_ray.icecube.features import N_FEATURES, POSITION_SCALE, TIME_SCALE
from neutrino_ray.icecube.linefit import MIN_HLC_PULSES

KNN_FEATURES = 4  # later layers: k-NN on the first four latent features (the first graph: on x, y, z)
N_GLOBAL = 4 + N_FEATURES + 1  # homophily of x, y, z, t; feature means; log10 of the pulse count
MICROSECONDS_PER_UNIT = TIME_SCALE / 1000.0  # the time feature's unit in µs
FIRST_GRAPH_TIME_WEIGHT = 1e-4  # pulses on one DOM share x, y, z: their time (µs) orders them, 0.05 m per µs


# ---------------------------------------------------------------------------------------------------
# Packing and k-nearest neighbours


@dataclass
class Groups:
    """Events of one batch grouped by length for padded, batched distance computations.

    Each group holds ``node`` (b, L) indices into the packed nodes of b events padded to the group's
    longest event L, ``real`` (b, L) marking real (not padding) slots, ``events`` (b) the events'
    indices in the batch, and ``slots`` the flat indices of the real slots in (b·L) (what ``real`` selects,
    as an index: no device-to-host synchronisation to use it).
    """

    node: list[Tensor]
    real: list[Tensor]
    events: list[Tensor]
    slots: list[Tensor]


def host_offsets(ptr: Tensor, host_ptr: np.ndarray | None) -> np.ndarray:
    """The event offsets on the host: ``host_ptr`` when the caller has them (collate does), else copied
    from ``ptr`` (one synchronisation)."""
    return np.asarray(host_ptr, dtype=np.int64) if host_ptr is not None else ptr.cpu().numpy()


def group_events(ptr: Tensor, max_elements: int = 1 << 22, per_octave: int = 2,
                 host_ptr: np.ndarray | None = None) -> Groups:
    """Group events whose lengths are within a factor 2^(1/per_octave) of each other, each group
    ≤ max_elements b·L² (a longer event is a group of its own).

    The grouping is decided on the host from ``host_ptr`` (the offsets collate already has): on a GPU,
    no device-to-host synchronisation; only index tensors travel to the device."""
    counts_host = np.diff(host_offsets(ptr, host_ptr))
    order_host = np.argsort(counts_host, kind="stable")
    sorted_counts = counts_host[order_host]
    # Length classes (half-octave by default): padding costs at most 2× in the b·L² distance matrices.
    cls = np.ceil(per_octave * np.log2(np.maximum(sorted_counts, 1).astype(np.float64))).astype(np.int64)
    bounds = (np.flatnonzero(cls[1:] != cls[:-1]) + 1).tolist()
    device = ptr.device
    counts = ptr[1:] - ptr[:-1]
    order = torch.from_numpy(order_host).to(device)
    node, real, events, slots = [], [], [], []
    for lo, hi in zip([0, *bounds], [*bounds, len(order_host)]):
        length = int(sorted_counts[hi - 1])
        step = max(1, max_elements // max(1, length * length))
        for a in range(lo, hi, step):  # chunks of a class: bounded memory, not a loop over events
            b = min(hi, a + step)
            ev = order[a:b]
            slot = torch.arange(length, device=device)
            is_real = slot[None, :] < counts[ev][:, None]
            idx = ptr[ev][:, None] + slot[None, :]
            node.append(torch.where(is_real, idx, ptr[ev][:, None]))  # padding points at the event's first node
            real.append(is_real)
            events.append(ev)
            real_host = np.arange(length)[None, :] < sorted_counts[a:b, None]
            slots.append(torch.from_numpy(np.flatnonzero(real_host)).to(device))
    return Groups(node, real, events, slots)


def short_nodes(ptr: Tensor, host_ptr: np.ndarray | None, k: int) -> Tensor:
    """Indices of the nodes of events with ≤ k pulses (fewer than k neighbours), from the host offsets."""
    host = host_offsets(ptr, host_ptr)
    counts = np.diff(host)
    short = np.flatnonzero(counts <= k)
    if not len(short):
        return torch.zeros(0, dtype=torch.long, device=ptr.device)
    lengths = counts[short]
    starts = np.repeat(host[:-1][short] - np.cumsum(lengths) + lengths, lengths)
    return torch.from_numpy(starts + np.arange(lengths.sum())).to(ptr.device)


def knn(x: Tensor, groups: Groups, k: int = N_NEIGHBOURS) -> tuple[Tensor, Tensor]:
    """The k nearest other nodes of each node within its own event (Euclidean distance in ``x``).

    Returns ``neighbours`` (P, k) global node indices and ``valid`` (P, k): an event with n ≤ k pulses
    gives each node only its n − 1 others (a one-pulse event has none), as torch-cluster's knn_graph
    with ``loop=False`` does.
    """
    n_nodes = x.shape[0]
    neighbours = torch.zeros(n_nodes, k, dtype=torch.long, device=x.device)
    valid = torch.zeros(n_nodes, k, dtype=torch.bool, device=x.device)
    x = x.detach().float()
    for node, real, slots in zip(groups.node, groups.real, groups.slots):
        xs = x[node]  # (b, L, d)
        # Distances pair by pair, not via a matmul whose rounding depends on the batch's shape: an event's
        # neighbours do not depend on what else is in the batch.
        d = torch.cdist(xs, xs, compute_mode="donot_use_mm_for_euclid_dist")
        d.masked_fill_(~real[:, None, :], math.inf)
        d.diagonal(dim1=1, dim2=2).fill_(math.inf)  # no self-loops
        kk = min(k, node.shape[1])
        dist, j = torch.topk(d, kk, dim=-1, largest=False)  # (b, L, kk)
        nb = torch.gather(node, 1, j.flatten(1)).view_as(j)
        ok = torch.isfinite(dist)
        rows = node.flatten()[slots]  # node[real], without a synchronisation
        neighbours[rows, :kk] = nb.flatten(0, 1)[slots]
        valid[rows, :kk] = ok.flatten(0, 1)[slots]
    return neighbours, valid


# ---------------------------------------------------------------------------------------------------
# Layers


def mlp(sizes: list[int], activate_last: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if activate_last or i < len(sizes) - 2:
            layers.append(nn.LeakyReLU(inplace=True))
    return nn.Sequential(*layers)


class EdgeConv(nn.Module):
    """h_i = Σ_j MLP([x_i, x_j − x_i]) over the neighbours j of i (GraphNeT's DynEdgeConv, sum aggregation).

    The first linear layer is split algebraically, W·[x_i, x_j − x_i] = (W_a − W_b)·x_i + W_b·x_j, so it
    runs once per node instead of once per edge; the weights are exactly those of the concatenated form.
    """

    def __init__(self, n_in: int, sizes: tuple[int, ...]):
        super().__init__()
        self.first = nn.Linear(2 * n_in, sizes[0])
        self.rest = mlp([sizes[0], *sizes[1:]])
        self.n_in = n_in

    def forward(self, x: Tensor, neighbours: Tensor, valid: Tensor, short: Tensor | None = None) -> Tensor:
        """``short``: the nodes with missing neighbours (:func:`short_nodes`; found from ``valid`` when not
        given, at the cost of a device-to-host synchronisation)."""
        w_i, w_j = self.first.weight[:, :self.n_in], self.first.weight[:, self.n_in:]
        own = F.linear(x, w_i - w_j, self.first.bias)  # (P, H)
        other = F.linear(x, w_j)  # (P, H)
        h = F.leaky_relu_(own[:, None, :] + other[neighbours])  # (P, k, H)
        h = self.rest(h)
        out = h.sum(dim=1)
        # Only nodes of events with ≤ k pulses have missing neighbours: take their slots back out.
        if short is None:
            short = torch.nonzero(~valid.all(dim=1)).flatten()
        if len(short):
            out = out.index_add(0, short, -(h[short] * (~valid[short])[:, :, None].to(h.dtype)).sum(dim=1))
        return out


# ---------------------------------------------------------------------------------------------------
# The network


SIZES = GNN_SIZES  # the named shapes (architectures.py, torch-free)


class DynEdge(nn.Module):
    """Pulses → direction vector whose length is the vMF concentration κ.

    Node inputs are the pulse features, with time made relative to the event's mean time and in µs
    (differences of tens of ns carry the direction; absolute times do not), plus per-event globals:
    homophily of x, y, z, t on the first k-NN graph (built on positions, as GraphNeT's KNNGraph, with
    time as a tie-breaker between pulses on one DOM),
    feature means, and log10 of the event's total pulse count. Each EdgeConv recomputes the k-NN graph
    on the first four features of its input, so the graph follows the learned space; the outputs of all
    layers are concatenated (skip connections), post-processed per node, pooled per event with min,
    max and mean, and read out to a 3-vector.
    """

    def __init__(self, cfg: DynEdgeConfig, n_features: int = N_FEATURES):
        super().__init__()
        self.cfg = cfg
        n_in = 2 * n_features + N_GLOBAL - N_FEATURES  # the features, then the globals (a mean of each feature)
        self.convs = nn.ModuleList()
        width = n_in
        for sizes in cfg.conv:
            self.convs.append(EdgeConv(width, sizes))
            width = sizes[-1]
        self.post = mlp([n_in + sum(s[-1] for s in cfg.conv), *cfg.post])
        self.readout = mlp([3 * cfg.post[-1], *cfg.readout])
        self.head = nn.Linear(cfg.readout[-1], 3)

    def forward(self, x: Tensor, ptr: Tensor, n_pulses: Tensor, host_ptr: np.ndarray | None = None) -> Tensor:
        """x (P, F) packed pulse features, ptr (B + 1) event starts, n_pulses (B) pulses before the cap;
        ``host_ptr``: ptr on the host, when the caller has it (no device-to-host synchronisation then)."""
        h, batch = self.nodes(x, ptr, n_pulses, host_ptr)
        return self.head(self.pool(h, batch, ptr.shape[0] - 1))

    def pool(self, h: Tensor, batch: Tensor, n_events: int) -> Tensor:
        """Node states (P, post[-1]) → per-event readout (B, readout[-1]): min, max and mean pooled."""
        pooled = torch.cat([-global_max_pool(-h, batch, n_events), global_max_pool(h, batch, n_events),
                            global_mean_pool(h, batch, n_events)], dim=1)
        return self.readout(pooled)

    def nodes(self, x: Tensor, ptr: Tensor, n_pulses: Tensor, host_ptr: np.ndarray | None = None
              ) -> tuple[Tensor, Tensor]:
        """The post-processed node states (P, post[-1]) and each node's event index (P)."""
        n_events = ptr.shape[0] - 1
        counts = ptr[1:] - ptr[:-1]
        batch = torch.repeat_interleave(torch.arange(n_events, device=x.device), counts, output_size=x.shape[0])
        host_ptr = host_offsets(ptr, host_ptr)
        groups = group_events(ptr, host_ptr=host_ptr)
        short = short_nodes(ptr, host_ptr, self.cfg.k)
        t = x[:, 3]
        t_rel = (t - global_mean_pool(t[:, None], batch, n_events)[batch, 0]) * MICROSECONDS_PER_UNIT
        x = torch.cat([x[:, :3], t_rel[:, None], x[:, 4:]], dim=1)
        first_graph = torch.cat([x[:, :3], FIRST_GRAPH_TIME_WEIGHT * x[:, 3:4]], dim=1)
        neighbours, valid = knn(first_graph, groups, self.cfg.k)
        h = torch.cat([x, global_variables(x, batch, neighbours, valid, n_pulses, n_events)[batch]], dim=1)
        skips = [h]
        for i, conv in enumerate(self.convs):
            h = conv(h, neighbours, valid, short)
            skips.append(h)
            if i < len(self.convs) - 1:
                neighbours, valid = knn(h[:, :KNN_FEATURES], groups, self.cfg.k)
        return self.post(torch.cat(skips, dim=1)), batch


def global_variables(x: Tensor, batch: Tensor, neighbours: Tensor, valid: Tensor, n_pulses: Tensor,
                     n_events: int) -> Tensor:
    """(B, N_GLOBAL): edge homophily of x, y, z, t; mean of each feature; log10 of the pulse count."""
    same = (x[:, None, :4] == x[neighbours][:, :, :4]) & valid[:, :, None]
    same_per_event = torch.zeros(n_events, 4, device=x.device, dtype=x.dtype).index_add_(
        0, batch, same.sum(1).to(x.dtype))
    edges = torch.zeros(n_events, device=x.device, dtype=x.dtype).index_add_(0, batch, valid.sum(1).to(x.dtype))
    homophily = same_per_event / edges.clamp(min=1)[:, None]
    means = global_mean_pool(x, batch, n_events)
    log_n = torch.log10(n_pulses.to(x.dtype).clamp(min=1))[:, None]
    return torch.cat([homophily, means, log_n], dim=1)


# ---------------------------------------------------------------------------------------------------
# The LineFit-seeded refinement

C_VACUUM_M_PER_NS = 0.299792458
SEED_TIME_SCALE = 100.0  # ns: time residuals enter as asinh(τ / 100 ns): tens of ns resolved, µs of noise bounded
SEED_FEATURES = 7  # per pulse: the seed (3); its position along the seed's track and across it (2); τ


def seed_frame(seed: Tensor) -> tuple[Tensor, Tensor]:
    """Two unit vectors (B, 3) spanning the plane perpendicular to each unit ``seed``: e1 horizontal (ẑ × seed,
    or x̂ for a vertical seed), e2 = seed × e1."""
    e1 = torch.cross(torch.tensor([0.0, 0.0, 1.0], device=seed.device, dtype=seed.dtype).expand_as(seed), seed, dim=1)
    flat = e1.norm(dim=1, keepdim=True) < 1e-6
    e1 = torch.where(flat, torch.tensor([1.0, 0.0, 0.0], device=seed.device, dtype=seed.dtype), e1)
    e1 = F.normalize(e1, dim=1)
    return e1, torch.cross(seed, e1, dim=1)


def seed_features(x: Tensor, seed: Tensor, e1: Tensor, e2: Tensor, batch: Tensor, n_events: int) -> Tensor:
    """(P, SEED_FEATURES): each pulse seen from its event's seed track. The particle moves along −seed; a pulse at
    r has ``along`` = −seed·r and coordinates (e1·r, e2·r) across the track (the position scale), and the
    plane-wave time residual τ = t − along / c, relative to its event's mean τ over non-auxiliary pulses (all
    pulses where it has none), as asinh(τ / SEED_TIME_SCALE). For the true direction τ is flat across the track
    up to the Cherenkov delays; a tilt of the seed by δ shows as a gradient δ·r⊥ / c across it."""
    s, a, b = seed[batch], e1[batch], e2[batch]
    r = x[:, :3]
    along = -(r * s).sum(1)
    tau = (x[:, 3] * TIME_SCALE) - along * (POSITION_SCALE / C_VACUUM_M_PER_NS)  # ns (up to a per-event offset)
    w = 1.0 - x[:, 5]
    n_hlc = torch.zeros(n_events, device=x.device, dtype=x.dtype).index_add_(0, batch, w)
    w = torch.where(n_hlc[batch] > 0, w, torch.ones_like(w))
    sw = torch.zeros(n_events, device=x.device, dtype=x.dtype).index_add_(0, batch, w)
    mean = torch.zeros(n_events, device=x.device, dtype=x.dtype).index_add_(0, batch, w * tau) / sw.clamp(min=1e-6)
    tau = torch.asinh((tau - mean[batch]) / SEED_TIME_SCALE)
    return torch.cat([s, along[:, None], (r * a).sum(1, keepdim=True), (r * b).sum(1, keepdim=True), tau[:, None]],
                     dim=1)


def weighted_linefit(x: Tensor, w: Tensor, batch: Tensor, n_events: int, eps: float = 1e-12) -> tuple[Tensor, Tensor]:
    """LineFit with per-pulse weights ``w`` on packed features (the least-squares line r(t) = r0 + v·t of
    :func:`neutrino_ray.icecube.linefit.linefit`, differentiable in ``w``): (the unit direction −v/|v| (B, 3),
    whether the fit is defined (B)). Positions and times stay in feature units: one positive scale each, which
    changes |v| but not its direction."""
    def per_event(values: Tensor) -> Tensor:
        return torch.zeros((n_events, *values.shape[1:]), device=x.device, dtype=x.dtype).index_add_(0, batch, values)

    sw = per_event(w).clamp(min=eps)
    t = x[:, 3]
    dt = t - (per_event(w * t) / sw)[batch]
    dr = x[:, :3] - (per_event(w[:, None] * x[:, :3]) / sw[:, None])[batch]
    var_t = per_event(w * dt * dt)
    v = per_event((w * dt)[:, None] * dr) / var_t.clamp(min=eps)[:, None]
    speed = v.norm(dim=1)
    ok = (var_t > eps) & (speed > eps)
    return -v / speed.clamp(min=eps)[:, None], ok


def kaggle_weights(x: Tensor, batch: Tensor, n_events: int) -> Tensor:
    """The Kaggle LineFit's pulses as 0/1 weights on packed features: the non-auxiliary ones, or every pulse of an
    event with fewer than 2 of them (:func:`neutrino_ray.icecube.linefit.hlc_or_all`; its 800-pulse charge cap
    never binds under the models' pulse caps)."""
    hlc = 1.0 - x[:, 5]
    n_hlc = torch.zeros(n_events, device=x.device, dtype=x.dtype).index_add_(0, batch, hlc)
    return torch.where(n_hlc[batch] < MIN_HLC_PULSES, torch.ones_like(hlc), hlc)


class SeededDynEdge(nn.Module):
    """LineFit with learned pulse weights, started from the event's Kaggle LineFit direction (the *seed*), as
    IceCube's own reconstructions start from LineFit (Aartsen et al., NIM A 736 (2014) 143).

    A DynEdge reads the pulses plus :func:`seed_features` (each pulse seen from the seed's track) and gives every
    pulse a weight factor 2·σ(h) (1 at the start) on its Kaggle LineFit weight. The direction is the seed moved by
    what the reweighting changes in a LineFit of the model's pulses, μ = normalise(seed + d(w) − d(w₀)), with
    d(w) the weighted fit's direction (:func:`weighted_linefit`) and w₀ the Kaggle weights (:func:`kaggle_weights`);
    κ = exp(log κ₀ + c) from the pooled event state. Down-weighting late, scattered light is what IceCube's
    improved LineFit does by a fixed rule (``linefit-clean``); here the rule is learned. The heads that give h and
    c start at zero, so the untrained model returns the seed exactly (κ = 1), and training moves away from the
    LineFit score only by lowering the loss. Output: the direction as a vector of length κ, as :class:`DynEdge`."""

    def __init__(self, cfg: DynEdgeConfig):
        super().__init__()
        self.cfg = cfg
        self.net = DynEdge(cfg, n_features=N_FEATURES + SEED_FEATURES)
        self.net.head = nn.Linear(cfg.readout[-1], 1)  # c: log κ relative to log κ₀
        self.pulse_head = nn.Linear(cfg.post[-1], 1)  # h: each pulse's log-odds weight factor
        for layer in (self.net.head, self.pulse_head):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        self.log_kappa = nn.Parameter(torch.zeros(()))

    def forward(self, x: Tensor, ptr: Tensor, n_pulses: Tensor, host_ptr: np.ndarray | None = None,
                seed: Tensor | None = None) -> Tensor:
        """As :meth:`DynEdge.forward`, with ``seed`` (B, 3): the events' unit Kaggle LineFit directions."""
        if seed is None:
            raise ValueError("a seeded model needs the events' LineFit directions (the featurised 'seed' column)")
        n_events = ptr.shape[0] - 1
        batch = torch.repeat_interleave(torch.arange(n_events, device=x.device), ptr[1:] - ptr[:-1],
                                        output_size=x.shape[0])
        seed = seed.to(x.dtype)
        e1, e2 = seed_frame(seed)
        h, _ = self.net.nodes(torch.cat([x, seed_features(x, seed, e1, e2, batch, n_events)], dim=1), ptr, n_pulses,
                              host_ptr)
        w0 = kaggle_weights(x, batch, n_events)
        d_w, ok = weighted_linefit(x, w0 * 2 * torch.sigmoid(self.pulse_head(h)[:, 0]), batch, n_events)
        with torch.no_grad():
            d_0, ok_0 = weighted_linefit(x, w0, batch, n_events)
        step = torch.where((ok & ok_0)[:, None], d_w - d_0, torch.zeros_like(d_w))
        kappa = torch.exp(self.log_kappa + self.net.head(self.net.pool(h, batch, n_events))[:, 0])
        return kappa[:, None] * F.normalize(seed + step, dim=1)


def build_model(size: str | DynEdgeConfig) -> DynEdge | SeededDynEdge:
    cfg = SIZES[size] if isinstance(size, str) else size
    return SeededDynEdge(cfg) if cfg.seeded else DynEdge(cfg)


def n_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------------
# Loss


def log_c3(kappa: Tensor) -> Tensor:
    """log of the 3-D von Mises–Fisher normalisation κ / (4π sinh κ), stable for tiny and huge κ.

    4π sinh κ = 2π e^κ (1 − e^−2κ), so log C = log κ − log 2π − κ − log(−expm1(−2κ)).
    """
    return torch.log(kappa) - math.log(2 * math.pi) - kappa - torch.log(-torch.expm1(-2 * kappa))


def split_output(v: Tensor, eps: float = 1e-8) -> tuple[Tensor, Tensor]:
    """Model output → (unit direction, κ)."""
    kappa = torch.sqrt((v * v).sum(-1) + eps * eps)
    return v / kappa[:, None], kappa


def vmf_nll(v: Tensor, target: Tensor) -> Tensor:
    """Per-event negative log-likelihood of unit ``target`` under vMF(μ = v/|v|, κ = |v|)."""
    _, kappa = split_output(v)
    return -log_c3(kappa) - (v * target).sum(-1)


def angular_error(v: Tensor, target: Tensor) -> Tensor:
    """Angle (rad) between the predicted direction and the unit ``target``."""
    mu, _ = split_output(v)
    return torch.acos(torch.clamp((mu * target).sum(-1), -1 + 1e-7, 1 - 1e-7))


LOSSES = ("vmf", "vmf+angle")


def direction_loss(v: Tensor, target: Tensor, kind: str = "vmf") -> Tensor:
    """Mean loss over the batch: the vMF NLL, optionally plus the angular distance (rad)."""
    loss = vmf_nll(v, target)
    if kind == "vmf+angle":
        loss = loss + angular_error(v, target)
    elif kind != "vmf":
        raise ValueError(f"unknown loss {kind!r}; expected one of {LOSSES}")
    return loss.mean()
