"""`neutrino-ray bench nova`: the simulator's events per CPU-second and nova predict end to end (issue 27's
throughput goals are measured there, never asserted here: these tests check that the command runs and reports)."""

from __future__ import annotations

from pathlib import Path

import pytest

from neutrino_ray.cli import main
from neutrino_ray.nova import bench


def test_simulator_rate_is_a_median_of_cpu_time_runs() -> None:
    r = bench.bench_simulator(60, 3)
    assert r["events"] == 60 and r["repeats"] == 3 and len(r["events_per_cpu_second"]) == 3
    assert r["median"] == sorted(r["events_per_cpu_second"])[1] and r["median"] > 0
    assert r["goal"] == 1_000 and r["load"].startswith("load average")


@pytest.mark.slow  # starts Ray twice, simulates and scores through the actor pool (78 s at load ~7)
@pytest.mark.integration
def test_bench_nova_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["bench", "nova", "--events", "300", "--sim-events", "50", "--repeats", "1", "--data", str(tmp_path / "d")]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "simulator:" in printed and "events per CPU-second" in printed
    assert "nova predict small: 300 events" in printed and "goal >= 1,000" in printed
    assert main(args) == 0  # the data are reused
    assert f"reusing {tmp_path / 'd'} (300 events)" in capsys.readouterr().out
    assert main(["bench", "nova", "--models", "huge"]) == 2
