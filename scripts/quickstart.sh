#!/usr/bin/env bash
# The main job on the embedded default (no downloads): installs into ./.venv, generates the
# synthetic data + tiny MedCLIP-format encoder + tiny LLaMA under dataset/embedded, trains
# stage 0 (the LLM), stage 1 and stage 2 into output/embedded/, and prints generated summaries
# beside references.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh dev
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
py=.venv/bin/python
$py -m xraygpt.embedded prepare --out dataset/embedded
rm -rf output/embedded   # this script's own previous results
$py train.py --cfg-path train_configs/tiny_stage0.yaml
$py train.py --cfg-path train_configs/tiny_stage1.yaml
$py train.py --cfg-path train_configs/tiny_stage2.yaml
$py -m xraygpt.embedded report output/embedded/stage1 output/embedded/stage2
