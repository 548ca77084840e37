#!/usr/bin/env bash
# Pack a relocatable virtual environment with lakefill and its pinned dependencies for
# spark-submit --archives (deploy/spark/submit.py --env lakefill-env.tar.gz).
#   deploy/spark/package.sh [OUT.tar.gz]
# Build it on the same OS and CPU architecture as the cluster's machines (or in its image).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-lakefill-env.tar.gz}
BUILD=$(mktemp -d)
python3 -m venv "$BUILD/env"
"$BUILD/env/bin/pip" install -q -r requirements.lock venv-pack
"$BUILD/env/bin/pip" install -q --no-deps .
"$BUILD/env/bin/venv-pack" -p "$BUILD/env" -o "$OUT" --force
rm -rf "$BUILD"
echo "packed environment: $OUT"
