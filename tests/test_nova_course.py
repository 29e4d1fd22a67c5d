"""The course notebooks' CNN and recipe, and our CVN-style network against it: the documented shapes, learning on
tiny data, the scaffold's recipe settings (Adam, constant schedule, early stopping, keeping the best weights)
and the notebooks' evaluation figures. Cheap (seconds)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from neutrino_ray import training
from neutrino_ray.errors import InputError
from neutrino_ray.nova import analysis, models
from neutrino_ray.nova.train import NovaTask


def test_course_cnn_has_the_documented_shape() -> None:
    m = models.build(models.COURSE_CNN, 2)
    assert isinstance(m, models.CourseCNN)
    convs = [x for x in m.towers if isinstance(x, nn.Conv2d)]
    # per view: 16 → 32 → 64 filters (growing), kernels 5, 3, 3, one tower per view (groups=2)
    assert [c.out_channels for c in convs] == [32, 64, 128]
    assert [c.kernel_size for c in convs] == [(5, 5), (3, 3), (3, 3)]
    assert all(c.groups == 2 for c in convs)
    assert sum(isinstance(x, nn.MaxPool2d) and x.kernel_size == 2 for x in m.towers) == 3
    assert [x.p for x in m.towers if isinstance(x, nn.Dropout)] == [0.25, 0.25, 0.25]
    dense, out = [x for x in m.head if isinstance(x, nn.Linear)]
    assert (dense.in_features, dense.out_features) == (2 * 64 * 12 * 10, 64)
    assert [x.p for x in m.head if isinstance(x, nn.Dropout)] == [0.5]
    assert out.out_features == 2
    assert not any(isinstance(x, nn.BatchNorm2d) for x in m.modules())
    assert models.n_parameters(m) == 1_030_338
    x = torch.randint(0, 256, (3, 2, 100, 80), dtype=torch.uint8)
    assert m.eval()(x).shape == (3, 2)
    assert models.build(models.COURSE_CNN, 4)(x).shape == (3, 4)


def test_course_cnn_starts_with_keras_default_weights() -> None:
    """glorot_uniform kernels (bound sqrt(6 / (fan_in + fan_out)), fans per view's tower) and zero biases,
    as the Keras notebooks had; not PyTorch's kaiming_uniform(a=sqrt(5)) (bound 1 / sqrt(fan_in))."""
    torch.manual_seed(0)
    m = models.CourseCNN(2)
    convs = [x for x in m.towers if isinstance(x, nn.Conv2d)]
    dense, out = [x for x in m.head if isinstance(x, nn.Linear)]
    # (layer, Keras fan_in, fan_out): conv fans are kernel area x channels of one view's tower
    expected = [(convs[0], 25 * 1, 25 * 16), (convs[1], 9 * 16, 9 * 32), (convs[2], 9 * 32, 9 * 64),
                (dense, 15_360, 64), (out, 64, 2)]
    for layer, fan_in, fan_out in expected:
        bound = (6 / (fan_in + fan_out)) ** 0.5
        assert models.glorot_limit(layer) == pytest.approx(bound)
        w = layer.weight.detach()
        assert float(w.abs().max()) <= bound
        assert float(w.abs().max()) > 0.9 * bound  # fills the range, not a narrower one
        if w.numel() > 1000:  # uniform on (-b, b): mean 0, standard deviation b / sqrt(3)
            assert float(w.mean()) == pytest.approx(0.0, abs=0.05 * bound)
            assert float(w.std()) == pytest.approx(bound / 3 ** 0.5, rel=0.05)
        assert layer.bias is not None and not layer.bias.detach().any()
    # the dense layer: PyTorch's default bound would be 1 / sqrt(15360) = 0.0081, Keras' is 0.0197
    assert float(dense.weight.detach().std()) > 2 * (1 / 15_360 ** 0.5) / 3 ** 0.5


def test_course_cnn_views_stay_apart_until_the_dense_layer() -> None:
    m = models.CourseCNN(2).eval()
    x = torch.randint(0, 60, (2, 2, 100, 80), dtype=torch.uint8)
    y = x.clone()
    y[:, 1] = 0  # change view 1 only
    h, g = m.towers(x.float() / 255), m.towers(y.float() / 255)
    assert torch.equal(h[:, :64], g[:, :64]) and not torch.equal(h[:, 64:], g[:, 64:])


def test_course_cnn_scales_counts_to_unit_range() -> None:
    m = models.CourseCNN(2).eval()
    seen = {}
    m.towers[0].register_forward_hook(lambda mod, inp, out: seen.update(x=inp[0]))
    m(torch.full((1, 2, 100, 80), 255, dtype=torch.uint8))
    assert float(seen["x"].max()) == pytest.approx(1.0)


def tracks_and_showers() -> tuple[torch.Tensor, torch.Tensor]:
    """16 toy events: long tracks along the planes (class 1) against compact showers (class 0)."""
    x = torch.zeros(16, 2, 100, 80, dtype=torch.uint8)
    y = torch.arange(16) % 2
    for i in range(16):
        c = 20 + i
        if y[i]:
            x[i, :, 10:90, c] = 30  # a long track along the planes
        else:
            x[i, :, 10:18, c - 4:c + 4] = 120  # a compact shower
    return x, y


def loss_after_steps(m: nn.Module, s: training.Settings, steps: int, batch_stats: bool = False) -> tuple[float, float]:
    """The loss on the toy events before and after ``steps`` optimiser steps on them: in evaluation mode, or
    with ``batch_stats`` as training sees it (batch normalisation on the batch's statistics; dropout off). After
    a few steps, BatchNorm's running averages (momentum 0.1) still lag the weights, so the evaluation-mode loss
    of a network with BatchNorm says nothing yet."""
    x, y = tracks_and_showers()
    opt = training.make_optimizer(m.parameters(), s)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on the shared 2-core machine 2 threads made this 5-7x slower (37 s against 5.6 s)

    def loss() -> float:
        m.eval()
        if batch_stats:
            for bn in m.modules():
                if isinstance(bn, nn.BatchNorm2d):
                    bn.train()
        with torch.no_grad():
            v = float(F.cross_entropy(m(x), y))
        m.train()
        return v

    try:
        before = loss()
        for _ in range(steps):
            opt.zero_grad()
            F.cross_entropy(m(x), y).backward()
            opt.step()
        return before, loss()
    finally:
        torch.set_num_threads(threads)


def test_course_cnn_learns_on_tiny_data() -> None:
    """A few Adam steps (the recipe's optimiser) on 16 toy events lower the loss: tracks against blobs."""
    torch.manual_seed(0)
    before, after = loss_after_steps(models.CourseCNN(2), training.Settings(out="", optimizer="adam", lr=1e-3), 10)
    assert after < 0.9 * before


def test_nova_task_registers_the_course_cnn() -> None:
    task = NovaTask(target="numu-cc", model=models.COURSE_CNN)
    assert isinstance(task.build_model(), models.CourseCNN)
    assert task.config()["model"] == "course-cnn" and task.config()["sizes"] is None


# ---------------------------------------------------------------- our CVN-style network
def test_cvn_has_the_documented_shape() -> None:
    """models.CVN's docstring: per view a 5x5/2 stem (16), stages of a 3x3/2 convolution and one residual block
    (32, 64), the views joined by a 1x1 convolution to 96 and one residual block, the pooled head 1,344 → 128."""
    m = models.build(models.CVN_NAME, 2)
    assert isinstance(m, models.CVN)
    tower = [x for x in m.towers.modules() if isinstance(x, nn.Conv2d)]
    # one grouped convolution = the two views' towers: channels are 2 x the per-view filters
    assert [(c.out_channels, c.kernel_size, c.stride, c.groups) for c in tower] == [
        (32, (5, 5), (2, 2), 2), (64, (3, 3), (2, 2), 2), (64, (3, 3), (1, 1), 2), (64, (3, 3), (1, 1), 2),
        (128, (3, 3), (2, 2), 2), (128, (3, 3), (1, 1), 2), (128, (3, 3), (1, 1), 2)]
    assert sum(isinstance(x, models.ResBlock) for x in m.towers) == 2
    fused = [x for x in m.fusion.modules() if isinstance(x, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.groups) for c in fused] == [
        (128, 96, (1, 1), 1), (96, 96, (3, 3), 1), (96, 96, (3, 3), 1)]
    dense, out = [x for x in m.head if isinstance(x, nn.Linear)]
    assert (dense.in_features, dense.out_features, out.out_features) == (96 * 14, 128, 2)
    assert [x.p for x in m.head if isinstance(x, nn.Dropout)] == [0.3]
    x = torch.randint(0, 256, (3, 2, 100, 80), dtype=torch.uint8)
    assert m.towers(models.scale_pixels(x)).shape == (3, 128, 13, 10)
    assert m.eval()(x).shape == (3, 2)
    assert models.n_parameters(m) == 583_586
    assert models.build(models.CVN_NAME, 5)(x).shape == (3, 5)
    assert NovaTask(target="mode", model=models.CVN_NAME).config()["sizes"] is None


def test_cvn_views_stay_apart_until_the_fusion() -> None:
    m = models.CVN(2).eval()
    x = torch.randint(0, 60, (2, 2, 100, 80), dtype=torch.uint8)
    y = x.clone()
    y[:, 1] = 0  # change view 1 only
    h, g = m.towers(models.scale_pixels(x)), m.towers(models.scale_pixels(y))
    assert torch.equal(h[:, :64], g[:, :64]) and not torch.equal(h[:, 64:], g[:, 64:])
    a, b = m.fusion(h), m.fusion(g)  # after the fusion every channel sees both views
    assert not torch.isclose(a, b).all(dim=(0, 2, 3)).any()


def test_cvn_learns_on_tiny_data() -> None:
    """A few steps of the scaffold's default optimiser (AdamW) on the toy events lower the loss (as training sees
    it: BatchNorm on the batch's statistics)."""
    torch.manual_seed(0)
    before, after = loss_after_steps(models.CVN(2), training.Settings(out="", lr=2e-3), 5, batch_stats=True)
    assert after < 0.9 * before


# ---------------------------------------------------------------- the recipe in the one scaffold
def test_recipe_settings() -> None:
    s = training.Settings(out="x", **models.COURSE_RECIPE)
    assert (s.optimizer, s.schedule, s.batch_size, s.patience) == ("adam", "constant", 256, 5)
    p = training.TrainingState(step=0)
    assert training.lr_factor(p, s, 100) == 1.0
    p.step = 90
    assert training.lr_factor(p, s, 100) == 1.0
    assert training.lr_factor(p, training.Settings(out="x"), 100) < 0.2  # the default: warm-up + cosine
    params = [nn.Parameter(torch.zeros(2))]
    assert type(training.make_optimizer(params, s)) is torch.optim.Adam
    assert type(training.make_optimizer(params, training.Settings(out="x"))) is torch.optim.AdamW
    for bad in ({"optimizer": "sgd"}, {"schedule": "step"}, {"patience": 0}):
        with pytest.raises(InputError):
            training.Settings(out="x", **bad)  # type: ignore[arg-type]


def test_early_stop_after_patience_epochs_without_lower_val_loss() -> None:
    h = [{"epoch": e, "val_loss": v} for e, v in enumerate([0.9, 0.5, 0.6, 0.55, 0.5, 0.7, 0.8], start=1)]
    # best 0.5 first at epoch 2 (equal later losses are no improvement, as Keras' min_delta 0)
    assert not training.early_stop(h[:6], 5, 6)
    assert training.early_stop(h, 5, 7)
    assert not training.early_stop(h, None, 7)
    assert not training.early_stop([], 5, 7)
    # mid-epoch checkpoints carry the epoch count reached so far
    assert not training.early_stop([*h[:2], {"epoch": 2, "val_loss": 0.4}], 1, 2)


def test_keep_best_publishes_the_lowest_val_loss_weights(tmp_path: Path) -> None:
    """--keep best: the published weights are the lowest-val_loss checkpoint's (carried as "best"); --keep last
    (the default) publishes the latest ones. The config says which."""
    assert training.best_entry([{"val_loss": 0.5}, {"val_loss": 0.3}, {"val_loss": 0.3}, {}]) == 1
    assert training.best_entry([{"val_loss": float("nan")}]) is None
    task = NovaTask(target="numu-cc", model=models.BASELINE)
    torch.manual_seed(0)
    last, best = task.build_model().state_dict(), task.build_model().state_dict()
    history = [{"epoch": e, "step": 10 * e, "minutes": e, "train_loss": 0.5, "val_loss": v,
                "val_balanced_accuracy": a}
               for e, v, a in ((1, 0.5, 0.7), (2, 0.3, 0.8), (3, 0.4, 0.75))]
    saved = {"model": last, "best": best, "ema": None,
             "progress": dataclasses.asdict(training.TrainingState(epoch=3, step=30, history=history))}
    for keep, weights, epoch in (("best", best, 2), ("last", last, 3)):
        s = training.Settings(out=str(tmp_path / keep), keep=keep)
        r = training.publish(task, s, saved, command=None, inputs=None, started=0.0, cpus_per_worker=1.0)
        published = torch.load(tmp_path / keep / "model" / "model.pt", weights_only=True)
        assert all(torch.equal(published[k], weights[k]) for k in weights)
        assert r.config["training"]["published"] == {"keep": keep, "epoch": epoch, "step": 10 * epoch}
        assert r.config["training"]["published_validation"]["val_loss"] == history[epoch - 1]["val_loss"]
        assert r.config["training"]["final_validation"]["val_loss"] == 0.4
    with pytest.raises(InputError):
        training.Settings(out="x", keep="first")


# ---------------------------------------------------------------- the notebooks' figures
def test_notebook_figures_by_hand() -> None:
    # interaction: numu QE, numu DIS, numu DIS, nue QE, NC, NC; y: numu CC = 1
    inter = np.array([0, 2, 2, 4, 13, 13])
    y = np.array([1, 1, 1, 0, 0, 0])
    pred = np.array([1, 0, 1, 1, 0, 1])
    lep = np.array([5.0, 1.0, 3.0, 2.0, 0.5, 0.5])
    nu = np.array([6.0, 20.0, 10.0, 3.0, 2.0, 2.0])
    f = analysis.notebook_figures(y, pred, {"interaction": inter, "nuenergy": nu, "lepenergy": lep})
    assert f["accuracy"] == pytest.approx(3 / 6)
    assert f["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 3) / 2)
    assert f["n_cc"] == 4
    assert f["by_mode"]["QE"] == {"n": 2, "accuracy": 0.5}  # numu QE right, nue QE wrongly selected
    assert f["by_mode"]["DIS"] == {"n": 2, "accuracy": 0.5}
    assert f["by_mode"]["RES"] == {"n": 0, "accuracy": None}
    lep_split = f["split"]["lepenergy"]  # CC lepton energies 5, 1, 3, 2: median 2.5
    assert lep_split["median"] == 2.5 and lep_split["n_high"] == 2 and lep_split["n_low"] == 2
    assert lep_split["high"] == 1.0 and lep_split["low"] == 0.0
    assert f["split"]["nuenergy"]["median"] == 8.0


# ---------------------------------------------------------------- the difficulty ordering (slow)
# Run time: the proxy budget through the one pipeline (``make nova-proxy``: 42,000 simulated events → ~9,800
# balanced training events x 5 epochs at ~26 CPU-ms per event pass ≈ 21 CPU-minutes, plus 20,000 test events
# scored): measured 44 min wall on the shared 2-core machine at load average 15-54 on main's simulator, 42 min at
# load average 15-63 on the cascade-and-walls simulator (ba6595c), 25 min at load average 6-24 on the fifth
# session's (a532f7f; docs/nova.md "Issue 27"), 30 min at load average 8-31 on the sixth session's (48ca96d), ≈ 25 min
# expected on 2 idle cores. Both tests below share one run.
@pytest.fixture(scope="module")
def course_proxy(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The course CNN trained the course way on the proxy budget (simulate → nova train → nova predict → nova
    evaluate): the notebook figures of ``report.json``."""
    tmp_path = tmp_path_factory.mktemp("course-proxy")
    train, test = simulate_split(tmp_path, 6)
    report = train_and_score(train, test, tmp_path / "course", "numu-cc", [*COURSE_ARGS, "--val-events", "1000",
                                                                           "--epochs", "5"])
    notebook: dict = report["notebook"]
    return notebook


def simulate_split(tmp_path: Path, train_files: int) -> tuple[Path, Path]:
    """A training set of 7,000-event files at the real mix (seed 1) and a 20,000-event test file (seed 2)."""
    from neutrino_ray.cli import main

    train, test = tmp_path / "train", tmp_path / "test"
    for out, files, events, seed in ((train, train_files, 7000, 1), (test, 1, 20_000, 2)):
        assert main(["-q", "simulate", "nova", str(out), "--files", str(files), "--events-per-file", str(events),
                     "--seed", str(seed)]) == 0
    return train, test


COURSE_ARGS = ["--model", "course-cnn", "--optimizer", "adam", "--schedule", "constant", "--lr", "1e-3",
               "--batch-size", "256"]  # the course recipe (models.COURSE_RECIPE; undersampling is the default)


def train_and_score(train: Path, test: Path, out: Path, target: str, args: list[str]) -> dict:
    """nova train → nova predict → nova evaluate through the CLI; the evaluation's report.json."""
    from neutrino_ray.cli import main

    assert main(["-q", "nova", "train", str(train), "--target", target, *args, "--out", str(out)]) == 0
    assert main(["-q", "nova", "predict", str(test), "--model", str(out / "model"), "--out", f"{out}-predict"]) == 0
    assert main(["-q", "nova", "evaluate", str(test), "--predictions", f"{out}-predict/predictions.parquet",
                 "--out", f"{out}-evaluate"]) == 0
    report: dict = json.loads(Path(f"{out}-evaluate/report.json").read_text())
    return report


@pytest.mark.slow
@pytest.mark.timeout(5400)  # the shared run (the fixture) is timed with the first test that uses it
def test_course_cnn_difficulty_ordering_on_the_simulation(course_proxy: dict) -> None:
    """As on the real files: ν_μ CC DIS events are harder than QE events, low lepton energy harder than high
    (by >= 8 points, issue 27's goal; 48ca96d's proxy: DIS 0.901 < QE 0.939, low / high E_lepton 0.855 / 0.966).
    The bands (QE's 0.85-0.93 among them) are the next test's."""
    nb = course_proxy
    assert nb["by_mode"]["DIS"]["accuracy"] < nb["by_mode"]["QE"]["accuracy"]
    lep = nb["split"]["lepenergy"]
    assert lep["high"] - lep["low"] >= 0.08


@pytest.mark.slow
@pytest.mark.timeout(5400)
@pytest.mark.xfail(strict=True, reason="48ca96d's proxy: balanced accuracy 0.844 (goal 0.77-0.84), QE 0.939 "
                                       "(0.85-0.93), DIS 0.901 (0.60-0.72), DIS 3.8 points below QE (>= 15)")
def test_course_cnn_as_hard_as_the_real_files(course_proxy: dict) -> None:
    """Issue 27's targets for the course CNN on the real files, checked on the proxy budget (the target budget,
    >= 30,000 balanced events to early stopping, is hours on this machine: docs/nova.md)."""
    nb = course_proxy
    assert 0.77 <= nb["balanced_accuracy"] <= 0.84
    assert 0.85 <= nb["by_mode"]["QE"]["accuracy"] <= 0.93
    assert 0.60 <= nb["by_mode"]["DIS"]["accuracy"] <= 0.72
    assert nb["by_mode"]["QE"]["accuracy"] - nb["by_mode"]["DIS"]["accuracy"] >= 0.15


# ---------------------------------------------------------------- our network against the course CNN (slow)
# Issue 27 part 3 as measured in docs/nova.md ("Part 3"): 140,000 simulated events at the real mix (seed 1) →
# 32,960 balanced numu-cc training events (24,000-odd for mode), 2,000 validation events, 20,000 test events
# (seed 2); each network trained for 20 minutes (--max-minutes 20, the best validation weights kept), the
# course CNN with the course recipe, cvn with the scaffold's default. Run time: 4 x 20 min of training plus
# simulation (~3 min) and 4 predictions (~2-5 min each) ≈ 95 min on the shared 2-core machine.
TWENTY_MINUTES = ["--epochs", "100", "--max-minutes", "20", "--keep", "best"]


@pytest.fixture(scope="module")
def head_to_head(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """report.json of each (network, task): course CNN and cvn, numu-cc and mode, same split and budget."""
    tmp_path = tmp_path_factory.mktemp("head-to-head")
    train, test = simulate_split(tmp_path, 20)
    recipes = {"course": [*COURSE_ARGS, "--patience", "5"], "cvn": ["--model", "cvn"]}
    return {(model, target): train_and_score(train, test, tmp_path / f"{model}-{target}", target,
                                             [*args, *TWENTY_MINUTES])
            for target in ("numu-cc", "mode") for model, args in recipes.items()}


@pytest.mark.slow
@pytest.mark.timeout(7200)
def test_cvn_ahead_of_the_course_cnn_on_numu_cc(head_to_head: dict) -> None:
    """Issue 27: our network at least 5 points of balanced accuracy above the course CNN, same split and budget."""
    ours, course = head_to_head["cvn", "numu-cc"], head_to_head["course", "numu-cc"]
    assert ours["balanced_accuracy"] - course["balanced_accuracy"] >= 0.05


@pytest.mark.slow
@pytest.mark.timeout(7200)
def test_cvn_ahead_of_the_course_cnn_on_mode(head_to_head: dict) -> None:
    """Issue 27: our mode classifier at least 10 points of natural accuracy on CC events above the course CNN's."""
    ours, course = head_to_head["cvn", "mode"], head_to_head["course", "mode"]
    assert ours["notebook"]["accuracy"] - course["notebook"]["accuracy"] >= 0.10
