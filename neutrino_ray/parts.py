"""Scores written where they are computed and published exactly once: the parts protocol of batch inference.

A worker writes the scores of each unit of work (an IceCube slice, a NOvA slice) as one *part*: a Parquet
file sorted by the integer key column (``event_id``), in a staging folder beside the output named by the
fingerprint of the inputs, models and settings, with its summary (rows, group, key range, ``ok`` rows, the
fingerprint) in its footer; only the summary goes back to the driver. The same unit gets the same part name in
every attempt, so a killed run re-run with the same command finds the parts it finished (:meth:`Parts.finished`,
recognised before any decoding) and scores only the rest; a part naming another fingerprint or row count is
scored again and overwritten.

The driver checks exactly once from the summaries alone (:func:`check_parts`: every part of this fingerprint,
none twice, per group the rows planned), then streams the parts in key order, one in memory at a time
(:func:`iter_parts`), into the published files: its memory does not grow with the number of events.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from neutrino_ray import storage

log = logging.getLogger("neutrino_ray")

PARTS = "parts"  # the staging folder's name, after storage.STAGING_PREFIX and before the fingerprint
PART_SUMMARY = pa.schema([("part", pa.string()), ("group", pa.int64()), ("rows", pa.int64()),
                          ("min_key", pa.int64()), ("max_key", pa.int64()), ("ok", pa.int64()),
                          ("fingerprint", pa.string()), ("reused", pa.bool_())])
PART_META = b"neutrino_ray.part"  # a part's summary, in its Parquet footer


@dataclass(frozen=True)
class Unit:
    """One unit of work as the parts protocol sees it: its part's name, its group and its planned rows."""

    name: str
    group: int
    rows: int


@dataclass(frozen=True)
class Parts:
    """Where the workers write each unit's scores (see the module docstring), keyed by ``key``."""

    uri: str
    fingerprint: str
    key: str = "event_id"

    @staticmethod
    def beside(out: str, fingerprint: str, key: str = "event_id") -> Parts:
        """The staging folder of a run publishing to ``out``: beside it, so that the previous publication stays
        whole while this run scores, named by the fingerprint, so that a re-run finds it."""
        return Parts(storage.join(out, f"{storage.STAGING_PREFIX}{PARTS}-{fingerprint[:16]}"), fingerprint, key)

    def score(self, units: Sequence[Unit], score: Callable[[int], pa.Table]) -> pa.Table:
        """Each unit: its finished part's summary, or its scores (``score(i)`` for the i-th unit) written."""
        out = []
        for i, unit in enumerate(units):
            found = self.finished(unit)
            out.append(found if found is not None else self.write(score(i), unit))
        return pa.concat_tables(out)

    def finished(self, unit: Unit) -> pa.Table | None:
        """The summary of the part an earlier attempt finished for this unit (its footer names this fingerprint
        and the unit's row count), or None: absent, unreadable or stale parts are scored again and overwritten."""
        uri = storage.join(self.uri, unit.name)
        if not storage.exists(uri):
            return None
        try:
            md = storage.read_parquet_metadata(uri)
            summary = json.loads((md.metadata or {}).get(PART_META, b"{}"))
        except (storage.StorageError, ValueError):
            return None
        if summary.get("fingerprint") != self.fingerprint or summary.get("rows") != unit.rows \
                or md.num_rows != unit.rows:
            return None
        return pa.Table.from_pylist([{**summary, "reused": True}], schema=PART_SUMMARY)

    def write(self, result: pa.Table, unit: Unit) -> pa.Table:
        """One unit's scores, sorted by key, as a Parquet part carrying its summary; returns the summary."""
        t = result.sort_by(self.key)
        keys = t.column(self.key).to_numpy()
        ok = t.column("ok").to_numpy(zero_copy_only=False) if "ok" in t.column_names else np.ones(len(t), bool)
        summary = {"part": unit.name, "group": unit.group, "rows": len(t),
                   "min_key": int(keys[0]) if len(keys) else -1, "max_key": int(keys[-1]) if len(keys) else -1,
                   "ok": int(np.count_nonzero(ok)), "fingerprint": self.fingerprint}
        t = t.replace_schema_metadata({PART_META: json.dumps(summary).encode()})
        storage.write_bytes(storage.join(self.uri, unit.name), storage.parquet_bytes(t))
        return pa.Table.from_pylist([{**summary, "reused": False}], schema=PART_SUMMARY)

    def read(self, name: str) -> pa.Table:
        """A part, checked once more against this run's fingerprint as it is read for publication."""
        uri = storage.join(self.uri, name)
        t = storage.read_parquet(uri)
        summary = json.loads((t.schema.metadata or {}).get(PART_META, b"{}"))
        if summary.get("fingerprint") != self.fingerprint or summary.get("rows") != len(t):
            raise RuntimeError(f"{uri}: part changed since it was checked (fingerprint or row count); "
                               "nothing was published")
        return t


def check_parts(summary: pa.Table, expected: dict[int, int], fingerprint: str, where: str,
                group: str = "batch", planned: str = "the meta") -> tuple[list[str], bool]:
    """Exactly once, from the parts' summaries alone: every part of this fingerprint, none twice, and per
    ``group`` the rows ``expected`` (as ``planned``). Returns the parts ordered by first key, and whether their
    key ranges are disjoint (then their concatenation in that order is sorted with no key twice; else keys
    must be checked after a sort)."""
    names = summary.column("part").to_pylist()
    stale = [n for n, f in zip(names, summary.column("fingerprint").to_pylist()) if f != fingerprint]
    if stale:
        raise RuntimeError(f"{where}: part {stale[0]} was scored from other inputs, models or settings (fingerprint "
                           f"differs from this run's {fingerprint[:12]}); nothing was published")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise RuntimeError(f"{where}: part {twice[0]} written twice; nothing was published")
    got: dict[int, int] = {}
    for g, n in zip(summary.column("group").to_pylist(), summary.column("rows").to_pylist()):
        got[g] = got.get(g, 0) + n
    for g in sorted(set(expected) | set(got)):
        if got.get(g, 0) != expected.get(g, 0):
            why = "a part is missing" if got.get(g, 0) < expected.get(g, 0) else "more than planned"
            raise RuntimeError(f"{where}: {group} {g} has {got.get(g, 0)} events in its parts for "
                               f"{expected.get(g, 0)} in {planned} ({why}); nothing was published")
    order = np.argsort(summary.column("min_key").to_numpy(), kind="stable")
    lo = summary.column("min_key").to_numpy()[order]
    hi = summary.column("max_key").to_numpy()[order]
    return [names[i] for i in order], bool(np.all(lo[1:] > hi[:-1]))


def iter_parts(parts: Parts, names: list[str], disjoint: bool, where: str,
               check: Callable[[pa.Table], None]) -> Iterator[pa.Table]:
    """The parts in key order, one in memory at a time when their key ranges are disjoint; else (keys not
    ordered by part: foreign data) all of them sorted in memory and passed to ``check`` (no key twice)."""
    if disjoint:
        for name in names:
            yield parts.read(name)
        return
    log.warning("%s: keys of different parts interleave; sorting all %d parts in memory", where, len(names))
    t = pa.concat_tables(parts.read(n) for n in names).sort_by(parts.key)
    check(t)
    yield t

