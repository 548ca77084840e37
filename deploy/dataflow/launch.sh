#!/usr/bin/env bash
# Launch a lakefill run from the Flex Template (the request is checked by launch.py first).
#   PROJECT=... REGION=... TEMPLATE=gs://.../lakefill-TAG.json IMAGE=... \
#   deploy/dataflow/launch.sh input=gs://b/raw.csv schema=gs://b/schema.yaml model=gs://b/model \
#                             output=gs://b/lake run_id=2026-11-22 partition_by=region,segment
# GPU workers: add  GPU=nvidia-tesla-t4  (one GPU per worker, the driver installed by Dataflow);
# the job's device setting (auto) then puts the model on the GPU. DRY_RUN=1 prints the request.
set -euo pipefail
: "${PROJECT:?}" "${REGION:?}" "${TEMPLATE:?}" "${IMAGE:?}"
exec python3 "$(dirname "$0")/launch.py" --project "$PROJECT" --region "$REGION" --template "$TEMPLATE" \
  --image "$IMAGE" ${GPU:+--gpu "$GPU"} ${MACHINE:+--machine-type "$MACHINE"} ${DRY_RUN:+--dry-run} "$@"
