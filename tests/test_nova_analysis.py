"""NOvA analysts' evaluation on hand-made events with known answers (pure numpy; no Ray, no storage)."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from neutrino_ray.nova import analysis, targets
from neutrino_ray.nova import analysis_render as render
from neutrino_ray.nova import format as fmt

ALPHA = (1 - analysis.CL) / 2


def make_events(interaction: list[int], *, probs: list[list[float]] | None = None, predicted: Any = None,
                nuenergy: Any = None, lepenergy: Any = None, visible: Any = None, finalstate: Any = None,
                task: str = "numu-cc") -> pa.Table:
    """A scored-events table: every truth field (zeros unless given), visible energy and the task's scores."""
    n = len(interaction)
    cols: dict[str, Any] = {name: np.zeros(n, dtype) for name, dtype in fmt.FIELDS.items()}
    cols["interaction"] = np.array(interaction, np.uint32)
    cols["nuenergy"] = np.array(nuenergy if nuenergy is not None else [1.0] * n, np.float32)
    cols["lepenergy"] = np.array(lepenergy if lepenergy is not None else [0.5] * n, np.float32)
    if finalstate is not None:
        cols["finalstate"] = np.array(finalstate, np.uint32)
    cols["visible_energy"] = np.array(visible if visible is not None else cols["nuenergy"], np.float64)
    if task in targets.CLASSES:
        p = np.array(probs, np.float32).reshape(n, len(targets.CLASSES[task]))
        for i, c in enumerate(targets.CLASSES[task]):
            cols[f"prob_{c}"] = p[:, i]
        cols["predicted"] = np.array(predicted if predicted is not None else p.argmax(axis=1), np.int64)
    else:
        cols["predicted"] = np.array(predicted, np.float64)
    return pa.table(cols)


def binary(scores: list[float]) -> list[list[float]]:
    return [[1 - s, s] for s in scores]


def check_outputs(report: dict[str, Any], plots: dict[str, bytes], markdown: str) -> None:
    json.dumps(report, allow_nan=False)
    assert plots and all(v.startswith(b"\x89PNG") for v in plots.values())
    assert markdown.startswith(f"# NOvA evaluation: {report['task']}")
    assert all(name in markdown for name in plots)
    assert len(markdown.splitlines()) <= 60


# ---------------------------------------------------------------- helpers


def test_binomial_efficiency_values_and_intervals():
    p, err, lo, hi = analysis.binomial_efficiency([10, 4, 4, 0], [5, 4, 0, 0])
    np.testing.assert_allclose(p[:3], [0.5, 1.0, 0.0])
    np.testing.assert_allclose(err[:3], [math.sqrt(0.5 * 0.5 / 10), 0.0, 0.0])
    assert np.isnan([p[3], err[3], lo[3], hi[3]]).all()
    # Clopper–Pearson closed forms at the edges, symmetry at p = 1/2
    np.testing.assert_allclose([lo[1], hi[1]], [ALPHA ** (1 / 4), 1.0])
    np.testing.assert_allclose([lo[2], hi[2]], [0.0, 1 - ALPHA ** (1 / 4)])
    assert lo[0] < 0.5 < hi[0]
    assert lo[0] + hi[0] == pytest.approx(1.0)
    p1, err1, _, _ = analysis.binomial_efficiency(100, 30)  # scalars work too
    assert float(p1) == 0.3 and float(err1) == pytest.approx(math.sqrt(0.3 * 0.7 / 100))
    with pytest.raises(ValueError):
        analysis.binomial_efficiency([3], [4])


