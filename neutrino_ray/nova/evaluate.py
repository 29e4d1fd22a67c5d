"""``nova evaluate``: predictions joined with the truth of the files they score → report, plots, summary.

The truth comes from DATA (each file's ``neutrino/*`` fields, read without the pixels), joined on
(``file``, ``index``); every prediction must match one event and every event must be predicted once.
The analysis itself is :func:`neutrino_ray.nova.analysis.analyse`.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import numpy as np
import pyarrow as pa

from neutrino_ray import storage
from neutrino_ray.errors import InputError
from neutrino_ray.nova import analysis, data, targets
from neutrino_ray.nova import analysis_render as render
from neutrino_ray.nova.predict import TASK_METADATA
from neutrino_ray.nova.train import TASK_PREFIX

log = logging.getLogger("neutrino_ray")

REPORT, SUMMARY = "report.json", "summary.md"


def load_predictions(uri: str) -> tuple[str, pa.Table]:
    """(task, predictions) from a ``nova predict`` Parquet file; a clear error for anything else."""
    try:
        table = storage.read_parquet(uri)
    except FileNotFoundError as e:
        raise InputError(f"{uri}: predictions not found") from e
    raw = (table.schema.metadata or {}).get(TASK_METADATA, b"").decode()
    task = raw.removeprefix(TASK_PREFIX)
    if not raw.startswith(TASK_PREFIX) or task not in targets.TASKS:
        raise InputError(f"{uri}: not NOvA predictions (no '{TASK_METADATA.decode()}' metadata naming a task; "
                         f"write them with 'neutrino-ray nova predict')")
    need = ["file", "index", "visible_energy", "predicted",
            *(f"prob_{c}" for c in targets.CLASSES.get(task, ()))]
    missing = [c for c in need if c not in table.column_names]
    if missing:
        raise InputError(f"{uri}: predictions for task {task!r} lack columns {missing}")
    return task, table


def join_truth(preds: pa.Table, scan: data.Scan, where: str) -> pa.Table:
    """Truth fields of each predicted event, then the prediction columns; exactly one prediction per event."""
    offsets = np.cumsum([0] + [m.n_events for m in scan.files])
    names = preds.column("file").to_numpy(zero_copy_only=False)
    index = preds.column("index").to_numpy().astype(np.int64)
    file_no = data.file_numbers(preds.column("file"), scan)
    if (file_no < 0).any():
        unknown = sorted({str(n) for n in names[file_no < 0]})
        raise InputError(f"{where}: predictions name files that are not in the data: {unknown[:5]}")
    sizes = offsets[1:] - offsets[:-1]
    bad = np.flatnonzero((index < 0) | (index >= sizes[file_no]))
    if len(bad):
        i = int(bad[0])
        raise InputError(f"{where}: prediction for {names[i]} event row {index[i]}, which the file does not have "
                         f"({sizes[file_no[i]]} events)")
    pos = offsets[file_no] + index
    counts = np.bincount(pos, minlength=int(offsets[-1]))
    if (counts > 1).any() or (counts == 0).any():
        dup, miss = int((counts > 1).sum()), int((counts == 0).sum())
        first = int(np.flatnonzero(counts != 1)[0])
        f = int(np.searchsorted(offsets, first, side="right") - 1)
        raise InputError(f"{where}: predictions must cover each event once: {dup} events predicted more than once, "
                         f"{miss} never (first: {scan.files[f].name} event row {first - offsets[f]})")
    truth = {name: np.concatenate([m.fields[name] for m in scan.files])[pos] for name in scan.files[0].fields}
    cols: dict[str, Any] = {"file": preds.column("file"), "index": preds.column("index"), **truth}
    for c in preds.column_names:
        if c not in cols:
            cols[c] = preds.column(c)
    return pa.table(cols)


def evaluate(data_uri: str, predictions_uri: str, out: str, threshold: float = 0.5, skip_bad: bool = False,
             seed: int = 0, command: list[str] | None = None) -> dict[str, Any]:
    """Analyse one task's predictions against DATA's truth; publish report.json, summary.md, plots and, for a
    classification task, efficiency.md."""
    started = time.time()
    if not 0 < threshold < 1:
        raise InputError(f"--threshold must be between 0 and 1, got {threshold}")
    task, preds = load_predictions(predictions_uri)
    scan = data.scan(data_uri, skip_bad=skip_bad)
    events = join_truth(preds, scan, predictions_uri)
    try:
        report, pngs, markdown = analysis.analyse(task, events, threshold=threshold, seed=seed)
    except ValueError as e:
        raise InputError(f"{predictions_uri}: {e}") from e
    report["inputs"] = {"data": data_uri, "predictions": predictions_uri,
                        "skipped_files": [u for u, _ in scan.skipped]}
    with storage.Output(out, command=command, inputs=[data_uri, predictions_uri], started=started) as output:
        output.write(REPORT, json.dumps(report, indent=2, allow_nan=False).encode())
        output.write(SUMMARY, markdown.encode())
        if "efficiency" in report:  # classification tasks
            output.write(render.EFFICIENCY_TABLES, render.efficiency_markdown(report).encode())
        for name, png in pngs.items():
            output.write(name, png)
        output.commit(kind="nova-evaluate", task=task, events=len(events), rows={REPORT: len(events)},
                      skipped_files=report["inputs"]["skipped_files"])
    log.info("evaluated %s on %d events → %s", task, len(events), storage.join(out, SUMMARY))
    return report
