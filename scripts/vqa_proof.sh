#!/usr/bin/env bash
# The VQA proof on the embedded default (README, "VQA on the embedded default"), once per seed
# (default: 0), in output/vqa_proof/seed_<S>/:
#   1. python -m xraygpt.embedded prepare: images, summaries, the pretrained tiny encoder; the folder is
#      output/learnability/seed_<S>/dataset/embedded, shared with scripts/learnability.sh (same seed, same
#      files; whichever runs first prepares it, the other reuses it);
#   2. vqa-prepare: questions in English and Chinese (SLAKE layout) and a tiny LLM for them, in vqa/;
#   3. train_configs/tiny_vqa_stage{0,1,2}.yaml;
#   4. vqa-stage0-check: stage 0's LLM asked the held-out closed questions of vqa/mimic with the slot words
#      instead of the image (text only; output/vqa/eval/stage0_reading.json): its own reading;
#      vqa-evaluate: the held-out questions (both sources' test images) with each question's own image,
#      with images shuffled across the questions, and with a blank image;
# then one line per seed and language (vqa-summary): closed accuracy image / shuffled / blank, open
# exact match, and the bars (closed >= 0.90 with the image and <= 0.60 shuffled, each language).
# Environment: PREPARED=DIR uses DIR as the prepared folder of every seed (prepare is not run);
# VQA_TRAIN_OPTIONS="KEY=VALUE ..." are --options for every stage; VQA_EVAL_ARGS are more
# vqa-evaluate arguments; VQA_PROOF_ROOT replaces output/vqa_proof.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"
py="${PYTHON:-$repo/.venv/bin/python}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
source "$repo/scripts/proof_seed.sh"
seeds=("$@")
[ ${#seeds[@]} -gt 0 ] || seeds=(0)
root="${VQA_PROOF_ROOT:-output/vqa_proof}"
read -r -a train_options <<< "${VQA_TRAIN_OPTIONS:-}"
read -r -a eval_args <<< "${VQA_EVAL_ARGS:-}"
files=()
for s in "${seeds[@]}"; do
  dir="$root/seed_$s"
  proof_seed_dir "$dir" "$s"
  start=$(date +%s)
  (
    cd "$dir"
    proof_prepare "$s"
    "$py" -m xraygpt.embedded vqa-prepare --out vqa --prepared dataset/embedded --seed "$s"
    rm -rf output/vqa   # this pipeline's own previous results
    for stage in 0 1 2; do
      "$py" "$repo/train.py" --cfg-path "train_configs/tiny_vqa_stage$stage.yaml" --options "run.seed=$s" \
          ${train_options[@]+"${train_options[@]}"}
    done
    "$py" -m xraygpt.embedded vqa-stage0-check --stage0 output/vqa/stage0 --release vqa/mimic \
        --out output/vqa/eval/stage0_reading.json --seed "$s"
    "$py" -m xraygpt.embedded vqa-evaluate --run output/vqa/stage2 --release vqa/mimic --release vqa/openi \
        --out output/vqa/eval --seed "$s" ${eval_args[@]+"${eval_args[@]}"}
  )
  echo "seed $s: the VQA proof took $(( $(date +%s) - start )) s (prepare included)" >&2
  files+=("$dir/output/vqa/eval/vqa_metrics.json")
done
"$py" -m xraygpt.embedded vqa-summary "${files[@]}"
