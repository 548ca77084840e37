#!/usr/bin/env bash
# Launch a lakefill run from the Flex Template.
#   PROJECT=... REGION=... TEMPLATE=gs://.../lakefill-TAG.json IMAGE=... \
#   deploy/dataflow/launch.sh input=gs://b/raw.csv schema=gs://b/schema.yaml model=gs://b/model \
#                             output=gs://b/lake run_id=2026-11-22
# GPU workers: add  GPU=nvidia-tesla-t4  (one GPU per worker, the driver installed by Dataflow);
# the job's device setting (auto) then puts the model on the GPU.
set -euo pipefail
: "${PROJECT:?}" "${REGION:?}" "${TEMPLATE:?}" "${IMAGE:?}"
PARAMS=$(IFS=,; echo "$*")
EXTRA=()
if [ -n "${GPU:-}" ]; then
  EXTRA+=(--additional-experiments=use_runner_v2
          "--parameters=dataflow_service_options=worker_accelerator=type:${GPU};count:1;install-nvidia-driver")
  EXTRA+=(--worker-machine-type="${MACHINE:-n1-standard-8}")
fi
gcloud dataflow flex-template run "lakefill-$(date -u +%Y%m%d-%H%M%S)" \
  --project "$PROJECT" --region "$REGION" --template-file-gcs-location "$TEMPLATE" \
  --parameters "sdk_container_image=${IMAGE},${PARAMS}" "${EXTRA[@]}"
