#!/usr/bin/env bash
# train.py under torchrun on one node or many: every node runs this same command, e.g.
#   bash scripts/launch.sh --cfg-path train_configs/stage1.yaml                      (one node, all its GPUs)
#   NNODES=2 RDZV_ENDPOINT=node0:29500 bash scripts/launch.sh --cfg-path ...         (on each of 2 nodes)
# Environment: NNODES (default 1), NPROC_PER_NODE (default: the node's GPU count, at least 1),
# RDZV_ENDPOINT (host:port of a node every node can reach; default 127.0.0.1:29500), RDZV_ID (a
# name shared by the nodes of one job; default xraygpt), PYTHON (default .venv/bin/python).
# The nodes meet through torchrun's c10d rendezvous; ranks are assigned there.
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-.venv/bin/python}"
nproc="${NPROC_PER_NODE:-$("$py" -c 'import torch; print(max(torch.cuda.device_count(), 1))')}"
exec "$py" -m torch.distributed.run --nnodes "${NNODES:-1}" --nproc-per-node "$nproc" \
  --rdzv-backend c10d --rdzv-endpoint "${RDZV_ENDPOINT:-127.0.0.1:29500}" --rdzv-id "${RDZV_ID:-xraygpt}" \
  train.py "$@"
