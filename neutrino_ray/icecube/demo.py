"""The main job on embedded defaults: simulate → the Kaggle LineFit → a GNN trained briefly → prediction with
calibrated uncertainties → a side-by-side comparison, on local Ray (or S3 via --out).

The default model is ``refine`` (:class:`~neutrino_ray.icecube.models.SeededDynEdge`): a light DynEdge that takes
each event's Kaggle LineFit direction as its seed and learns a tilt of it, starting exactly at LineFit, as
IceCube's likelihood reconstructions start from LineFit. A GNN from scratch (``--model small``) needs far more
CPU time than a demo has to catch up with LineFit (docs/icecube.md, 'The demo'). The verdict follows the paired
95 % interval on err(LineFit) − err(model) over the same test events, from ``compare``."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

from neutrino_ray import logs, storage
from neutrino_ray.errors import InputError
from neutrino_ray.icecube.architectures import GNN_SIZES as MODEL_SIZES
from neutrino_ray.icecube.calibrate import calibrate
from neutrino_ray.icecube.compare import SUMMARY, compare
from neutrino_ray.icecube.evaluate import REPORT, evaluate
from neutrino_ray.icecube.options import ScoringOptions
from neutrino_ray.icecube.predict import PREDICTIONS, SUBMISSION, predict
from neutrino_ray.icecube.simwrite import simulate_dataset

REAL = {"linefit": "1.214 rad (public LineFit, aux = False pulses, leaderboard)",
        "gnn": "1.018 rad (GraphNeT DynEdge, trained for days on a GPU)"}
DEFAULT_MODEL = "refine"
DEFAULT_TRAIN_MINUTES = 2.0


@contextlib.contextmanager
def _stage() -> Iterator[None]:
    """One stage of the demo: its progress line shows; the stage's own INFO lines (paths, timings) do not,
    since the summary at the end says the same. Warnings and errors still show."""
    ours = logging.getLogger("neutrino_ray")
    before = ours.level
    ours.setLevel(max(before, logging.WARNING))
    try:
        yield
    finally:
        ours.setLevel(before)


def demo(out: str = "demo-output", events: int = 30_000, seed: int = 7, train_minutes: float = DEFAULT_TRAIN_MINUTES,
         workers: int = 2, model_name: str = DEFAULT_MODEL) -> dict[str, Any]:
    """Run the whole IceCube spine on ``events`` simulated events (80 % train, 20 % test batches), training
    ``model_name`` (a DynEdge-family architecture) for ``train_minutes``."""
    from neutrino_ray.icecube.train import train

    if model_name not in MODEL_SIZES:
        raise InputError(f"--model {model_name}: the demo trains a DynEdge-family model ({', '.join(MODEL_SIZES)})")
    label = f"{model_name} GNN"

    start = time.perf_counter()
    data, lf_dir, report_dir, gnn_dir, gnn_pred, cmp_dir = (storage.join(out, p) for p in (
        "icecube-data", "linefit", "evaluation", "gnn", "gnn-predictions", "comparison"))
    per_batch = max(1, events // 5)
    if logs.level() != logs.QUIET:  # -q: the summary only
        print(f"neutrino-ray demo: simulate {5 * per_batch:,} IceCube events → Kaggle LineFit → train "
              f"`{model_name}` for {train_minutes:g} min → calibrate → score → compare  (outputs in {out})", flush=True)
    with _stage():
        sim = simulate_dataset(data, per_batch, train_batches=4, test_batches=1, seed=seed)
    with _stage():
        lf = predict(data, "test", lf_dir)
        report = evaluate(data, "test", storage.join(lf_dir, SUBMISSION), report_dir)
    val = max(200, min(2_000, 4 * per_batch // 10))
    with _stage():
        res = train(data, gnn_dir, model_name, workers=workers, epochs=100, max_minutes=train_minutes, val_events=val,
                    checkpoint_minutes=max(train_minutes, 0.1), log_every_steps=1_000)
    model = storage.join(gnn_dir, "model")
    with _stage():
        cal = calibrate(data, model, "train")
        predict(data, "test", gnn_pred, ScoringOptions(model=model))
        gnn_report = evaluate(data, "test", storage.join(gnn_pred, PREDICTIONS), storage.join(out, "gnn-evaluation"))
        cmp = compare(data, "test", [storage.join(lf_dir, PREDICTIONS), storage.join(gnn_pred, PREDICTIONS)],
                      ["Kaggle LineFit", label], cmp_dir)
    lf_m, gnn_m = cmp["models"]
    t = res.config["training"]
    wall = time.perf_counter() - start
    pair = cmp["paired"][0]  # a = LineFit, b = the model, on the same test events: err(LineFit) - err(model)
    lo, hi = pair["mean_difference_interval_95"]
    beats = lo > 0  # the paired 95 % interval on the difference excludes zero, on the model's side
    unc = gnn_report["uncertainty"]
    paired = (f"paired on the same {pair['n_events']:,} test events: err(LineFit) − err({model_name}) = "
              f"{pair['mean_difference']:+.4f} rad, 95 % interval [{lo:+.4f}, {hi:+.4f}]; {model_name} is closer on "
              f"{1 - pair['fraction_a_better'] - pair['fraction_tied']:.1%} of them")
    verdict = (f"`{model_name}` beats LineFit: {paired}" if beats else
               f"{paired}\n  after {t['minutes']:.1f} min on {t['events']:,} events `{model_name}` does NOT beat "
               "LineFit: the 95 % interval does not exclude zero (docs/icecube.md, 'The demo', has the budgets "
               "measured)")
    seeded = " (starts at LineFit: its seed)" if MODEL_SIZES[model_name].seeded else ""
    print(f"""neutrino-ray demo finished in {wall:.0f} s
  data         {data} ({sim['events']:,} events, Kaggle layout); LineFit {lf['events']:,} test events at \
{lf['inference_events_per_second']:,.0f} events/s
  model        {model} ({model_name}{seeded}, {res.config['n_parameters']:,} parameters, {t['minutes']:.1f} min \
on {workers} workers, {t['events']:,} events; κ calibrated on {cal['events']:,} held-out events)
  outputs      {storage.join(lf_dir, SUBMISSION)}, {storage.join(gnn_pred, PREDICTIONS)} (κ, sigma_50/68/90), \
{storage.join(report_dir, REPORT)}, {storage.join(cmp_dir, SUMMARY)} (+ plots)

  model                       test mean angular error (68 % interval)    the real Kaggle data
  Kaggle LineFit              {lf_m['mean_angular_error']:.4f} [{lf_m['mean_interval_68'][0]:.4f}, \
{lf_m['mean_interval_68'][1]:.4f}]                  {REAL['linefit']}
  {f"{label}, {t['minutes']:.1f} min":<27} {gnn_m['mean_angular_error']:.4f} [{gnn_m['mean_interval_68'][0]:.4f}, \
{gnn_m['mean_interval_68'][1]:.4f}]                  {REAL['gnn']}
  uncertainties: {unc['coverage_68']:.3f} of the test events lie inside their sigma_68, {unc['coverage_90']:.3f} \
inside sigma_90 (nominal 0.68, 0.90)
  {verdict}""")
    return {"linefit": report, "gnn": gnn_report, "comparison": cmp, "beats_linefit": beats, "seconds": wall}
