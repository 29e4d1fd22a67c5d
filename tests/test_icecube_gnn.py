"""The GNN's pure parts: k-NN against brute force, EdgeConv against PyG, invariances, the vMF loss."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import torch
from torch_geometric.nn import EdgeConv as PygEdgeConv

from neutrino_ray.icecube import models
from neutrino_ray.icecube.linefit import angles_to_direction
from neutrino_ray.icecube.metrics import angular_distance


def packed(counts: list[int], dim: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ptr = torch.tensor(np.r_[0, np.cumsum(counts)], dtype=torch.long)
    return torch.randn(int(ptr[-1]), dim, generator=g), ptr


def brute_force_distances(x: torch.Tensor, ptr: torch.Tensor, k: int) -> list[torch.Tensor]:
    """Per event: each node's sorted distances to its min(k, n − 1) nearest other nodes."""
    out = []
    for a, b in zip(ptr[:-1].tolist(), ptr[1:].tolist()):
        d = torch.cdist(x[a:b].double(), x[a:b].double())
        d.fill_diagonal_(math.inf)
        out.append(torch.sort(d, dim=1).values[:, :min(k, b - a - 1)])
    return out


COUNTS = [1, 2, 5, 8, 9, 10, 30, 64, 65, 100, 256, 300, 3, 1, 17]


@pytest.mark.parametrize("max_elements", [1 << 22, 5_000])  # the second forces many small chunks
def test_knn_matches_brute_force(max_elements: int) -> None:
    x, ptr = packed(COUNTS, 4)
    x[40:44] = x[39]  # exact duplicates (pulses on one DOM share x, y, z): ties must not break anything
    groups = models.group_events(ptr, max_elements=max_elements)
    neighbours, valid = models.knn(x, groups, k=8)
    reference = brute_force_distances(x, ptr, 8)
    for e, (a, b) in enumerate(zip(ptr[:-1].tolist(), ptr[1:].tolist())):
        nb, ok = neighbours[a:b], valid[a:b]
        assert (ok.sum(1) == min(8, b - a - 1)).all(), f"event {e}"
        real = nb[ok].view(b - a, -1)
        assert ((real >= a) & (real < b)).all(), f"event {e}: a neighbour from another event"
        assert (real != torch.arange(a, b)[:, None]).all(), f"event {e}: a self-loop"
        assert len(set(map(tuple, real.sort(1).values.tolist()))) >= 1
        assert all(len(set(row)) == len(row) for row in real.tolist()), f"event {e}: a repeated neighbour"
        got = torch.sort((x[real].double() - x[a:b, None].double()).norm(dim=-1), dim=1).values
        torch.testing.assert_close(got, reference[e], atol=1e-4, rtol=1e-4)


def test_groups_cover_every_node_once() -> None:
    _, ptr = packed(COUNTS * 5, 1)
    groups = models.group_events(ptr, max_elements=20_000)
    nodes = torch.cat([n[r] for n, r in zip(groups.node, groups.real)])
    assert torch.equal(torch.sort(nodes).values, torch.arange(int(ptr[-1])))
    for node, real in zip(groups.node, groups.real):  # padding at most ~√2 in length within a group
        lengths = real.sum(1)
        assert node.shape[1] == int(lengths.max()) and lengths.max() <= 2 * lengths.min() + 1


def test_edgeconv_matches_pyg_edgeconv() -> None:
    torch.manual_seed(1)
    x, ptr = packed(COUNTS, 7, seed=2)
    neighbours, valid = models.knn(x[:, :3], models.group_events(ptr), k=8)
    ours = models.EdgeConv(7, (16, 12))
    pyg = PygEdgeConv(torch.nn.Sequential(ours.first, torch.nn.LeakyReLU(), *ours.rest), aggr="add")
    target = torch.arange(len(x))[:, None].expand_as(neighbours)
    edge_index = torch.stack([neighbours[valid], target[valid]])  # messages flow from neighbour j to node i
    torch.testing.assert_close(ours(x, neighbours, valid), pyg(x, edge_index), atol=1e-5, rtol=1e-5)


def test_dynedge_has_graphnet_benchmark_size() -> None:
    assert models.n_parameters(models.build_model("dynedge")) == 1_348_627  # GraphNeT's DynEdge, 6 inputs
    assert 50_000 < models.n_parameters(models.build_model("small")) < 200_000


