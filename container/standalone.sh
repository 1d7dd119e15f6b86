#!/usr/bin/env bash
# One command to a supervised PostgreSQL on this machine: installs what is missing, then
# runs the instance manager in the foreground.
# Data: ./data, or, as root, /var/lib/instance-manager/<clone>-<hash> (the daemon runs
# PostgreSQL as the postgres account, which may not reach a clone in a private home).
# Probes: http://localhost:8000/readyz  Stop: Ctrl-C (staged shutdown).
set -euo pipefail
cd "$(dirname "$0")/.."
bash container/setup.sh
if [ "$(id -u)" -eq 0 ]; then
  DEFAULT_DATA=/var/lib/instance-manager/$(basename "$PWD")-$(printf '%s' "$PWD" | sha256sum | cut -c1-12)
else
  DEFAULT_DATA=$PWD/data
fi
DATA="${DATA:-$DEFAULT_DATA}"
mkdir -p "$DATA"
echo "instance-manager: data in $DATA" >&2
exec .venv/bin/instance-manager run \
  --pg-data "$DATA/pgdata" \
  --scratch-dir "$DATA/controller" \
  --pod-name "${POD_NAME:-standalone-1}" \
  --cluster-name "${CLUSTER_NAME:-standalone}" \
  --plugin-socket-dir "$DATA/plugins" \
  "$@"
