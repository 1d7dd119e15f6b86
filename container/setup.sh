#!/usr/bin/env bash
# Installs what the instance manager needs on a Debian machine, then the package into
# ./.venv. Usage: container/setup.sh [--dev]   (--dev adds the test and lint tools)
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
PACKAGES=(postgresql-15 postgresql-client-15 python3-venv util-linux procps)
# Tests: iproute2 (network namespaces), curl (requests from inside one); build.sh and
# kube-apiserver.sh install what the image and the API server need.
[ "${1:-}" = "--dev" ] && PACKAGES+=(pgbackrest prometheus openssl wrk hyperfine iproute2 curl)

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

# Debian's own Python, and files every account can read: when started as root the daemon
# becomes the postgres user, which must read the interpreter, the virtualenv and the package
# (a pyenv under /root, or a clone in a 0700 home, is not readable by it).
umask 022
PYTHON=/usr/bin/python3
PROJECT=$PWD
EXTRA=""
[ "${1:-}" = "--dev" ] && EXTRA="[dev]"
if [ "$(id -u)" -eq 0 ]; then
  # One virtualenv per clone under /opt, and a real install (not editable): the daemon never
  # reads the clone after dropping root. .venv points at it.
  VENV=/opt/instance-manager/$(basename "$PROJECT")-$(printf '%s' "$PROJECT" | sha256sum | cut -c1-12)
  mkdir -p /opt/instance-manager
  chmod 0755 /opt/instance-manager
  if [ -e .venv ] && [ ! -L .venv ]; then rm -rf .venv; fi
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  ln -sfn "$VENV" .venv
  "$VENV/bin/pip" install -q --disable-pip-version-check --upgrade pip
  "$VENV/bin/pip" install -q --disable-pip-version-check "$PROJECT$EXTRA"
  # The package itself again, even when its version did not change.
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps --force-reinstall "$PROJECT"
else
  # Not root: the daemon keeps this account, which can read the clone; an editable install.
  [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check --upgrade pip
  .venv/bin/pip install -q --disable-pip-version-check -e "$PROJECT$EXTRA" \
    --config-settings editable_mode=compat
  # Byte-compile now: this environment may set PYTHONDONTWRITEBYTECODE, and without .pyc
  # files every start would compile every module again (~100 ms before PostgreSQL starts).
  .venv/bin/python -m compileall -q instance_manager
fi
