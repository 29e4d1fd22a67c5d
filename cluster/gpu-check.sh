#!/usr/bin/env bash
# The GPU check on one lent GPU, from the repository root with the project installed (CUDA torch):
# `neutrino-ray bench gpu`'s training half, then its inference half, each bounded by `timeout` so the
# whole check ends within 9 minutes whatever happens (4.5 minutes each: the inference half's goal is
# under 4 minutes on one GPU, simulation included, plus Python and Ray start-up).
# Usage: cluster/gpu-check.sh [OUT]   (reports: OUT/bench-gpu-training.json, OUT/bench-gpu-inference.json)
set -u
out=${1:-bench-gpu}
cli=${NEUTRINO_RAY:-neutrino-ray}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout --kill-after=10 270 "$cli" bench gpu --half training --out "$out"
training=$?
timeout --kill-after=10 270 "$cli" bench gpu --half inference --out "$out"
inference=$?
echo "gpu-check: training half exit $training, inference half exit $inference (124: timed out) -> $out/"
[ "$training" -eq 0 ] && [ "$inference" -eq 0 ]
