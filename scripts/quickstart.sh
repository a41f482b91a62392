#!/usr/bin/env bash
# The main job on the embedded default (no downloads): installs into ./.venv, generates the
# synthetic data + a pretrained tiny MedCLIP-format encoder + a tiny LLaMA under
# dataset/embedded, trains stage 0 (the LLM), stage 1 and stage 2 into output/embedded/, scores
# held-out images (with the image, images shuffled, a blank image), prints the results, then
# writes report metrics with evaluate.py (output/embedded/report_eval/).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh dev
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
PYTHON="$PWD/.venv/bin/python" bash scripts/pipeline.sh 0
# Report metrics (ROUGE, BLEU, CIDEr-D, CheXpert-style clinical efficacy, bootstrap CIs) of the
# stage-2 model on the held-out synthetic split: output/embedded/report_eval/
.venv/bin/python evaluate.py --cfg-path eval_configs/tiny_eval.yaml --options evaluation.progress=false
