#!/usr/bin/env bash
# The study proof on the embedded default (README, "Studies on the embedded default"), once per seed
# (default: 0), in output/study_proof/seed_<S>/:
#   1. python -m xraygpt.embedded prepare: the pretrained tiny encoder (and the single-image data); the
#      folder is output/learnability/seed_<S>/dataset/embedded, shared with scripts/learnability.sh (same
#      seed, same files; whichever runs first prepares it, the other reuses it);
#   2. study-prepare: the study world (frontal + lateral + a prior with known changes; studies.jsonl) and a
#      tiny LLM for it, in study/;
#   3. train_configs/tiny_study_stage{0,1,2}.yaml;
#   4. study-evaluate: the held-out "OpenI" studies with both views and the prior, with the frontal view only,
#      without the prior, and with another subject's prior;
#   5. study-stage0-check: stage 0's LLM asked the same studies with the slot words in the image slots (text
#      only): what the LLM itself reads, apart from the images and the projection;
# then one line per seed (study-summary): lateral-only F1 with both views / the frontal only, change accuracy
# with the prior / without / shuffled, the stage-0 reading, and the bars.
# Environment: PREPARED=DIR uses DIR as the prepared folder of every seed (prepare is not run);
# STUDY_PREPARE_ARGS are more study-prepare arguments; STUDY_TRAIN_OPTIONS="KEY=VALUE ..." are --options for
# every stage; STUDY_EVAL_ARGS are more study-evaluate (and study-stage0-check) arguments; STUDY_PROOF_ROOT replaces output/study_proof.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"
py="${PYTHON:-$repo/.venv/bin/python}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
source "$repo/scripts/proof_seed.sh"
seeds=("$@")
[ ${#seeds[@]} -gt 0 ] || seeds=(0)
root="${STUDY_PROOF_ROOT:-output/study_proof}"
read -r -a prepare_args <<< "${STUDY_PREPARE_ARGS:-}"
read -r -a train_options <<< "${STUDY_TRAIN_OPTIONS:-}"
read -r -a eval_args <<< "${STUDY_EVAL_ARGS:-}"
files=()
for s in "${seeds[@]}"; do
  dir="$root/seed_$s"
  proof_seed_dir "$dir" "$s"
  start=$(date +%s)
  (
    cd "$dir"
    proof_prepare "$s"
    "$py" -m xraygpt.embedded study-prepare --out study --prepared dataset/embedded --seed "$s" \
        ${prepare_args[@]+"${prepare_args[@]}"}
    rm -rf output/study   # this pipeline's own previous results
    for stage in 0 1 2; do
      "$py" "$repo/train.py" --cfg-path "train_configs/tiny_study_stage$stage.yaml" --options "run.seed=$s" \
          ${train_options[@]+"${train_options[@]}"}
    done
    "$py" -m xraygpt.embedded study-evaluate --run output/study/stage2 --split study/openi/test \
        --out output/study/eval --seed "$s" ${eval_args[@]+"${eval_args[@]}"}
    "$py" -m xraygpt.embedded study-stage0-check --stage0 output/study/stage0 --split study/openi/test \
        --out output/study/eval/stage0_reading.json --seed "$s" ${eval_args[@]+"${eval_args[@]}"}
  )
  echo "seed $s: the study proof took $(( $(date +%s) - start )) s (prepare included)" >&2
  files+=("$dir/output/study/eval/study_metrics.json")
done
"$py" -m xraygpt.embedded study-summary "${files[@]}"