def test_balanced_subsample_equal_counts_and_deterministic():
    labels = np.array([0] * 5 + [1] * 3 + [2] * 7 + [-1] * 4)
    rng = np.random.default_rng(3)
    labels = labels[rng.permutation(len(labels))]
    idx = analysis.balanced_subsample(labels, seed=1)
    assert np.bincount(labels[idx], minlength=3).tolist() == [3, 3, 3]
    assert (labels[idx] >= 0).all() and len(np.unique(idx)) == len(idx) and (np.diff(idx) > 0).all()
    np.testing.assert_array_equal(idx, analysis.balanced_subsample(labels, seed=1))
    others = [analysis.balanced_subsample(labels, seed=s) for s in range(2, 8)]
    assert any(not np.array_equal(idx, o) for o in others)
    assert len(analysis.balanced_subsample(np.array([-1, -1]), seed=0)) == 0


def test_efficiency_table_bins():
    values = np.array([0.2, 0.7, 0.8, 100.0, 3.5, np.nan, 0.3])
    selected = np.array([True, False, True, True, False, True, True])
    in_class = np.array([True, True, True, True, True, True, False])
    rows = analysis.efficiency_table(values, analysis.ENERGY_EDGES, selected, in_class)
    assert [(r["bin"], r["n"], r["k"]) for r in rows] == [
        ([0.0, 0.5], 1, 1), ([0.5, 1.0], 2, 1), ([3.0, 4.0], 1, 0), ([80.0, None], 1, 1)]
    assert rows[1]["efficiency"] == 0.5 and rows[1]["error"] == pytest.approx(math.sqrt(0.125))
    assert rows[2]["efficiency"] == 0.0 and rows[2]["interval68"][0] == 0.0


def test_efficiency_by_category():
    rows = analysis.efficiency_by_category(np.array([13, 0, 13, 0, 5]), np.array([1, 0, 1, 1, 0], bool),
                                           np.array([1, 1, 1, 1, 0], bool), analysis.interaction_name)
    assert [(r["code"], r["name"], r["n"], r["k"]) for r in rows] == [(0, "numu-CC-QE", 2, 1), (13, "NC", 2, 2)]


def test_resolution_stats_known_values():
    s = analysis.resolution_stats(np.array([-0.2, -0.2, 0.2, 0.2]))
    assert s["n"] == 4
    assert s["bias_mean"] == pytest.approx(0.0) and s["bias_median"] == pytest.approx(0.0)
    assert s["rms"] == pytest.approx(0.2) and s["std"] == pytest.approx(0.2) and s["width68"] == pytest.approx(0.2)
    c = analysis.resolution_stats(np.full(5, 0.1))
    assert c["bias_mean"] == pytest.approx(0.1) and c["bias_median"] == pytest.approx(0.1)
    assert c["rms"] == pytest.approx(0.1) and c["std"] == pytest.approx(0.0) and c["width68"] == pytest.approx(0.0)
    assert analysis.resolution_stats(np.zeros(0))["width68"] is None
    rng = np.random.default_rng(0)
    g = analysis.resolution_stats(rng.normal(0.05, 0.3, 200_000))
    assert g["width68"] == pytest.approx(0.3 * 0.994, rel=0.02) and g["bias_median"] == pytest.approx(0.05, abs=0.01)


def test_resolution_table_bins():
    rows = analysis.resolution_table(np.array([0.2, 0.3, 5.0, 200.0]), np.array([0.1, 0.3, -0.2, 0.0]),
                                     analysis.ENERGY_EDGES)
    assert [(r["bin"], r["n"]) for r in rows] == [([0.0, 0.5], 2), ([5.0, 7.0], 1), ([80.0, None], 1)]
    assert rows[0]["bias_mean"] == pytest.approx(0.2) and rows[1]["bias_median"] == pytest.approx(-0.2)


# ---------------------------------------------------------------- classification


