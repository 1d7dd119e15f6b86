#!/usr/bin/env bash
# One command to a supervised PostgreSQL on this machine: installs what is missing, then
# runs the instance manager in the foreground with its data under ./data.
# Probes: http://localhost:8000/readyz  Stop: Ctrl-C (staged shutdown).
set -euo pipefail
cd "$(dirname "$0")/.."
bash container/setup.sh
DATA="${DATA:-$PWD/data}"
mkdir -p "$DATA"
exec .venv/bin/instance-manager run \
  --pg-data "$DATA/pgdata" \
  --scratch-dir "$DATA/controller" \
  --pod-name "${POD_NAME:-standalone-1}" \
  --cluster-name "${CLUSTER_NAME:-standalone}" \
  --plugin-socket-dir "$DATA/plugins" \
  "$@"
