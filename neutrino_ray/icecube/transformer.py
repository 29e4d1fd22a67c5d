"""An IceMix/DeepIce-class transformer for IceCube directions, over packed events without batch-wide padding.

Read top to bottom: the model's shapes, the inputs (pulse features, ice at the DOM's depth, log pulse
count) and their Fourier embedding, the relative space-time embedding of every pulse pair, the two
block kinds (with the space-time bias, and plain), and the network that runs them on chunks of events
of similar length.

The design follows the Kaggle 2nd-place IceMix model (``DrHB/icecube-2nd-place``; GraphNeT's
``DeepIce``): sinusoidal embeddings of position (×4096 in units of 500 m), time (×4096 in units of
30 µs), charge (×1024 in log10 / 3) and log10 of the pulse count, a learned embedding of the auxiliary
flag, then ``depth_rel`` blocks whose attention logits and values carry a relative bias built from the
interval ds² = |Δr|² − (c·Δt)² of each pulse pair, then a CLS token and ``depth`` plain pre-norm blocks,
and a linear head on the CLS token: a 3-vector whose length is the vMF concentration κ (the same head
and loss as :class:`~neutrino_ray.icecube.models.DynEdge`).

What differs from GraphNeT's ``DeepIce``, and why:
- **No padding to the batch's longest event.** The batch stays packed (one (P, F) pulse matrix and
  ``ptr``, PyG's layout); the encoder runs on *chunks* of events of similar length (quarter-octave
  length classes, :func:`~neutrino_ray.icecube.models.group_events`), each padded only to its own
  longest event and masked. An event's result does not depend on what else is in its batch.
- **The space-time bias is never materialised per head.** IceMix adds q_i·R_ij to the logits and
  Σ_j a_ij R_ij to the values, with R_ij = W φ(s_ij) + b a projection of the sinusoidal embedding φ of
  the signed interval s_ij. Both are linear in R, so they are computed as (W^T q_i)·φ_ij + q_i·b and
  W (Σ_j a_ij φ_ij) + b: only φ (b, L, L, head_size) exists, once per chunk for all ``depth_rel``
  blocks, never R. A chunk holds at most ``CHUNK_BUDGET`` elements of b·L²·(head_size + heads), so
  peak attention memory is bounded by the chunk, not the batch (one event longer than the budget is a
  chunk of its own).
- **Ice**: effective scattering and absorption lengths at the DOM's depth (the shipped SPICE table,
  a buffer of the model, so an artefact carries the table it was trained with) join the pulse inputs,
  as in GraphNeT's ``DeepIceWithDynEdge``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from neutrino_ray.icecube.architectures import TRANSFORMER_SIZES, TransformerConfig
from neutrino_ray.icecube.features import POSITION_SCALE, TIME_SCALE
from neutrino_ray.icecube.geometry import ORIGIN_DEPTH, south_pole_ice
from neutrino_ray.icecube.models import MICROSECONDS_PER_UNIT, group_events

N_RAW = 9  # x, y, z (per 125 m), t (µs), each from the event's mean; log charge, auxiliary, two log ice
# lengths, log pulse count
ICE_LOG_CENTRE = (math.log(25.0), math.log(100.0))  # typical scattering, absorption lengths (m)
LIGHT_SPEED = 0.3  # m/ns, as IceMix
TIME_TO_POSITION = TIME_SCALE * LIGHT_SPEED / POSITION_SCALE  # time feature unit → position feature unit
CHUNK_BUDGET = 1 << 23  # elements of b·L²·(head_size + heads) per chunk: 32 MiB per float32 tensor
LENGTH_CLASSES_PER_OCTAVE = 4  # chunks of events within a factor 2^(1/4) in length: < 19 % padding


# ---------------------------------------------------------------------------------------------------
# Shapes: the named ones live in architectures.py (torch-free, for the CLI)

SIZES = TRANSFORMER_SIZES


# ---------------------------------------------------------------------------------------------------
# Inputs and their embedding


def sinusoidal(x: Tensor, dim: int) -> Tensor:
    """(..., dim) sin/cos embedding with periods 2π … 2π·10⁴ (the transformer's positional encoding)."""
    half = dim // 2
    dtype = torch.promote_types(x.dtype, torch.float32)  # float32, or float64 for float64 inputs
    freqs = torch.exp(torch.arange(half, device=x.device, dtype=dtype) * (-math.log(10_000) / (half - 1)))
    arg = x.to(dtype)[..., None] * freqs
    out = torch.empty((*x.shape, 2 * half), dtype=dtype, device=x.device)
    torch.sin(arg, out=out[..., :half])
    torch.cos(arg, out=out[..., half:])
    return out


class Embedding(nn.Module):
    """Per pulse: Fourier embeddings of x, y, z, time (relative to the event's mean), charge, the ice's
    log scattering and absorption lengths at the DOM, log10 of the event's pulse count; a learned
    embedding of the auxiliary flag; then an MLP (Linear, LayerNorm, GELU, Linear) to the hidden width."""

    ice_depth: Tensor
    ice_log_lengths: Tensor

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        ice = south_pole_ice()
        self.register_buffer("ice_depth", torch.tensor(ice.depth, dtype=torch.float32))
        self.register_buffer("ice_log_lengths", torch.tensor(
            np.log(np.stack([ice.scattering_len, ice.absorption_len], axis=1)), dtype=torch.float32))
        self.fourier = cfg.fourier
        self.aux = nn.Embedding(2, cfg.fourier // 2)
        n_in = 3 * cfg.fourier + cfg.fourier + cfg.fourier + cfg.fourier + cfg.fourier // 2 + cfg.fourier // 2 + N_RAW
        self.mlp = nn.Sequential(nn.Linear(n_in, cfg.fourier_mlp), nn.LayerNorm(cfg.fourier_mlp), nn.GELU(),
                                 nn.Linear(cfg.fourier_mlp, cfg.hidden))

    def ice_at(self, z: Tensor) -> Tensor:
        """(P, 2) log effective scattering and absorption lengths (m) at detector z (feature units): the
        logs interpolated linearly in depth, held constant beyond the table."""
        depth = ORIGIN_DEPTH - z.to(self.ice_depth.dtype) * POSITION_SCALE
        depth = depth.clamp(self.ice_depth[0], self.ice_depth[-1])
        i = torch.searchsorted(self.ice_depth, depth).clamp(1, len(self.ice_depth) - 1)
        d0, d1 = self.ice_depth[i - 1], self.ice_depth[i]
        w = ((depth - d0) / (d1 - d0))[:, None]
        return self.ice_log_lengths[i - 1] * (1 - w) + self.ice_log_lengths[i] * w

    def forward(self, x: Tensor, r_rel: Tensor, t_rel: Tensor, log_n: Tensor) -> Tensor:
        """x (P, 6) pulse features, r_rel (P, 3) and t_rel (P) position and time relative to the event's
        mean (feature units), log_n (P) log10 of the event's pulse count."""
        f = self.fourier
        ice = self.ice_at(x[:, 2])
        h = torch.cat([
            sinusoidal(4096 * x[:, :3], f).flatten(1),  # position
            sinusoidal(4096 * t_rel, f),  # time
            sinusoidal(1024 * x[:, 4], f),  # charge
            sinusoidal(256 * ice, f // 2).flatten(1),  # ice: log scattering and absorption lengths
            sinusoidal(256 * log_n, f // 2),  # log10 pulse count of the event
            self.aux(x[:, 5].long()),  # auxiliary flag
            # The same quantities as plain numbers of order one: a linear path the first steps can use.
            r_rel * 4, (t_rel * MICROSECONDS_PER_UNIT)[:, None], x[:, 4:6], ice - ice.new_tensor(ICE_LOG_CENTRE),
            log_n[:, None] - 2,
        ], dim=1)
        return self.mlp(h)


def spacetime_embedding(pos: Tensor, t: Tensor, dim: int) -> Tensor:
    """(b, L, L, dim) sinusoidal embedding of s_ij = sign(ds²)·√|ds²|, ds² = |r_i − r_j|² − (c·(t_i − t_j))²,
    in units of 500 m, clipped at ±4 (2 km) and scaled by 1024 (IceMix's encoding). No gradient flows
    into it: its inputs are data."""
    with torch.no_grad():
        dtype = torch.promote_types(pos.dtype, torch.float32)  # bf16 inputs are computed in float32
        pos, t = pos.to(dtype), t.to(dtype)
        dr2 = (pos[:, :, None, :] - pos[:, None, :, :]).pow(2).sum(-1)
        dt2 = ((t[:, :, None] - t[:, None, :]) * TIME_TO_POSITION).pow(2)
        ds2 = dr2 - dt2
        s = torch.sign(ds2) * torch.sqrt(ds2.abs())
        return sinusoidal(1024 * s.clamp(-4, 4), dim)


# ---------------------------------------------------------------------------------------------------
# Chunks of a token matrix


@dataclass
class Layout:
    """Where the rows of a token matrix (N, C) sit in the padded chunks attention runs on. Every
    token-wise layer (LayerNorm, the qkv, output and MLP projections) runs on the packed (N, C) matrix,
    no slot of padding in its GEMMs; only attention gathers rows into chunks (b, L)."""

    index: list[Tensor]  # per chunk (b, L): the row of each slot; a padding slot points at a real row of its event
    mask: list[Tensor | None]  # per chunk (b, 1, 1, L): True for real keys; None for a chunk without padding
    back: Tensor  # (N,): each row's position among the chunks' slots, flattened and concatenated


def layout(index: list[Tensor], real: list[Tensor], slots: list[Tensor], n_rows: int) -> Layout:
    """The layout of chunks (b, L) of row indices; each of the ``n_rows`` rows is real in exactly one slot.
    ``slots``: per chunk the flat indices of its real slots, derived on the host (:class:`models.Groups`), so
    laying out the chunks needs no device-to-host synchronisation (a tensor's shape is known on the host)."""
    flat, offset = [], 0
    for i, s in zip(index, slots, strict=True):
        flat.append(s + offset)
        offset += i.numel()
    all_slots = torch.cat(flat)
    back = torch.empty(n_rows, dtype=torch.long, device=all_slots.device)
    back[torch.cat([i.flatten() for i in index])[all_slots]] = all_slots
    masks = [r[:, None, None, :] if s.numel() < r.numel() else None for r, s in zip(real, slots, strict=True)]
    return Layout(index, masks, back)


def with_cls_slots(slots: Tensor, b: int, length: int) -> Tensor:
    """The real slots of a chunk (b, L) once a CLS column is put in front of it (b, L + 1): the CLS slots,
    then the pulses' slots shifted by one column."""
    cls = torch.arange(b, device=slots.device) * (length + 1)
    return torch.cat([cls, slots // length * (length + 1) + 1 + slots % length])


# ---------------------------------------------------------------------------------------------------
# Blocks


class Attention(nn.Module):
    """Multi-head self-attention of the rows of a token matrix within their chunks; with ``rel`` (the
    space-time embedding φ of each chunk) it adds IceMix's relative bias to the logits and the values:
    q_i·R_ij and Σ_j a_ij R_ij, R = rel_proj(φ)."""

    def __init__(self, dim: int, heads: int, relative: bool):
        super().__init__()
        self.heads, self.head_size = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.rel_proj = nn.Linear(self.head_size, self.head_size) if relative else None

    def forward(self, x: Tensor, lay: Layout, rel: list[Tensor] | None = None) -> Tensor:
        """x (N, C) rows, ``rel`` per chunk (b, L, L, head_size) or None → (N, C)."""
        qkv = self.qkv(x)  # packed: no padding in the projection
        rels: list[Tensor | None] = [None] * len(lay.index) if rel is None else list(rel)
        outs = [self.attend(qkv[index], mask, r) for index, mask, r in zip(lay.index, lay.mask, rels)]
        out = (outs[0] if len(outs) == 1 else torch.cat(outs)).index_select(0, lay.back)
        return self.proj(out)

    def attend(self, qkv: Tensor, mask: Tensor | None, rel: Tensor | None) -> Tensor:
        """One chunk: qkv (b, L, 3C), mask (b, 1, 1, L) or None, rel (b, L, L, d) or None → (b·L, C)."""
        b, L, _ = qkv.shape
        H, d = self.heads, self.head_size
        if self.rel_proj is None or rel is None:
            q, k, v = qkv.view(b, L, 3, H, d).permute(2, 0, 3, 1, 4)  # 3 × (b, H, L, d)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            return out.transpose(1, 2).reshape(b * L, H * d)
        q, k, v = qkv.view(b, L, 3, H, d).unbind(2)  # 3 × (b, L, H, d)
        w, bias = self.rel_proj.weight.to(q.dtype), self.rel_proj.bias.to(q.dtype)
        rel = rel.to(q.dtype).view(b * L, L, d)
        q = q * d ** -0.5
        # Logits in (b, i, h, j) order, so both bias terms are one batched matmul per query row i over φ_i·.
        # q_i·(W φ_ij + b) = (Wᵀ q_i)·φ_ij + q_i·b; q_i·b is constant along j, and softmax ignores it.
        logits = torch.bmm((q @ w).view(b * L, H, d), rel.transpose(1, 2)).view(b, L, H, L)
        logits += (q.transpose(1, 2) @ k.permute(0, 2, 3, 1)).transpose(1, 2)
        if mask is not None:
            logits.masked_fill_(~mask, float("-inf"))
        attn = logits.softmax(-1)  # (b, L, H, L)
        # Σ_j a_ij (W φ_ij + b) = W (Σ_j a_ij φ_ij) + b, the attention weights summing to one.
        out = (attn.transpose(1, 2) @ v.transpose(1, 2)).transpose(1, 2)  # (b, L, H, d)
        out = out + torch.bmm(attn.view(b * L, H, L), rel).view(b, L, H, d) @ w.T + bias
        return out.reshape(b * L, H * d)


class Block(nn.Module):
    """Pre-norm transformer block: x + γ₁·attn(LN(x)), then x + γ₂·MLP(LN(x)); γ is LayerScale (or 1)."""

    def __init__(self, cfg: TransformerConfig, relative: bool):
        super().__init__()
        dim = cfg.hidden
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, cfg.heads, relative)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, cfg.mlp_ratio * dim), nn.GELU(), nn.Linear(cfg.mlp_ratio * dim, dim))
        if cfg.layer_scale is None:
            self.gamma1 = self.gamma2 = None
        else:
            self.gamma1 = nn.Parameter(torch.full((dim,), cfg.layer_scale))
            self.gamma2 = nn.Parameter(torch.full((dim,), cfg.layer_scale))

    def forward(self, x: Tensor, lay: Layout, rel: list[Tensor] | None = None) -> Tensor:
        """x (N, C) packed rows → (N, C)."""
        a = self.attn(self.norm1(x), lay, rel)
        x = x + a if self.gamma1 is None else torch.addcmul(x, self.gamma1, a)  # one pass, not two
        m = self.mlp(self.norm2(x))
        return x + m if self.gamma2 is None else torch.addcmul(x, self.gamma2, m)


# ---------------------------------------------------------------------------------------------------
# The network


class Transformer(nn.Module):
    """Pulses → direction vector whose length is the vMF concentration κ (same call as DynEdge)."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = Embedding(cfg)
        self.rel_blocks = nn.ModuleList(Block(cfg, relative=True) for _ in range(cfg.depth_rel))
        self.cls = nn.Parameter(torch.zeros(1, 1, cfg.hidden))
        self.blocks = nn.ModuleList(Block(cfg, relative=False) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.hidden)
        self.head = nn.Linear(2 * cfg.hidden, 3)
        self.apply(_init)
        nn.init.trunc_normal_(self.cls, std=0.02)

    def forward(self, x: Tensor, ptr: Tensor, n_pulses: Tensor, host_ptr: np.ndarray | None = None) -> Tensor:
        """x (P, F) packed pulse features, ptr (B + 1) event starts, n_pulses (B) pulses before the cap;
        ``host_ptr``: ptr on the host, when the caller has it (no device-to-host synchronisation then)."""
        n_events, P = ptr.shape[0] - 1, x.shape[0]
        counts = ptr[1:] - ptr[:-1]
        event = torch.repeat_interleave(torch.arange(n_events, device=x.device), counts, output_size=x.shape[0])
        sums = torch.zeros(n_events, 4, device=x.device, dtype=x.dtype).index_add_(0, event, x[:, :4])
        rel = x[:, :4] - (sums / counts.clamp(min=1).to(x.dtype)[:, None])[event]  # from the event's mean
        t_rel = rel[:, 3]
        log_n = torch.log10(n_pulses.to(x.dtype).clamp(min=1))[event]
        h = self.embed(x, rel[:, :3], t_rel, log_n)  # (P, C): no padding
        budget = max(1, CHUNK_BUDGET // (self.cfg.head_size + self.cfg.heads))
        groups = group_events(ptr, budget, per_octave=LENGTH_CLASSES_PER_OCTAVE, host_ptr=host_ptr)
        if self.rel_blocks:
            h = self.encode_relative(h, groups.node, groups.real, groups.slots, x[:, :3], t_rel)
        # Plain blocks: the pulses' rows, then one CLS row per event; each chunk's slot 0 is its events' CLS.
        h = torch.cat([h, self.cls[0].expand(n_events, -1).to(h.dtype)])
        cls_rows = [P + events[:, None] for events in groups.events]
        lay = layout([torch.cat([c, node], 1) for c, node in zip(cls_rows, groups.node)],
                     [F.pad(real, (1, 0), value=True) for real in groups.real],
                     [with_cls_slots(sl, *node.shape) for sl, node in zip(groups.slots, groups.node)], P + n_events)
        for blk in self.blocks:
            h = blk(h, lay)
        h = self.norm(h)
        mean = h.new_zeros(n_events, h.shape[1]).index_add_(0, event, h[:P]) / counts.clamp(min=1).to(h.dtype)[:, None]
        return self.head(torch.cat([h[P:], mean], dim=1))  # the CLS token and the mean over the pulses

    def encode_relative(self, h: Tensor, node: list[Tensor], real: list[Tensor], real_slots: list[Tensor],
                        pos: Tensor, t: Tensor) -> Tensor:
        """The relative-bias blocks, one chunk at a time (its φ, (b, L, L, head_size), exists only while the
        chunk runs), on the chunk's real rows: h (P, C) → (P, C). No host synchronisation: the real slots
        come from the host-side grouping."""
        out, rows_all = [], []
        for index, is_real, slots in zip(node, real, real_slots, strict=True):
            flat = is_real.flatten()
            local = torch.cumsum(flat, 0).view_as(is_real) - 1  # each real slot's row in the chunk
            local = torch.where(is_real, local, local[:, :1])  # padding: the event's first (real) slot
            lay = Layout([local], [None if len(slots) == len(flat) else is_real[:, None, None, :]], slots)
            rel = [spacetime_embedding(pos[index], t[index], self.cfg.head_size)]
            rows = index.flatten()[slots]
            hc = h[rows]
            for blk in self.rel_blocks:
                hc = blk(hc, lay, rel)
            out.append(hc)
            rows_all.append(rows)
        order = torch.cat(rows_all)
        inverse = torch.empty_like(order).index_copy_(0, order, torch.arange(len(order), device=h.device))
        return torch.cat(out).index_select(0, inverse)


def _init(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def build_model(size: str | TransformerConfig) -> Transformer:
    return Transformer(SIZES[size] if isinstance(size, str) else size)