def realistic_events(counts: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Features in the spine's scaling: positions ±1, times around 0 with ns-scale spread, charges, aux."""
    g = torch.Generator().manual_seed(seed)
    ptr = torch.tensor(np.r_[0, np.cumsum(counts)], dtype=torch.long)
    n = int(ptr[-1])
    x = torch.cat([torch.rand(n, 3, generator=g) * 2 - 1, torch.randn(n, 1, generator=g) * 0.05,
                   torch.randn(n, 1, generator=g) * 0.1, (torch.rand(n, 1, generator=g) < 0.4).float()], dim=1)
    return x, ptr, torch.tensor(counts) + 3


@pytest.mark.parametrize("size", ["small", "dynedge"])
def test_prediction_does_not_depend_on_pulse_order(size: str) -> None:
    torch.manual_seed(0)
    model = models.build_model(size).eval()
    counts = [1, 2, 7, 9, 40, 120]
    x, ptr, n_pulses = realistic_events(counts)
    perm = torch.cat([a + torch.randperm(b - a) for a, b in zip(ptr[:-1].tolist(), ptr[1:].tolist())])
    with torch.no_grad():
        out = model(x, ptr, n_pulses)
        shuffled = model(x[perm], ptr, n_pulses)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(shuffled, out, atol=1e-4, rtol=1e-4)


def test_event_order_only_reorders_predictions() -> None:
    torch.manual_seed(0)
    model = models.build_model("small").eval()
    counts = [5, 30, 12]
    x, ptr, n_pulses = realistic_events(counts)
    order = [2, 0, 1]
    parts = [x[ptr[i]:ptr[i + 1]] for i in order]
    ptr2 = torch.tensor(np.r_[0, np.cumsum([counts[i] for i in order])], dtype=torch.long)
    with torch.no_grad():
        torch.testing.assert_close(model(torch.cat(parts), ptr2, n_pulses[order]), model(x, ptr, n_pulses)[order],
                                   atol=1e-5, rtol=1e-5)


# --- the von Mises–Fisher loss


def closed_form_log_c3(kappa: float) -> float:
    mpmath.mp.dps = 50
    k = mpmath.mpf(kappa)
    return float(mpmath.log(k / (4 * mpmath.pi * mpmath.sinh(k))))


KAPPAS = [1e-8, 1e-5, 1e-3, 0.1, 0.5, 1.0, 3.0, 20.0, 100.0, 700.0, 5_000.0, 1e5]


def test_log_c3_matches_closed_form_float64() -> None:
    got = models.log_c3(torch.tensor(KAPPAS, dtype=torch.float64)).tolist()
    for kappa, value in zip(KAPPAS, got):
        assert value == pytest.approx(closed_form_log_c3(kappa), rel=1e-12, abs=1e-12), kappa


def test_log_c3_float32_is_stable_at_the_extremes() -> None:
    kappa = torch.tensor(KAPPAS, dtype=torch.float32, requires_grad=True)
    value = models.log_c3(kappa)
    value.sum().backward()
    assert torch.isfinite(value).all() and torch.isfinite(kappa.grad).all()  # type: ignore[arg-type]
    for k, v in zip(KAPPAS, value.tolist()):
        assert v == pytest.approx(closed_form_log_c3(k), rel=1e-5, abs=1e-5), k
    # d/dκ log C = 1/κ − coth κ: → −κ/3 for tiny κ, → −1 for huge κ
    assert kappa.grad[0].item() == pytest.approx(-KAPPAS[0] / 3, abs=1e-6)  # type: ignore[index]
    assert kappa.grad[-1].item() == pytest.approx(1 / KAPPAS[-1] - 1, rel=1e-5)  # type: ignore[index]


def test_vmf_density_integrates_to_one() -> None:
    kappa = 4.0
    cos = torch.linspace(-1, 1, 200_001, dtype=torch.float64)
    density = torch.exp(models.log_c3(torch.tensor(kappa, dtype=torch.float64)) + kappa * cos)
    assert float(2 * math.pi * torch.trapezoid(density, cos)) == pytest.approx(1.0, rel=1e-8)


def test_vmf_nll_and_angular_error() -> None:
    rng = np.random.default_rng(3)
    az, zen = rng.uniform(0, 2 * np.pi, 50), np.arccos(rng.uniform(-1, 1, 50))
    az2, zen2 = rng.uniform(0, 2 * np.pi, 50), np.arccos(rng.uniform(-1, 1, 50))
    target = torch.from_numpy(angles_to_direction(az, zen))
    mu = torch.from_numpy(angles_to_direction(az2, zen2))
    kappa = torch.from_numpy(rng.uniform(0.1, 50, 50))
    v = mu * kappa[:, None]
    expected = -models.log_c3(kappa) - kappa * (mu * target).sum(1)
    torch.testing.assert_close(models.vmf_nll(v, target), expected)
    np.testing.assert_allclose(models.angular_error(v, target).numpy(), angular_distance(az, zen, az2, zen2),
                               atol=2e-6)
    torch.testing.assert_close(models.direction_loss(v, target, "vmf+angle"),
                               (expected + models.angular_error(v, target)).mean())
    # The NLL is lowest with the right direction and rises as κ grows on a wrong one.
    assert models.vmf_nll(target[:1] * 10, target[:1]).item() < models.vmf_nll(-target[:1] * 10, target[:1]).item()
    with pytest.raises(ValueError, match="unknown loss"):
        models.direction_loss(v, target, "mse")


def timed_events() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """64 events whose direction is written in their timing: (x, ptr, n_pulses, direction)."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    counts = rng.integers(10, 60, 64).tolist()
    x, ptr, n_pulses = realistic_events(counts, seed=4)
    direction = torch.nn.functional.normalize(torch.randn(len(counts), 3), dim=1)
    batch = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    x[:, 3] = -(x[:, :3] * direction[batch]).sum(1) * 0.01  # pulses arrive later downstream
    return x, ptr, n_pulses, direction


def test_training_steps_reduce_the_loss() -> None:
    """A few optimiser steps on a fixed batch of events whose direction is written in their timing."""
    x, ptr, n_pulses, direction = timed_events()
    model = models.build_model("small")
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(40):
        loss = models.direction_loss(model(x, ptr, n_pulses), direction)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])


def test_bf16_autocast_forward_and_backward() -> None:
    """The GPU path trains under bf16 autocast; the same dtypes must work (checked here on the CPU)."""
    torch.manual_seed(0)
    model = models.build_model("small")
    x, ptr, n_pulses = realistic_events([1, 4, 9, 33])
    target = torch.nn.functional.normalize(torch.randn(4, 3), dim=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        v = model(x, ptr, n_pulses).float()
    loss = models.direction_loss(v, target)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_learning_rate_schedule_follows_the_binding_budget() -> None:
    from neutrino_ray.training import Settings, lr_factor
    from neutrino_ray.training import TrainingState as Progress

    s = Settings(out="x", warmup_steps=100, warmup_fraction=0.03, min_lr_fraction=0.02)
    assert lr_factor(Progress(step=0), s, 10_000) == pytest.approx(0.01)  # warm-up by steps
    assert lr_factor(Progress(step=49), s, 10_000) == pytest.approx(0.5)
    assert lr_factor(Progress(step=5_000), s, 10_000) == pytest.approx(0.51)  # cosine half way
    assert lr_factor(Progress(step=10_000), s, 10_000) == pytest.approx(0.02)
    # A short run: warm-up ends at 3 % of the 200 steps, long before step 100.
    assert lr_factor(Progress(step=6), s, 200) > 0.99
    timed = Settings(out="x", max_minutes=10)  # the time budget binds before the step count does
    assert lr_factor(Progress(step=150, seconds=300), timed, 10_000) == pytest.approx(0.51)
    assert lr_factor(Progress(step=150, seconds=600), timed, 10_000) == pytest.approx(0.02)


def test_prediction_does_not_depend_on_the_rest_of_the_batch() -> None:
    """Scoring an event alone or among others gives the same answer, even with pulses on one DOM (exact ties)."""
    torch.manual_seed(0)
    model = models.build_model("small").eval()
    counts = [3, 12, 40, 90, 7, 150, 25]
    x, ptr, n_pulses = realistic_events(counts, seed=5)
    x[10:14, :3] = x[9, :3]  # several pulses on one DOM
    x[60:70, :3] = x[59, :3]
    with torch.no_grad():
        together = model(x, ptr, n_pulses)
        for e in range(len(counts)):
            a, b = int(ptr[e]), int(ptr[e + 1])
            alone = model(x[a:b], torch.tensor([0, b - a]), n_pulses[e:e + 1])
            torch.testing.assert_close(alone[0], together[e], atol=1e-5, rtol=1e-5)


# --- the LineFit-seeded refinement (`refine`)


def test_weighted_linefit_matches_linefit() -> None:
    """The differentiable fit of the seeded model is linefit.linefit, with its weights, on the same pulses."""
    from neutrino_ray.icecube.features import positions_and_times
    from neutrino_ray.icecube.linefit import linefit

    counts = [3, 9, 40, 120]
    x, ptr, _ = realistic_events(counts, seed=2)
    x = x.double()
    w = torch.rand(len(x), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    batch = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    d, ok = models.weighted_linefit(x, w, batch, len(counts))
    xyz, t = positions_and_times(x.numpy())
    az, zen, ok_np = linefit(xyz, t, ptr.numpy(), w.numpy())
    assert ok.tolist() == ok_np.tolist() == [True] * 4
    np.testing.assert_allclose(d.numpy(), angles_to_direction(az, zen), atol=1e-9)


def test_refine_untrained_returns_its_seed_and_learns() -> None:
    """Untrained, `refine` returns each event's seed with κ = 1 (its heads start at zero), whatever the pulses;
    a few steps on events whose timing says their direction move it from the seed towards the truth."""
    x, ptr, n_pulses, direction = timed_events()
    late = torch.rand(len(x)) < 0.3
    x[late, 3] += torch.rand(int(late.sum())) * 0.05  # some pulses much later (scattered light)
    seed = torch.nn.functional.normalize(direction + 0.4 * torch.randn(len(direction), 3), dim=1)
    model = models.build_model("refine")
    with torch.no_grad():
        out = model(x, ptr, n_pulses, None, seed)
    torch.testing.assert_close(out, seed, atol=1e-6, rtol=0)  # unit length: κ = 1
    with pytest.raises(ValueError, match="LineFit directions"):
        model(x, ptr, n_pulses)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(40):
        loss = models.direction_loss(model(x, ptr, n_pulses, None, seed), direction)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        trained = models.angular_error(model(x, ptr, n_pulses, None, seed), direction).mean()
    assert trained < 0.9 * models.angular_error(seed, direction).mean()
