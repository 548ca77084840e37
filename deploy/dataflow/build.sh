#!/usr/bin/env bash
# Build and push the lakefill image, then write the Flex Template spec to Cloud Storage.
#   PROJECT=my-project REGION=europe-west1 REPO=lakefill BUCKET=gs://my-bucket deploy/dataflow/build.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${PROJECT:?set PROJECT}" "${REGION:?set REGION}" "${BUCKET:?set BUCKET (gs://...)}"
REPO=${REPO:-lakefill}
TAG=${TAG:-$(git rev-parse --short HEAD)}
IMAGE="${REGION}-docker.pkg.dev/${PROJECT}/${REPO}/lakefill:${TAG}"
docker build -f deploy/dataflow/Dockerfile -t "$IMAGE" .
docker push "$IMAGE"
gcloud dataflow flex-template build "${BUCKET}/templates/lakefill-${TAG}.json" \
  --image "$IMAGE" --sdk-language PYTHON --metadata-file deploy/dataflow/metadata.json --project "$PROJECT"
echo "template: ${BUCKET}/templates/lakefill-${TAG}.json"
echo "image   : ${IMAGE}   (also pass it as sdk_container_image)"
