"""Write small hand-made datasets in the Kaggle layout, independent of the simulator."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from neutrino_ray.icecube.geometry import icecube86
from neutrino_ray.icecube.simwrite import PULSE_SCHEMA, meta_from_pulses


def random_events(rng: np.random.Generator, n_events: int, first_id: int = 0,
                  counts: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Flat pulse arrays for events with random sensors/times, sorted by (event_id, time)."""
    counts = rng.integers(1, 300, n_events) if counts is None else np.asarray(counts)
    ids = first_id + np.cumsum(rng.integers(1, 5, n_events))
    ev = np.repeat(ids, counts)
    t = rng.integers(5_000, 20_000, len(ev))
    order = np.lexsort((t, ev))
    return {
        "event_id": ev[order].astype(np.int64),
        "sensor_id": rng.integers(0, 5160, len(ev)).astype(np.int16),
        "time": t[order].astype(np.int64),
        "charge": rng.gamma(2.0, 0.6, len(ev)) + 0.025,
        "auxiliary": rng.random(len(ev)) < 0.4,
    }


def write_batch(path: Path, pulses: dict[str, np.ndarray], row_group_size: int = 1 << 20) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({c: pulses[c] for c in PULSE_SCHEMA.names}, schema=PULSE_SCHEMA)
    pq.write_table(table, path, row_group_size=row_group_size)


def write_dataset(root: Path, batches: dict[int, dict[str, np.ndarray]], split: str = "test",
                  row_group_size: int = 1 << 20, truth: bool = True) -> Path:
    """Batch files, meta (+ truth for test) and geometry for one split."""
    metas = []
    for b, pulses in batches.items():
        write_batch(root / split / f"batch_{b}.parquet", pulses, row_group_size)
        metas.append(meta_from_pulses(b, pulses["event_id"]))
    meta = pa.concat_tables(metas)
    rng = np.random.default_rng(0)
    az = rng.uniform(0, 2 * np.pi, len(meta))
    zen = np.arccos(rng.uniform(-1, 1, len(meta)))
    if split == "train":
        meta = meta.append_column("azimuth", pa.array(az)).append_column("zenith", pa.array(zen))
    elif truth:
        pq.write_table(pa.table({"event_id": meta.column("event_id"), "azimuth": az, "zenith": zen}),
                       root / f"{split}_truth.parquet")
    pq.write_table(meta, root / f"{split}_meta.parquet")
    pacsv.write_csv(icecube86().to_table(), root / "sensor_geometry.csv")
    return root


def model_artefact(path: Path, size: str = "small", **overrides: object) -> Path:
    """A direction-model folder as `icecube train` writes it (random weights), config fields overridden."""
    import torch

    from neutrino_ray import artefact
    from neutrino_ray.icecube.architectures import default_max_pulses
    from neutrino_ray.icecube.train import DirectionTask

    task = DirectionTask(size, max_pulses=default_max_pulses(size),
                         inference_max_pulses=768 if size.startswith("transformer") else None)
    torch.manual_seed(0)
    model = task.build_model()
    config = artefact.artefact_config(task, model) | overrides
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config))
    torch.save(model.state_dict(), path / "model.pt")
    return path