def test_numu_cc_by_hand():
    # ν_μ CC QE, ν_μ CC RES (signal); NC, ν_e CC RES (background)
    events = make_events([0, 1, 13, 5], probs=binary([0.9, 0.4, 0.6, 0.1]), nuenergy=[0.7, 3.2, 0.6, 12.0],
                         lepenergy=[0.4, 2.0, 0.0, 9.0], visible=[0.6, 2.5, 0.3, 11.0], finalstate=[4, 5, 33, 17])
    report, plots, md = analysis.analyse("numu-cc", events, threshold=0.5, seed=0)
    check_outputs(report, plots, md)
    assert (report["n_events"], report["n_in_task"], report["n_skipped"]) == (4, 4, 0)
    assert report["class_counts"] == {"other": 2, "numu-CC": 2}
    assert report["accuracy"] == 0.5 and report["balanced_accuracy"] == 0.5
    assert report["balanced_test_set"]["class_counts"] == {"other": 2, "numu-CC": 2}
    assert report["confusion_matrix"]["counts"] == [[1, 1], [1, 1]]
    assert report["confusion_matrix"]["row_normalised"] == [[0.5, 0.5], [0.5, 0.5]]
    assert report["roc_auc"] == pytest.approx(0.75)  # 3 of the 4 (signal, background) pairs ordered right
    at = report["at_threshold"]
    assert (at["n_selected"], at["efficiency"], at["purity"], at["background_acceptance"]) == (2, 0.5, 0.5, 0.5)
    # accuracy 3/4 for thresholds in (0.1, 0.4] and (0.6, 0.9]: the first is 0.11
    assert report["best_threshold"]["accuracy"] == {"threshold": 0.11, "value": 0.75}
    vt = report["vs_threshold"]
    assert len(vt["threshold"]) == 101 and vt["accuracy"][0] == 0.5 and vt["efficiency"][0] == 1.0
    assert vt["purity"][-1] is None  # nothing selected at threshold 1
    eff = report["efficiency"]["numu-CC"]
    assert (eff["n"], eff["k"], eff["efficiency"]) == (2, 1, 0.5)
    assert [(r["name"], r["n"], r["k"]) for r in eff["by_interaction"]] == [("numu-CC-QE", 1, 1),
                                                                          ("numu-CC-RES", 1, 0)]
    assert [(r["name"], r["n"], r["k"]) for r in eff["by_mode"]] == [("QE", 1, 1), ("RES", 1, 0)]
    assert [(r["name"], r["k"]) for r in eff["by_finalstate"]] == [("numu-CC 1trk 0shw", 1), ("numu-CC 1trk 1shw", 0)]
    assert [(r["bin"], r["n"], r["k"]) for r in eff["vs_nuenergy"]] == [([0.5, 1.0], 1, 1), ([3.0, 4.0], 1, 0)]
    assert [(r["bin"], r["k"]) for r in eff["vs_lepenergy"]] == [([0.0, 0.5], 1), ([2.0, 2.5], 0)]
    assert [(r["bin"], r["k"]) for r in eff["vs_visible_energy"]] == [([0.5, 1.0], 1), ([2.5, 3.0], 0)]
    bkg = report["background_acceptance"]
    assert [(r["name"], r["n"], r["k"]) for r in bkg["by_interaction"]] == [("nue-CC-RES", 1, 0), ("NC", 1, 1)]
    assert set(plots) == {"roc.png", "accuracy_vs_threshold.png", "score_distribution.png", "confusion_matrix.png",
                          "efficiency_vs_nuenergy.png", "efficiency_vs_lepenergy.png",
                          "efficiency_vs_visible_energy.png", "efficiency_by_interaction.png"}
    assert "**ROC AUC**: 0.7500" in md and "**accuracy** (natural test set): 0.5000" in md
    # efficiency.md: by mode, by final state and against energy (bins matched by their edges)
    tables = render.efficiency_markdown(report)
    assert "| RES | 1 | 0 | 0.000 ± 0.000 |" in tables and "| numu-CC 1trk 1shw | 1 | 0 | 0.000 ± 0.000 |" in tables
    assert "| 0–0.5 | – | 1.000 ± 0.000 (1) | – |" in tables and "| 3–4 | 0.000 ± 0.000 (1) | – | – |" in tables
    assert render.EFFICIENCY_TABLES in md


