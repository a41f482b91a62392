#!/usr/bin/env bash
# The GPU figures the README's Performance section asks for: train_step.py and generate.py at
# the 7b size, on a machine whose python already has a CUDA build of torch and the project's
# dependencies (nothing is installed here). Each benchmark's table goes to the terminal and to
# OUT_DIR/<name>.txt (default output/benchmarks/).
#   bash scripts/gpu_benchmarks.sh [OUT_DIR]
# Settings (environment): PYTHON (python3), TRAIN_BATCH (16), GEN_IMAGES (128), GEN_BATCH (64),
# GEN_SINGLE (8, images timed one at a time), GEN_TOKENS (160, as evaluation's max_new_tokens),
# CAPTIONS (a filter_cap.json whose summaries train the tokenizer; default ../shared's OpenI sample,
# synthetic summaries when neither is there).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-output/benchmarks}"
py="${PYTHON:-python3}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 PYTHONUNBUFFERED=1
mkdir -p "$out"
captions=()
if [ -n "${CAPTIONS:-}" ]; then captions=(--captions "$CAPTIONS"); fi
"$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'error: no CUDA GPU visible to ' + sys.executable)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt" || true
"$py" benchmarks/train_step.py --size 7b --batch-size "${TRAIN_BATCH:-16}" "${captions[@]}" 2>&1 | tee "$out/train_step_7b.txt"
"$py" benchmarks/generate.py --size 7b --images "${GEN_IMAGES:-128}" --batch-size "${GEN_BATCH:-64}" \
  --single-images "${GEN_SINGLE:-8}" --max-new-tokens "${GEN_TOKENS:-160}" --rounds 2 "${captions[@]}" 2>&1 | tee "$out/generate_7b.txt"
