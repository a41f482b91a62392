#!/usr/bin/env bash
# The embedded pipeline in the current directory (which must hold prompts/ and train_configs/):
# prepare -> stage 0 -> stage 1 -> stage 2 -> held-out evaluation -> report, all seeded by $1.
# Called by quickstart.sh (seed 0, in the repo) and learnability.sh (one folder per seed).
set -euo pipefail
seed="${1:-0}"
py="${PYTHON:-python}"
root="$(cd "$(dirname "$0")/.." && pwd)"
$py -m xraygpt.embedded prepare --out dataset/embedded --seed "$seed"
rm -rf output/embedded   # this pipeline's own previous results
for stage in 0 1 2; do
  $py "$root/train.py" --cfg-path "train_configs/tiny_stage$stage.yaml" --options "run.seed=$seed"
done
$py -m xraygpt.embedded evaluate --run output/embedded/stage2 --split dataset/embedded/data/openi/test \
    --out output/embedded/eval --seed "$seed"
$py -m xraygpt.embedded report output/embedded/stage1 output/embedded/stage2 --eval output/embedded/eval
