"""tools/check_identical.py's comparison: what it ignores (timing and version keys of manifests, the report's
timestamp) and what it must not (any other byte, a file on one side only)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

TOOL = Path(__file__).resolve().parents[1] / "tools" / "check_identical.py"


def _tool():
    spec = importlib.util.spec_from_file_location("check_identical", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _output(root: Path, manifest: dict, html_time: str, data: bytes = b"\x00\x01") -> Path:
    root.mkdir(parents=True)
    (root / "_SUCCESS.json").write_text(json.dumps(manifest))
    (root / "report.html").write_text(f"<p>data: d; written {html_time} UTC</p>")
    (root / "predictions.parquet").write_bytes(data)
    return root


def test_only_timing_and_version_differences_are_ignored(tmp_path: Path) -> None:
    compare = _tool().compare
    manifest = {"files": ["report.html"], "events": 10, "wall_seconds": 1.0, "events_per_second": 10.0,
                "code_version": "0.1+gaaa", "finished_at": "t1", "fingerprint": "f1",
                "timing": {"read_seconds": 0.5}}
    a = _output(tmp_path / "a" / "out", manifest, "2026-12-07 16:10")
    later = manifest | {"wall_seconds": 2.0, "events_per_second": 5.0, "code_version": "0.1+gbbb",
                        "finished_at": "t2", "fingerprint": "f2", "timing": {"read_seconds": 0.7}}
    b = _output(tmp_path / "b" / "out", later, "2026-12-07 16:11")
    assert compare(a, b) == []

    c = _output(tmp_path / "c" / "out", later | {"events": 11}, "2026-12-07 16:11")
    assert compare(a, c) == ["_SUCCESS.json: manifests differ in ['events']"]
    d = _output(tmp_path / "d" / "out", manifest, "2026-12-07 16:10", data=b"\x00\x02")
    assert compare(a, d) == ["predictions.parquet: bytes differ (2 against 2 bytes)"]
    (d / "extra.png").write_bytes(b"")
    assert "only in d: extra.png" in compare(a, d)