def test_numu_cc_threshold_moves_selection():
    events = make_events([0, 1, 13, 5], probs=binary([0.9, 0.4, 0.6, 0.1]))
    report, _, _ = analysis.analyse("numu-cc", events, threshold=0.7)
    assert report["accuracy"] == 0.75 and report["confusion_matrix"]["counts"] == [[2, 0], [1, 1]]
    assert report["at_threshold"]["purity"] == 1.0 and report["at_threshold"]["background_acceptance"] == 0.0


def test_auc_perfect_and_constant():
    perfect = make_events([0, 2, 13, 14], probs=binary([0.9, 0.8, 0.2, 0.1]))
    assert analysis.analyse("numu-cc", perfect)[0]["roc_auc"] == 1.0
    constant = make_events([0, 2, 13, 14], probs=binary([0.5, 0.5, 0.5, 0.5]))
    report, _, _ = analysis.analyse("numu-cc", constant)
    assert report["roc_auc"] == 0.5
    assert report["at_threshold"]["efficiency"] == 1.0 and report["at_threshold"]["background_acceptance"] == 1.0


def test_balanced_accuracy_on_unbalanced_set():
    # 6 background all right, 2 signal: 1 right. natural 7/8, balanced accuracy (1 + 0.5) / 2
    events = make_events([13] * 6 + [0, 0], probs=binary([0.1] * 6 + [0.9, 0.2]))
    report, _, _ = analysis.analyse("numu-cc", events, seed=5)
    assert report["accuracy"] == 7 / 8 and report["balanced_accuracy"] == 0.75
    bt = report["balanced_test_set"]
    assert bt["n"] == 4 and bt["class_counts"] == {"other": 2, "numu-CC": 2} and bt["accuracy"] == 0.75


def test_flavour_by_hand_with_skipped_events():
    probs = [[0.8, 0.1, 0.1], [0.2, 0.3, 0.5], [0.1, 0.2, 0.7], [0.3, 0.3, 0.4], [0.6, 0.2, 0.2]]
    # ν_μ CC, ν_e CC, NC in the task; ν_τ CC and a cosmic are not
    events = make_events([0, 4, 13, 8, 14], probs=probs, task="flavour")
    report, plots, md = analysis.analyse("flavour", events)
    check_outputs(report, plots, md)
    assert (report["n_events"], report["n_in_task"], report["n_skipped"]) == (5, 3, 2)
    assert report["skipped"] == {"not_in_task": {"nutau-CC-QE": 1, "cosmic": 1}, "non_finite_prediction": 0}
    assert report["confusion_matrix"]["counts"] == [[1, 0, 0], [0, 0, 1], [0, 0, 1]]
    assert report["accuracy"] == pytest.approx(2 / 3) and report["balanced_accuracy"] == pytest.approx(2 / 3)
    assert report["recall"] == {"numu-CC": 1.0, "nue-CC": 0.0, "NC": 1.0}
    assert report["precision"] == {"numu-CC": 1.0, "nue-CC": None, "NC": 0.5}
    assert report["roc_auc_ovr"] == {"per_class": {"numu-CC": 1.0, "nue-CC": 1.0, "NC": 1.0}, "macro": 1.0}
    eff = report["efficiency"]
    assert [(r["name"], r["n"], r["k"]) for c in ("numu-CC", "nue-CC", "NC") for r in eff[c]["by_interaction"]] == [
        ("numu-CC-QE", 1, 1), ("nue-CC-QE", 1, 0), ("NC", 1, 1)]
    assert eff["NC"]["by_mode"] == []  # NC has no mode
    assert report["threshold"] is None and "roc_auc" not in report
    assert "nutau-CC-QE 1" in md and "**macro one-vs-rest AUC**: 1.0000" in md


