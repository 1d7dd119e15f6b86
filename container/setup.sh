#!/usr/bin/env bash
# Installs what the instance manager needs on a Debian machine, then the package into
# ./.venv. Usage: container/setup.sh [--dev]   (--dev adds the test and lint tools)
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
PACKAGES=(postgresql-15 postgresql-client-15 python3-venv util-linux procps)
[ "${1:-}" = "--dev" ] && PACKAGES+=(pgbackrest prometheus openssl wrk hyperfine)

missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  # Debian's package would create and start a "main" cluster on 5432: we manage our own.
  $SUDO mkdir -p /etc/postgresql-common
  if [ ! -f /etc/postgresql-common/createcluster.conf ]; then
    echo "create_main_cluster = false" | $SUDO tee /etc/postgresql-common/createcluster.conf >/dev/null
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Debian's own Python: when started as root the daemon becomes the postgres user, which
# must be able to read the interpreter (a pyenv under /root is not readable).
PYTHON=/usr/bin/python3
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check --upgrade pip
if [ "${1:-}" = "--dev" ]; then
  .venv/bin/pip install -q --disable-pip-version-check -e '.[dev]' --config-settings editable_mode=compat
else
  .venv/bin/pip install -q --disable-pip-version-check -e . --config-settings editable_mode=compat
fi
# Byte-compile our package now: the daemon runs as postgres and cannot write __pycache__
# here, and this environment may set PYTHONDONTWRITEBYTECODE, so without this every start
# would compile every module again (~100 ms more before PostgreSQL starts).
.venv/bin/python -m compileall -q instance_manager
