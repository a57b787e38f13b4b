#!/usr/bin/env bash
# The CUDA checks of issue 12 in one go, for a quiet machine with one GPU (CI has none). From the repository root:
#   bash benchmarks/gpu_perf.sh [CAMVID_ROOT]          (default root: data/CamVid)
# 1. the issue's setting (crop 128, batch 2): harness/plain with bf16 + channels_last on both sides, images/s, MFU,
#    the phase split, the sync audit, and the loader workers it needs (0, 4, 8);
# 2. the same with torch.compile (student and teacher) against eager, hooks and loss checked first;
# 3. a paper-sized crop and batch (full CamVid frames, batch 8), where the GPU, not Python, sets the pace.
# Every line it prints goes into the README's Performance table; nothing here is a test.
set -euo pipefail
cd "$(dirname "$0")/.."
root="${1:-data/CamVid}"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader || true
python -m benchmark perf --root "$root" --device cuda --iterations 50 --repeats 5 --num-workers 0 4 8
python -m benchmark perf --root "$root" --device cuda --iterations 50 --repeats 3 --num-workers 8 --compile
python -m benchmark perf --root "$root" --device cuda --iterations 30 --repeats 3 --num-workers 8 --crop 360 480 \
    --batch 8 --subset 367
