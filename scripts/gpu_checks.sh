#!/usr/bin/env bash
# Every GPU check and timing of the descriptor engine, in a few minutes on one GPU machine:
#   scripts/gpu_checks.sh            (from the repository root, after `make setup`)
# 1. the tests marked `gpu` (CUDA extraction with AMP + channels-last, faiss on GPU, sharded GPU
#    index, nccl torchrun extraction); 2. extraction throughput (pipeline vs forward only) on CUDA;
# 3. search: wrapper overhead and the 1M x 256 float16 block search (faiss on GPU when visible).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
echo "== devices"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || echo "nvidia-smi not found"
$PY -c "import torch, faiss; print('torch cuda', torch.cuda.is_available(), torch.cuda.device_count(), '| faiss gpus', faiss.get_num_gpus())"
echo "== pytest -m gpu"
timeout 300 $PY -m pytest -q -p no:xdist -m gpu tests/test_models.py tests/test_extract.py tests/test_search_engine.py -rs
echo "== extraction throughput (CUDA)"
timeout 240 $PY benchmarks/bench_extract.py --n 256 --batch-size 64 --workers 4
echo "== search"
timeout 240 $PY benchmarks/bench_search.py --nq 10000
