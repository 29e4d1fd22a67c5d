"""The IceMix-class transformer: packed attention against a slow per-event reference, invariances, the
space-time bias, numerics, learning, ensembling and its bad inputs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from kaggle import model_artefact

from neutrino_ray.cli import main
from neutrino_ray.errors import InputError
from neutrino_ray.icecube import transformer as T
from neutrino_ray.icecube.models import direction_loss, n_parameters
from neutrino_ray.icecube.options import ScoringOptions
from neutrino_ray.icecube.scoring import check_models, ensemble_directions
from neutrino_ray.icecube.train import DirectionTask

CFG = T.TransformerConfig(hidden=32, depth=2, depth_rel=2, head_size=8, fourier=16, fourier_mlp=48)


def _batch(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Packed random pulses: x, y, z within the detector, times in time order, charges, aux flags."""
    g = torch.Generator().manual_seed(seed)
    ptr = torch.tensor(np.concatenate([[0], np.cumsum(lengths)]))
    P = int(ptr[-1])
    x = torch.empty(P, 6)
    x[:, :3] = torch.rand(P, 3, generator=g) * 2 - 1
    x[:, 3] = torch.rand(P, generator=g) * 0.3
    x[:, 4] = torch.randn(P, generator=g) * 0.2
    x[:, 5] = (torch.rand(P, generator=g) < 0.6).float()
    n = torch.tensor(lengths) + torch.randint(0, 5, (len(lengths),), generator=g)
    return x, ptr, n


def _model(cfg: T.TransformerConfig = CFG, seed: int = 0) -> T.Transformer:
    torch.manual_seed(seed)
    m = T.Transformer(cfg).double().eval()
    # Non-trivial relative projections and LayerNorms, so every term of the bias matters.
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m


def _reference(model: T.Transformer, x: torch.Tensor, n_pulses: int) -> torch.Tensor:
    """One event, no masks, no chunks, the relative bias R_ij = rel_proj(φ_ij) formed explicitly."""
    cfg = model.cfg
    t_rel = x[:, 3] - x[:, 3].mean()
    r_rel = x[:, :3] - x[:, :3].mean(0)
    log_n = torch.full((len(x),), math.log10(max(n_pulses, 1)), dtype=x.dtype)
    h = model.embed(x, r_rel, t_rel, log_n)[None]  # (1, L, C)
    L = len(x)
    s = torch.zeros(L, L, dtype=torch.float64)
    for i in range(L):
        for j in range(L):
            dr2 = float(((x[i, :3] - x[j, :3]) ** 2).sum())
            dt2 = float((t_rel[i] - t_rel[j]) * T.TIME_TO_POSITION) ** 2
            ds2 = dr2 - dt2
            s[i, j] = math.copysign(math.sqrt(abs(ds2)), ds2)
    phi = T.sinusoidal(1024 * s.clamp(-4, 4), cfg.head_size).double()

    def attention(a: T.Attention, z: torch.Tensor, rel: torch.Tensor | None) -> torch.Tensor:
        q, k, v = a.qkv(z).view(1, z.shape[1], 3, a.heads, a.head_size).permute(2, 0, 3, 1, 4)
        q = q * a.head_size ** -0.5
        logits = q @ k.transpose(-1, -2)
        if rel is not None:
            assert a.rel_proj is not None
            R = a.rel_proj(rel)  # (L, L, d)
            logits = logits + torch.einsum("bhid,ijd->bhij", q, R)
        w = logits.softmax(-1)
        out = w @ v
        if rel is not None:
            out = out + torch.einsum("bhij,ijd->bhid", w, R)
        return a.proj(out.transpose(1, 2).reshape(1, z.shape[1], -1))

    def block(b: T.Block, z: torch.Tensor, rel: torch.Tensor | None) -> torch.Tensor:
        a = attention(b.attn, b.norm1(z), rel)
        z = z + (a if b.gamma1 is None else b.gamma1 * a)
        m = b.mlp(b.norm2(z))
        return z + (m if b.gamma2 is None else b.gamma2 * m)

    for blk in model.rel_blocks:
        h = block(blk, h, phi)
    h = torch.cat([model.cls.double(), h], dim=1)
    for blk in model.blocks:
        h = block(blk, h, None)
    h = model.norm(h)[0]
    return model.head(torch.cat([h[0], h[1:].mean(0)]))


def test_packed_attention_equals_a_slow_per_event_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    lengths = [1, 2, 7, 30, 31, 5, 192, 1, 12]  # one-pulse events, and one at the training cap (192)
    x, ptr, n = _batch(lengths)
    x = x.double()
    model = _model(T.TransformerConfig(**{**CFG.__dict__, "layer_scale": 0.5}))
    with torch.no_grad():
        got = model(x, ptr, n)
        for e in range(len(lengths)):
            want = _reference(model, x[ptr[e]:ptr[e + 1]], int(n[e]))
            torch.testing.assert_close(got[e], want, rtol=1e-9, atol=1e-9)
        monkeypatch.setattr(T, "CHUNK_BUDGET", 1)  # forced chunking: every event a chunk of its own
        torch.testing.assert_close(model(x, ptr, n), got, rtol=1e-9, atol=1e-9)


