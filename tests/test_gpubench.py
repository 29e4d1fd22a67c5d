"""`neutrino-ray bench gpu`, the inference half: the whole command end to end on CPU actors (the same code as on a
GPU, other resources), its report's fields, and the utilisation sampler, which says 'unavailable' instead of a
number where there is no GPU to sample."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import torch

from neutrino_ray import gpubench
from neutrino_ray.cli import main


@pytest.mark.slow  # 28-40 s: out of the default suite for its budget (CI 954 s at 707324a); the rules it walks
@pytest.mark.integration  # through are unit-tested below, and tests/test_inference_pipelines.py runs both pipelines
def test_inference_half_on_cpu_actors_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    t0 = time.perf_counter()
    assert main(["-q", "bench", "gpu", "--half", "inference", "--device", "cpu", "--out", str(tmp_path),
                 "--icecube-events", "300", "--nova-events", "200", "--icecube-model", "transformer-tiny",
                 "--nova-model", "small"]) == 0
    wall = time.perf_counter() - t0
    printed = capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == [gpubench.INFERENCE_REPORT]  # the lease gone with the run
    r = json.loads((tmp_path / gpubench.INFERENCE_REPORT).read_text())
    assert r["complete"] is True and r["half"] == "inference" and r["device"] == "cpu" and r["gpu"] is None
    assert r["random_weights"] is True
    assert r["precision"] == "fp32" and r["code_version"]
    assert r["utilisation_goal"] == "not applicable (not transformer-base)"
    assert 0 < r["simulate_seconds"] < r["total_seconds"] <= wall
    ic, nova = r["workloads"]["icecube"], r["workloads"]["nova"]
    assert (ic["workload"], ic["model"], ic["events"]) == ("icecube predict --pipeline split", "transformer-tiny", 300)
    assert (nova["workload"], nova["model"], nova["events"]) == ("nova predict", "small", 200)
    for w in (ic, nova):
        assert w["manifest"]["gpus_per_actor"] == 0.0 and w["manifest"]["cpus_per_actor"] == 1.0
        assert 0 < w["score_seconds"] <= w["wall_seconds"]
        assert w["events_per_second"] == pytest.approx(w["events"] / w["score_seconds"], rel=1e-3)
        assert w["end_to_end_events_per_second"] == pytest.approx(w["events"] / w["wall_seconds"], rel=1e-3)
        for u in (w["utilisation"], w["utilisation_whole_run"]):  # no GPU: no number, and why
            assert u["mean_percent"] is None and u["median_percent"] is None and u["samples"] == 0
            assert u["unavailable"] == "no CUDA device: the work ran on cpu"
        assert w["utilisation_samples"] == []
    # IceCube's window is predict's score stage (its manifest's), inside the command's wall time
    stages = ic["manifest"]["stage_seconds"]
    assert ic["score_seconds"] == pytest.approx(stages["score"], abs=2e-3) and ic["manifest"]["max_pulses"] == 768
    assert nova["score_seconds"] == nova["wall_seconds"]
    assert "utilisation unavailable: no CUDA device" in printed and "random weights" in printed
    assert "icecube predict --pipeline split" in printed and "nova predict" in printed


def test_device_cpu_is_only_for_the_inference_half(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-q", "bench", "gpu", "--device", "cpu", "--out", str(tmp_path)]) == 2
    assert "--device cpu runs only the inference half" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_inference_half_without_cuda_stops_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-q", "bench", "gpu", "--half", "inference", "--out", str(tmp_path / "o")]) == 2
    assert "bench gpu needs a CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_sampler_takes_timed_samples_and_windows_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """The sampler's thread on a (pretend) CUDA device: samples every period, mean and median per window."""
    values = iter([10.0, 30.0, 20.0, 90.0] + [50.0] * 1000)
    monkeypatch.setattr(torch.cuda, "utilization", lambda device=None: next(values))
    monkeypatch.setattr(gpubench, "UTILISATION_PERIOD", 0.01)
    with gpubench.Utilisation(torch.device("cuda", 0)) as u:
        time.sleep(0.3)
    assert u.source == "torch.cuda.utilization" and u.unavailable is None
    assert len(u.samples) >= 5 and all(b[0] > a[0] for a, b in zip(u.samples, u.samples[1:]))
    times = [t for t, _ in u.samples]
    first = u.window(times[0], times[2])  # the probe took 10; the thread 30, 20, 90
    assert first == {"mean_percent": pytest.approx(140 / 3), "median_percent": 30.0, "samples": 3,
                     "period_seconds": 0.01, "source": "torch.cuda.utilization", "unavailable": None}
    empty = u.window(times[-1] + 1, times[-1] + 2)
    assert empty["mean_percent"] is None and empty["unavailable"].startswith("no sample in the window")


def test_sampler_without_a_source_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_nvml(device: object = None) -> float:
        raise ModuleNotFoundError("pynvml does not seem to be installed")

    def no_smi(index: int) -> float:
        raise FileNotFoundError("nvidia-smi")

    monkeypatch.setattr(torch.cuda, "utilization", no_nvml)
    monkeypatch.setattr(gpubench, "_nvidia_smi_utilisation", no_smi)
    with gpubench.Utilisation(torch.device("cuda", 0)) as u:
        time.sleep(0.05)
    w = u.window()
    assert w["mean_percent"] is None and w["samples"] == 0 and w["source"] is None
    assert w["unavailable"] == ("torch.cuda.utilization: ModuleNotFoundError: pynvml does not seem to be installed; "
                                "nvidia-smi: FileNotFoundError: nvidia-smi")


def test_nvidia_smi_fallback_maps_the_visible_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where pynvml is missing the sampler asks nvidia-smi, for the GPU this process sees (its index mapped through
    CUDA_VISIBLE_DEVICES: nvidia-smi counts every GPU of the machine)."""
    calls: list[list[str]] = []

    def run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, stdout="73\n", stderr="")

    def no_nvml(device: object = None) -> float:
        raise ModuleNotFoundError("pynvml does not seem to be installed")

    monkeypatch.setattr(torch.cuda, "utilization", no_nvml)
    monkeypatch.setattr(subprocess, "run", run)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    monkeypatch.setattr(gpubench, "UTILISATION_PERIOD", 0.01)
    with gpubench.Utilisation(torch.device("cuda", 1)) as u:
        time.sleep(0.1)
    assert u.source == "nvidia-smi" and u.window()["mean_percent"] == 73.0 and u.window()["samples"] >= 2
    assert calls[0] == ["nvidia-smi", "--id=5", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]
