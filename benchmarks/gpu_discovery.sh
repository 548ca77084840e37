#!/usr/bin/env bash
# Spark's GPU discovery script (spark.worker.resource.gpu.discoveryScript and
# spark.executor.resource.gpu.discoveryScript): the GPUs of this machine as Spark's resource JSON,
# {"name": "gpu", "addresses": ["0", ...]}, from nvidia-smi. LAKEFILL_GPU_ADDRESSES (comma-
# separated) replaces nvidia-smi's answer: the tests use it to check Spark's GPU scheduling on a
# machine without a GPU.
set -euo pipefail
if [ -n "${LAKEFILL_GPU_ADDRESSES:-}" ]; then
  ADDRS="$LAKEFILL_GPU_ADDRESSES"
else
  ADDRS=$(nvidia-smi --query-gpu=index --format=csv,noheader | tr -d ' ' | paste -sd, -)
fi
echo "{\"name\": \"gpu\", \"addresses\": [\"${ADDRS//,/\",\"}\"]}"