def test_token_wise_layers_see_no_padding(monkeypatch: pytest.MonkeyPatch) -> None:
    """The projections and MLPs run on the packed rows only (pulses, then one CLS row per event in the
    plain blocks); only attention sees padded chunks. Lengths 30 and 31 share a chunk (padding 1)."""
    lengths = [30, 31, 5, 1, 12]
    x, ptr, n = _batch(lengths)
    model = _model().float()
    rows: dict[str, list[int]] = {"rel": [], "plain": []}
    for kind, blocks in (("rel", model.rel_blocks), ("plain", model.blocks)):
        for blk in blocks:
            for layer in (blk.attn.qkv, blk.attn.proj, blk.mlp[0]):
                layer.register_forward_hook(lambda _m, inp, _o, k=kind: rows[k].append(inp[0].shape[0]))
    with torch.no_grad():
        model(x, ptr, n)
    P, B = sum(lengths), len(lengths)
    assert sum(rows["rel"]) == 3 * CFG.depth_rel * P  # chunk by chunk, each chunk's real rows
    assert rows["plain"] == [P + B] * (3 * CFG.depth)


def test_an_events_result_does_not_depend_on_its_batch_nor_on_pulse_order() -> None:
    x, ptr, n = _batch([3, 40, 17, 1, 90, 22, 8])
    model = _model().float()
    with torch.no_grad():
        together = model(x, ptr, n)
        for e in range(len(n)):
            alone = model(x[ptr[e]:ptr[e + 1]], torch.tensor([0, int(ptr[e + 1] - ptr[e])]), n[e:e + 1])
            torch.testing.assert_close(together[e:e + 1], alone, rtol=1e-4, atol=1e-5)
        # Another batch around the same event: other lengths, other chunks.
        x2, ptr2, n2 = _batch([5, 60, 33], seed=3)
        e = 4
        ev = x[ptr[e]:ptr[e + 1]]
        mixed = torch.cat([x2[:ptr2[1]], ev, x2[ptr2[1]:]])
        ptr_m = torch.tensor([0, int(ptr2[1]), int(ptr2[1]) + len(ev), int(ptr2[-1]) + len(ev)])
        out = model(mixed, ptr_m, torch.stack([n2[0], n[e], n2[1] + n2[2]]))
        torch.testing.assert_close(out[1], together[e], rtol=1e-4, atol=1e-5)
        # Pulses of every event shuffled: a set, not a sequence.
        perm = torch.cat([ptr[i] + torch.randperm(int(ptr[i + 1] - ptr[i]), generator=torch.Generator().manual_seed(i))
                          for i in range(len(n))])
        torch.testing.assert_close(model(x[perm], ptr, n), together, rtol=1e-4, atol=1e-5)


def test_spacetime_interval_equals_a_direct_computation() -> None:
    pos = torch.tensor([[[0.0, 0.0, 0.0], [0.1, 0.0, 0.0], [0.0, 0.2, 0.0], [1.0, 1.0, 1.0]]])
    t = torch.tensor([[0.0, 0.001, 0.05, -0.01]])  # units of 30 µs
    phi = T.spacetime_embedding(pos, t, 16)
    for i in range(4):
        for j in range(4):
            dr = 500.0 * (pos[0, i] - pos[0, j])  # metres
            dt = 3e4 * float(t[0, i] - t[0, j])  # ns
            ds2 = float((dr ** 2).sum()) - (0.3 * dt) ** 2
            s = math.copysign(math.sqrt(abs(ds2)), ds2) / 500.0
            want = T.sinusoidal(torch.tensor([1024 * max(-4.0, min(4.0, s))]), 16)[0]
            torch.testing.assert_close(phi[0, i, j], want, rtol=1e-4, atol=2e-3)
    assert torch.equal(phi[0].diagonal(dim1=0, dim2=1).T, T.sinusoidal(torch.zeros(4), 16))


def test_ice_inputs_follow_the_shipped_table() -> None:
    from neutrino_ray.icecube.geometry import south_pole_ice

    emb = T.Embedding(CFG)
    z = torch.tensor([-500.0, -100.0, 0.0, 250.0, 480.0]) / 500.0
    ice = south_pole_ice()
    depth = 1948.07 - z.numpy().astype(np.float64) * 500.0
    got = emb.ice_at(z).numpy()  # log lengths, interpolated linearly in depth
    np.testing.assert_allclose(got[:, 0], np.interp(depth, ice.depth, np.log(ice.scattering_len)), rtol=1e-5)
    np.testing.assert_allclose(got[:, 1], np.interp(depth, ice.depth, np.log(ice.absorption_len)), rtol=1e-5)
    assert np.exp(got[2, 0]) < 30 and np.exp(got[1, 0]) < 10  # the dust layer near z = -100 m scatters most


