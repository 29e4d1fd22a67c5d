"""Write simulated events in the exact Kaggle layout, published atomically.

Each batch file is simulated in parts of 10,000 events as parallel Ray tasks, then one task per batch
concatenates its parts and writes the file.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import numpy as np
import pyarrow as pa
import ray

from neutrino_ray import progress, runtime, storage
from neutrino_ray.errors import InputError
from neutrino_ray.icecube.geometry import icecube86

log = logging.getLogger("neutrino_ray")

ROW_GROUP_ROWS = 250_000
ID_SPAN_PER_EVENT = 4  # each batch owns event ids [first, first + 4 * events_per_batch)

# pandas metadata so that pandas restores event_id as the index, as in the Kaggle files.
_PANDAS_META = {
    "index_columns": ["event_id"], "column_indexes": [], "creator": {"library": "pyarrow"},
    "pandas_version": "2.2.0",
    "columns": [
        {"name": n, "field_name": n, "pandas_type": p, "numpy_type": t, "metadata": None}
        for n, p, t in [("sensor_id", "int16", "int16"), ("time", "int64", "int64"),
                        ("charge", "float64", "float64"), ("auxiliary", "bool", "bool"),
                        ("event_id", "int64", "int64")]
    ],
}
PULSE_SCHEMA = pa.schema(
    [("sensor_id", pa.int16()), ("time", pa.int64()), ("charge", pa.float64()), ("auxiliary", pa.bool_()),
     ("event_id", pa.int64())],
    metadata={b"pandas": json.dumps(_PANDAS_META).encode()},
)


EVENTS_PER_PART = 10_000  # a batch is simulated in parts of this size, in parallel; fixed for determinism


def part_seed(seed: int, batch_id: int, part: int) -> int:
    """Independent, reproducible stream per (batch, part)."""
    return int(np.random.SeedSequence([seed, batch_id, part]).generate_state(1, np.uint64)[0])


def meta_from_pulses(batch_id: int, event_id: np.ndarray) -> pa.Table:
    """Meta rows (batch_id, event_id, first/last_pulse_index inclusive) from a sorted event_id column."""
    starts = np.flatnonzero(np.r_[True, event_id[1:] != event_id[:-1]])
    ends = np.r_[starts[1:], len(event_id)] - 1
    return pa.table({
        "batch_id": np.full(len(starts), batch_id, dtype=np.int64),
        "event_id": event_id[starts].astype(np.int64),
        "first_pulse_index": starts.astype(np.int64),
        "last_pulse_index": ends.astype(np.int64),
    })


@ray.remote
def _simulate_part(seed: int, batch_id: int, part: int, n_events: int, first_id: int) -> Any:
    from neutrino_ray.icecube.simulate import simulate_batch

    return simulate_batch(part_seed(seed, batch_id, part), n_events, first_id)


@ray.remote
def _write_batch(staged_uri: str, batch_id: int, *parts: Any) -> tuple[pa.Table, pa.Table]:
    """Concatenate a batch's parts (ids increase part by part), write the file, return meta and truth."""
    p = pa.concat_tables([part.pulses for part in parts])
    truth = pa.concat_tables([part.truth for part in parts])
    table = pa.table([p.column(c).cast(PULSE_SCHEMA.field(c).type) for c in PULSE_SCHEMA.names],
                     schema=PULSE_SCHEMA)
    storage.write_bytes(staged_uri, storage.parquet_bytes(table, row_group_size=ROW_GROUP_ROWS,
                                                          compression="snappy"))
    meta = meta_from_pulses(batch_id, p.column("event_id").to_numpy())
    if not np.array_equal(meta.column("event_id").to_numpy(), truth.column("event_id").to_numpy()):
        raise RuntimeError(f"batch {batch_id}: simulated truth and pulses disagree on event ids")
    return meta, truth


def _batch_refs(staged_uri: str, seed: int, batch_id: int, n_events: int) -> Any:
    first_id = (batch_id - 1) * ID_SPAN_PER_EVENT * n_events
    parts, counts = [], []
    for part, lo in enumerate(range(0, n_events, EVENTS_PER_PART)):
        n = min(EVENTS_PER_PART, n_events - lo)
        parts.append(_simulate_part.remote(seed, batch_id, part, n, first_id + ID_SPAN_PER_EVENT * lo))
        counts.append(n)
    return _write_batch.remote(staged_uri, batch_id, *parts), parts, counts


def simulate_dataset(out: str, events_per_batch: int, train_batches: int, test_batches: int, seed: int,
                     command: list[str] | None = None) -> dict[str, Any]:
    """Simulate ``train_batches + test_batches`` batch files into ``out`` in the Kaggle layout."""
    if events_per_batch < 1 or train_batches < 0 or test_batches < 0 or train_batches + test_batches < 1:
        raise InputError("need events_per_batch >= 1 and at least one train or test batch")
    runtime.init_ray()
    start = time.perf_counter()
    with storage.Output(out, command=command) as output:
        splits = {"train": range(1, train_batches + 1),
                  "test": range(train_batches + 1, train_batches + test_batches + 1)}
        planned = {split: [_batch_refs(output.staged(f"{split}/batch_{b}.parquet"), seed, b, events_per_batch)
                           for b in ids]
                   for split, ids in splits.items()}
        # Progress by simulated part (the events), then the batch files' writes.
        parts = [ref for batches in planned.values() for _, refs, _ in batches for ref in refs]
        counts = [n for batches in planned.values() for _, _, ns in batches for n in ns]
        progress.ray_get(parts, "simulate icecube", counts)
        results = {split: ray.get([w for w, _, _ in batches]) for split, batches in planned.items()}
        rows: dict[str, int] = {}
        for split, res in results.items():
            if not res:
                continue
            meta = pa.concat_tables([m for m, _ in res])
            truth = pa.concat_tables([t for _, t in res])
            if split == "train":
                angles = truth.select(["azimuth", "zenith"])
                meta = meta.append_column("azimuth", angles.column(0)).append_column("zenith", angles.column(1))
            else:
                output.write("test_truth.parquet", storage.parquet_bytes(truth))
                zeros = pa.array(np.zeros(len(meta)))
                sample = pa.table({"event_id": meta.column("event_id"), "azimuth": zeros, "zenith": zeros})
                output.write("sample_submission.parquet", storage.parquet_bytes(sample))
            output.write(f"{split}_meta.parquet", storage.parquet_bytes(meta))
            rows[f"{split}_meta.parquet"] = len(meta)
            rows[f"{split}_pulses"] = int(sum(int(m.column("last_pulse_index")[-1].as_py()) + 1
                                              for m, _ in res))
        output.write("sensor_geometry.csv", storage.csv_bytes(icecube86().to_table()))
        n_events = events_per_batch * (train_batches + test_batches)
        wall = time.perf_counter() - start
        manifest = output.commit(kind="icecube-simulate", seed=seed, events_per_batch=events_per_batch,
                                 train_batches=train_batches, test_batches=test_batches, rows=rows,
                                 events=n_events, simulate_events_per_second=round(n_events / wall, 1))
    log.info("simulated %d events (%d train + %d test batches) in %.1f s (%.0f events/s) into %s",
             n_events, train_batches, test_batches, wall, n_events / wall, out)
    return manifest
