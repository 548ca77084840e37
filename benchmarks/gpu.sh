#!/usr/bin/env bash
# Protocol D on a machine with an NVIDIA GPU: the same figures with the model on the GPU and on
# the CPU, in one go (needs ../shared/data beside the checkout and the project's .venv; torch
# must be a CUDA build there: pip install torch==2.13.0 from the PyPI index, not the CPU wheel).
#   benchmarks/gpu.sh [ROWS]        (default 1000000)
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${1:-1000000}
PY=${PYTHON:-.venv/bin/python}
OUT=benchmarks/results
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'torch sees no CUDA GPU here')"
"$PY" -c "import torch; print('GPU:', torch.cuda.get_device_name(0))"
for device in gpu cpu; do
  "$PY" -m benchmarks.throughput --engine core --rows "$ROWS" --device "$device" --bf16 \
    --json "$OUT/throughput_core_${ROWS}_${device}.json"
done
# Spark with the model on the GPU: a standalone cluster on 127.0.0.1 whose worker offers the GPU
# (benchmarks/gpu_discovery.sh; each task asks for 1/cores of it), against Spark local[*] on the CPU
"$PY" -m benchmarks.throughput --engine spark --rows "$ROWS" --device gpu --spark-gpu-cluster \
  --json "$OUT/throughput_spark_${ROWS}_gpu.json"
"$PY" -m benchmarks.throughput --engine spark --rows "$ROWS" --device cpu \
  --json "$OUT/throughput_spark_${ROWS}_cpu.json"
