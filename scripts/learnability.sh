#!/usr/bin/env bash
# The learnability check on several seeds (default 0 1 2): the whole embedded pipeline per seed
# in output/learnability/seed_<S>/, then one summary line per seed (macro F1 with the image,
# with images shuffled across the test split, with a blank image).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh dev
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
repo="$PWD"
seeds=("$@")
[ ${#seeds[@]} -gt 0 ] || seeds=(0 1 2)
for s in "${seeds[@]}"; do
  dir="output/learnability/seed_$s"
  mkdir -p "$dir"
  ln -sfn "$repo/prompts" "$dir/prompts"
  ln -sfn "$repo/train_configs" "$dir/train_configs"
  (cd "$dir" && PYTHON="$repo/.venv/bin/python" bash "$repo/scripts/pipeline.sh" "$s")
done
files=()
for s in "${seeds[@]}"; do files+=("output/learnability/seed_$s/output/embedded/eval/findings_metrics.json"); done
.venv/bin/python -m xraygpt.embedded summary "${files[@]}"