def test_flavour_absent_class_does_not_crash():
    events = make_events([0, 0, 4, 5], probs=[[0.7, 0.2, 0.1], [0.4, 0.5, 0.1], [0.1, 0.8, 0.1], [0.2, 0.7, 0.1]],
                         task="flavour")
    report, plots, md = analysis.analyse("flavour", events)
    check_outputs(report, plots, md)
    assert report["class_counts"]["NC"] == 0 and report["recall"]["NC"] is None
    assert report["roc_auc_ovr"]["per_class"]["NC"] is None
    assert report["roc_auc_ovr"]["per_class"]["numu-CC"] == 1.0
    assert report["roc_auc_ovr"]["macro"] == 1.0
    assert report["balanced_accuracy"] == pytest.approx(0.75)  # mean of 1/2 and 1 over the present classes
    assert report["balanced_test_set"]["class_counts"] == {"numu-CC": 2, "nue-CC": 2, "NC": 0}
    assert report["efficiency"]["NC"]["n"] == 0 and report["efficiency"]["NC"]["efficiency"] is None


def test_mode_by_hand():
    # QE (ν_μ), RES (ν_e), DIS (ν_τ), other (ν_μ) are in the task; NC is not
    probs = [[0.7, 0.1, 0.1, 0.1], [0.1, 0.7, 0.1, 0.1], [0.1, 0.1, 0.7, 0.1], [0.1, 0.1, 0.5, 0.3],
             [0.25, 0.25, 0.25, 0.25]]
    events = make_events([0, 5, 10, 3, 13], probs=probs, task="mode")
    report, plots, md = analysis.analyse("mode", events)
    check_outputs(report, plots, md)
    assert report["n_in_task"] == 4 and report["skipped"]["not_in_task"] == {"NC": 1}
    assert report["accuracy"] == 0.75 and report["balanced_accuracy"] == 0.75
    assert report["recall"] == {"QE": 1.0, "RES": 1.0, "DIS": 1.0, "other": 0.0}
    assert report["confusion_matrix"]["counts"][3] == [0, 0, 1, 0]
    assert [(r["name"], r["k"]) for r in report["efficiency"]["RES"]["by_interaction"]] == [("nue-CC-RES", 1)]
    assert [(r["name"], r["n"]) for r in report["efficiency"]["DIS"]["by_mode"]] == [("DIS", 1)]


def test_predicted_out_of_range_rejected():
    events = make_events([0, 4], probs=[[0.5, 0.3, 0.2], [0.2, 0.5, 0.3]], predicted=[0, 3], task="flavour")
    with pytest.raises(ValueError, match="predicted class"):
        analysis.analyse("flavour", events)


def test_single_event():
    report, plots, md = analysis.analyse("numu-cc", make_events([0], probs=binary([0.8])))
    check_outputs(report, plots, md)
    assert report["roc_auc"] is None and "roc.png" not in plots
    assert report["accuracy"] == 1.0 and report["at_threshold"]["background_acceptance"] is None
    report, plots, md = analysis.analyse("energy", make_events([13], nuenergy=[2.0], predicted=[2.5], task="energy"))
    check_outputs(report, plots, md)
    assert report["overall"]["bias_mean"] == pytest.approx(0.25) and report["overall"]["width68"] == 0.0


def test_all_outside_task_raises():
    with pytest.raises(ValueError, match="none of the 2 events"):
        analysis.analyse("flavour", make_events([14, 15], probs=[[0.3, 0.3, 0.4]] * 2, task="flavour"))
    with pytest.raises(ValueError, match="none of the 1 events"):
        analysis.analyse("energy", make_events([0], nuenergy=[0.0], predicted=[1.0], task="energy"))
    with pytest.raises(ValueError, match="none of the 0 events"):
        analysis.analyse("numu-cc", make_events([], probs=np.zeros((0, 2)).tolist()))


def test_bad_task_or_columns():
    with pytest.raises(ValueError, match="unknown task"):
        analysis.analyse("charm", make_events([0], probs=binary([0.5])))
    with pytest.raises(ValueError, match="lack columns"):
        analysis.analyse("numu-cc", make_events([0], probs=binary([0.5])).drop(["visible_energy"]))


# ---------------------------------------------------------------- regression


