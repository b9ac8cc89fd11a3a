#!/usr/bin/env bash
# The device check, in one go (at most ~8 minutes on one GPU): run it on a machine with CUDA,
# from the repository root. Results: JSON under $OUT (or benchmarks/out/), copied into
# benchmarks/README.md with the date.
#   1. bf16 AMP and fp16 + GradScaler training steps at the stage2 settings: step time, data
#      wait, images/s, CUDA memory statistics, per-trial budgets (gpu_check.py amp)
#   2. a smoke search packing 4 trials on one GPU with gpu: 0.25 (gpu_check.py packing)
#   3. the input pipeline against the model on this device (bench_loader.py)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/out}"
mkdir -p "$OUT"
export PIP_DISABLE_PIP_VERSION_CHECK=1
python -c "import refdet, ray, optuna" 2>/dev/null || python -m pip install --quiet -e ".[test]" || exit 2
nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv | tee "$OUT/nvidia_smi.txt"
status=0
timeout 200 python benchmarks/gpu_check.py amp --steps 12 --out "$OUT/gpu_check_amp.json" || status=1
timeout 200 python benchmarks/gpu_check.py packing --timeout 180 --out "$OUT/gpu_check_packing.json" || status=1
timeout 120 python benchmarks/bench_loader.py --settings stage2 --workers 3 --batches 4 --out "$OUT/bench_loader.json" || status=1
nvidia-smi --query-gpu=memory.used --format=csv | tee -a "$OUT/nvidia_smi.txt"
exit $status