def test_sizes_and_bf16_autocast() -> None:
    assert 29e6 < n_parameters(T.build_model("transformer-base")) < 31e6  # GraphNeT DeepIce: 30,170,976
    assert 6.5e6 < n_parameters(T.build_model("transformer-small")) < 7.5e6  # its hidden-192 shape: 6,892,512
    x, ptr, n = _batch([4, 50, 1, 20])
    model = _model().float()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, ptr, n)
    assert out.shape == (4, 3) and torch.isfinite(out.float()).all()
    torch.testing.assert_close(out.float(), model(x, ptr, n), rtol=0.1, atol=0.05)


def test_a_few_steps_reduce_the_loss() -> None:
    x, ptr, n = _batch([10, 25, 3, 40, 17, 8, 30, 12])
    target = F.normalize(torch.randn(8, 3, generator=torch.Generator().manual_seed(1)), dim=1)
    torch.manual_seed(0)
    model = T.Transformer(CFG)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = direction_loss(model(x, ptr, n), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < losses[0] - 0.5, losses


def test_ensemble_maths_on_hand_made_vectors() -> None:
    ex, ey, ez = np.eye(3)
    mu = np.stack([np.stack([ex, ex, ez]), np.stack([ey, -ex, ez])])  # 2 members x 3 events
    kappa = np.array([[1.0, 5.0, 2.0], [3.0, 5.0, 9.0]])
    got, k = ensemble_directions(mu, kappa, np.array([0.5, 0.5]))
    np.testing.assert_allclose(got[0], (ex + ey) / math.sqrt(2))
    np.testing.assert_allclose(got[1], ex)  # opposite, equal weights: the first (most weighted) member
    np.testing.assert_allclose(got[2], ez)
    # κ of the weighted product: |Σ w κ μ|; agreeing members sharpen it, opposite ones cancel.
    np.testing.assert_allclose(k, [math.hypot(0.5, 1.5), 0.0, 5.5])
    got, _ = ensemble_directions(mu, kappa, np.array([0.75, 0.25]))
    np.testing.assert_allclose(got[0], (3 * ex + ey) / math.sqrt(10))
    got, _ = ensemble_directions(mu, kappa, np.array([0.5, 0.5]), kappa_weighted=True)
    np.testing.assert_allclose(got[0], (ex + 3 * ey) / math.sqrt(10))  # κ 1 against κ 3
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0)


def test_ensemble_members_must_agree_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gnn = str(model_artefact(tmp_path / "gnn"))  # small, pulse cap 256
    tiny = str(model_artefact(tmp_path / "tiny", "transformer-tiny"))  # cap 192 in training, 768 at inference
    other = DirectionTask().config()["features"] | {"time_scale": 1000.0}
    foreign = str(model_artefact(tmp_path / "foreign", "transformer-tiny", features=other))
    with pytest.raises(InputError, match=r"different pulse caps .*gnn: 256.*tiny: 768"):
        check_models(ScoringOptions((gnn, tiny)))
    plan = check_models(ScoringOptions((gnn, tiny), max_pulses=256, weights=(3.0, 1.0)))
    assert plan.max_pulses == 256 and plan.weights == (0.75, 0.25)
    assert [m["architecture"] for m in plan.details["members"]] == ["small", "transformer-tiny"]
    assert check_models(ScoringOptions(tiny, max_pulses=500)).max_pulses == 500  # transformers take another cap
    with pytest.raises(InputError, match="trained with another feature set"):
        check_models(ScoringOptions((tiny, foreign)))
    with pytest.raises(InputError, match="2 weights for 3 models"):
        check_models(ScoringOptions((gnn, tiny, str(model_artefact(tmp_path / "t2", "transformer-tiny"))),
                                    max_pulses=256, weights=(1.0, 2.0)))
    with pytest.raises(InputError, match="LineFit cannot be a member"):
        check_models(ScoringOptions((gnn, "linefit")))
    with pytest.raises(InputError, match="the same model is given twice"):
        check_models(ScoringOptions((gnn, gnn)))
    # Through the CLI: exit 2, one line, nothing published.
    out = tmp_path / "out"
    code = main(["-q", "icecube", "predict", str(tmp_path / "nodata"), "--model", gnn, "--model", tiny,
                 "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "different pulse caps" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    # calibrate: one trained model, and it must know which train events were held out.
    assert main(["-q", "icecube", "calibrate", str(tmp_path / "nodata"), "--model", "linefit"]) == 2
    assert "calibrate takes trained models" in capsys.readouterr().err
    assert main(["-q", "icecube", "calibrate", str(tmp_path / "nodata"), "--model", gnn, "--model", tiny,
                 "--max-pulses", "256"]) == 2
    assert "pass --out URI" in capsys.readouterr().err
    assert main(["-q", "icecube", "calibrate", str(tmp_path / "nodata"), "--model", gnn, "--out", str(out)]) == 2
    assert "--out is for ensembles" in capsys.readouterr().err and not out.exists()
    assert main(["-q", "icecube", "calibrate", str(tmp_path / "nodata"), "--model", tiny]) == 2
    assert "does not say which train events were held out; pass --events N" in capsys.readouterr().err
    assert not (Path(tiny) / "calibration.json").exists()