def test_energy_regression_by_hand():
    # r = ±0.1; one event with E_ν = 0 (no target) and one with a NaN prediction are skipped
    events = make_events([0, 4, 13, 2, 0, 1], nuenergy=[1.0, 2.0, 4.0, 10.0, 0.0, 3.0],
                         predicted=[1.1, 1.8, 4.4, 9.0, 1.0, np.nan], task="energy")
    report, plots, md = analysis.analyse("energy", events)
    check_outputs(report, plots, md)
    assert (report["n_events"], report["n_in_task"], report["n_evaluated"], report["n_skipped"]) == (6, 5, 4, 2)
    assert report["skipped"] == {"not_in_task": {"true ν energy <= 0 or not finite": 1}, "non_finite_prediction": 1}
    o = report["overall"]
    assert o["n"] == 4 and o["bias_mean"] == pytest.approx(0.0, abs=1e-7) and o["bias_median"] == pytest.approx(0.0)
    assert o["rms"] == pytest.approx(0.1) and o["width68"] == pytest.approx(0.1)
    assert [(r["bin"], r["n"]) for r in report["vs_true_energy"]] == [
        ([1.0, 1.5], 1), ([2.0, 2.5], 1), ([4.0, 5.0], 1), ([10.0, 20.0], 1)]
    assert report["vs_true_energy"][1]["bias_mean"] == pytest.approx(-0.1)
    assert set(plots) == {"true_vs_reco.png", "resolution_vs_energy.png", "residual_hist.png"}
    assert "**68% width** of r: 0.1000" in md


def test_y_regression_uses_absolute_residual():
    # y = 0, 0.5, 0.75; the last event has no lepton energy
    events = make_events([0, 1, 2, 0], nuenergy=[2.0, 2.0, 4.0, 1.0], lepenergy=[0.0, 1.0, 3.0, np.nan],
                         predicted=[0.1, 0.5, 0.7, 0.3], task="y")
    report, plots, md = analysis.analyse("y", events)
    check_outputs(report, plots, md)
    assert report["skipped"]["not_in_task"] == {"lepton energy not finite": 1}
    o = report["overall"]
    assert o["bias_mean"] == pytest.approx(0.05 / 3) and o["bias_median"] == pytest.approx(0.0, abs=1e-7)
    assert o["rms"] == pytest.approx(math.sqrt((0.01 + 0.0025) / 3))
    assert [(r["bin"], r["n"]) for r in report["vs_true_y"]] == [([0.0, 0.1], 1), ([0.5, 0.6], 1), ([0.7, 0.8], 1)]
    assert "reco - true" in report["residual"]


# ---------------------------------------------------------------- every task on a random sample


@pytest.mark.parametrize("task", targets.TASKS)
def test_every_task_report_is_json_and_plots_are_png(task):
    rng = np.random.default_rng(7)
    n = 400
    inter = rng.integers(0, 16, n)
    nu = rng.exponential(3.0, n) + 0.05
    kw: dict[str, Any] = {"nuenergy": nu, "lepenergy": nu * rng.uniform(0, 1, n), "visible": nu * 0.8,
                          "finalstate": rng.integers(0, 50, n), "task": task}
    if task in targets.CLASSES:
        p = rng.dirichlet(np.ones(len(targets.CLASSES[task])), n)
        events = make_events(inter.tolist(), probs=p.tolist(), **kw)
    else:
        truth, _ = targets.targets(task, {"nuenergy": nu, "lepenergy": kw["lepenergy"]})
        events = make_events(inter.tolist(), predicted=truth * rng.normal(1, 0.2, n), **kw)
    report, plots, md = analysis.analyse(task, events, seed=1)
    check_outputs(report, plots, md)
    text = json.dumps(report, allow_nan=False)
    assert json.loads(text)["task"] == task
    assert report["n_events"] == n and report["n_in_task"] + sum(report["skipped"]["not_in_task"].values()) == n
    if task in targets.CLASSES:
        assert report["accuracy"] is not None and f"{report['accuracy']:.4f}" in md
    else:
        assert f"{report['overall']['width68']:.4f}" in md
