#!/usr/bin/env bash
# Builds the instance image with buildah, with no registry: Debian 12 from a debootstrap root
# filesystem, PostgreSQL 15 and pgBackRest from Debian's mirror, and this clone's package as a
# wheel in its own virtualenv. Prints the image's size, then its reference as the last line.
#
#   bash container/build.sh            # as root on Debian 12; installs buildah & co if missing
#   podman run IMAGE --status-port 8001                     # arguments reach `instance-manager run`
#   podman run --entrypoint instance-manager IMAGE plugin pgbackrest   # the pgBackRest sidecar
#
# Three stages, each cached and reused while its inputs are unchanged, so a rebuild with
# nothing changed only hashes the sources:
#   1. the debootstrap root filesystem, as a tar under $CACHE (minutes, once);
#   2. the base image: packages, the postgres account (uid/gid 26, as CloudNativePG's images);
#   3. the image: the package's wheel and its dependencies in /opt/instance-manager/venv.
# Python wheels of the dependencies are made on this machine with pip and kept under $CACHE;
# the image's own pip install is offline (--no-index). Delete $CACHE/rootfs-bookworm.tar to
# start again from a new debootstrap (and so take Debian's latest updates).
set -euo pipefail
cd "$(dirname "$0")/.."
SRC="$PWD"
CACHE="${IM_BUILD_CACHE:-/var/cache/instance-manager}"
ROOTFS_TAR="$CACHE/rootfs-bookworm.tar"
WHEELS="$CACHE/wheels"
NAME="${IMAGE_NAME:-localhost/instance-manager}"
BASE_NAME="$NAME-base"
PACKAGES="postgresql-15 pgbackrest python3 python3-venv ca-certificates"
export BUILDAH_ISOLATION=chroot STORAGE_DRIVER=vfs
BUILDAH=(buildah --storage-driver vfs)
PODMAN=(podman --storage-driver vfs)
exec 3>&1 1>&2 # progress on stderr; stdout gets the reference only

say() { printf 'build.sh: %s\n' "$*"; }

ensure_tools() {
    [ "$(id -u)" -eq 0 ] || { say "run me as root"; exit 2; }
    local missing=() pkg
    for pkg in buildah podman runc debootstrap python3-venv; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" ||
            missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        say "installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${missing[@]}" >/dev/null
    fi
}

mirror() {
    # The first URIs of the machine's deb822 sources (the main archive), else Debian's.
    local uri=""
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
        uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
    fi
    echo "${uri:-http://deb.debian.org/debian}"
}

rootfs() {
    [ -f "$ROOTFS_TAR" ] && return
    local dir
    dir=$(mktemp -d /var/tmp/im-rootfs.XXXXXX)
    TEMPS+=("$dir" "$ROOTFS_TAR.tmp")
    say "debootstrap --variant=minbase bookworm from $(mirror)"
    debootstrap --variant=minbase bookworm "$dir" "$(mirror)" >/dev/null
    rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
    mkdir -p "$CACHE"
    tar -C "$dir" --numeric-owner -cf "$ROOTFS_TAR.tmp" .
    rm -f "$ROOTFS_TAR.sha256"
    mv "$ROOTFS_TAR.tmp" "$ROOTFS_TAR"
    rm -rf "$dir"
}

# Run inside the base image's root filesystem (buildah run): the account, the packages, and
# everything a running instance does not need removed in the same layer.
base_script() {
    cat <<'EOF'
set -eu
export DEBIAN_FRONTEND=noninteractive
# uid/gid 26 as CloudNativePG's images (postgresUID/postgresGID); Debian's gid 26 is "tape".
groupdel tape
groupadd --system --gid 26 postgres
useradd --system --uid 26 --gid 26 --home-dir /var/lib/postgresql --no-create-home \
    --shell /bin/sh postgres
apt-get update -qq
apt-get install -y -qq --no-install-recommends @PACKAGES@ >/tmp/apt.log ||
    { tail -n 40 /tmp/apt.log; exit 1; }
apt-get clean
rm -f /tmp/apt.log
# Dependencies nothing in the running image uses, about 100 MB: LLVM is PostgreSQL's JIT
# (without llvmjit.so PostgreSQL runs without JIT; jit = on has no effect), Perl runs only
# Debian's cluster wrappers (pg_ctlcluster...; the daemon calls PostgreSQL's own programs),
# locales builds locales (the daemon's initdb uses C; C.UTF-8 is in libc6). dpkg keeps
# them as broken dependencies: this image is not upgraded with apt, it is rebuilt.
dpkg --purge --force-depends libllvm14 libz3-4 perl perl-modules-5.36 libperl5.36 \
    locales libc-l10n >/dev/null 2>&1
rm -rf /usr/lib/postgresql/15/lib/llvmjit* /usr/lib/postgresql/15/lib/bitcode
find /usr/share/doc -mindepth 1 -not -name copyright -not -type d -delete
find /usr/share/doc -mindepth 1 -type d -empty -delete
rm -rf /usr/share/man/* /usr/share/info/* /usr/share/locale/* /usr/share/lintian \
    /usr/share/postgresql/15/man /var/lib/apt/lists/* /var/cache/apt/*.bin \
    /var/cache/debconf/*-old /var/log/apt /var/log/dpkg.log /var/log/alternatives.log
install -d -o 26 -g 26 -m 0750 /var/lib/postgresql /var/lib/postgresql/data
install -d -o 26 -g 26 -m 0700 /controller /plugins /var/lib/pgbackrest
EOF
}

# Keeps docs, man pages and translations of the packages out (dpkg's own filter). PostgreSQL's
# man pages stay until its packages are configured: update-alternatives needs them.
DPKG_FILTER='path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*'

CONTAINERS=() TEMPS=()
cleanup() {
    local ctr
    for ctr in "${CONTAINERS[@]}"; do "${BUILDAH[@]}" rm "$ctr" >/dev/null 2>&1 || true; done
    [ ${#TEMPS[@]} -eq 0 ] || rm -rf "${TEMPS[@]}"
}
trap cleanup EXIT

base_image() {
    local key ctr mnt
    key=$( (cat "$ROOTFS_TAR.sha256" 2>/dev/null || sha256sum "$ROOTFS_TAR" | tee "$ROOTFS_TAR.sha256") |
        cat - <(base_script) <(echo "$DPKG_FILTER $PACKAGES") | sha256sum | cut -c1-12)
    BASE="$BASE_NAME:$key"
    "${PODMAN[@]}" image exists "$BASE" && return
    say "base image $BASE: packages from Debian's mirror"
    ctr=$("${BUILDAH[@]}" from --quiet scratch)
    CONTAINERS+=("$ctr")
    mnt=$("${BUILDAH[@]}" mount "$ctr")
    tar -C "$mnt" --numeric-owner -xf "$ROOTFS_TAR"
    rm -f "$mnt/etc/apt/sources.list"
    cp /etc/apt/sources.list.d/debian.sources "$mnt/etc/apt/sources.list.d/" 2>/dev/null ||
        echo "deb $(mirror) bookworm main" >"$mnt/etc/apt/sources.list"
    printf '%s\n' "$DPKG_FILTER" >"$mnt/etc/dpkg/dpkg.cfg.d/instance-manager-slim"
    printf 'APT::Install-Recommends "false";\nAcquire::Languages "none";\nAPT::Sandbox::User "root";\n' \
        >"$mnt/etc/apt/apt.conf.d/instance-manager-slim"
    # Debian's postgresql-common would create and start a "main" cluster: the daemon owns it.
    mkdir -p "$mnt/etc/postgresql-common"
    echo "create_main_cluster = false" >"$mnt/etc/postgresql-common/createcluster.conf"
    printf '#!/bin/sh\nexit 101\n' >"$mnt/usr/sbin/policy-rc.d" # no service starts
    chmod 0755 "$mnt/usr/sbin/policy-rc.d"
    "${BUILDAH[@]}" run "$ctr" -- sh -c "$(base_script | sed "s/@PACKAGES@/$PACKAGES/")"
    "${BUILDAH[@]}" umount "$ctr" >/dev/null
    "${BUILDAH[@]}" commit --quiet --rm "$ctr" "$BASE" >/dev/null
}

source_tar() {
    # The package as this work tree has it (committed or not), byte-stable for hashing.
    tar -C "$SRC" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
        --exclude=__pycache__ --exclude='*.pyc' -cf - pyproject.toml README.md instance_manager
}

build_venv() {
    # pip and setuptools for `pip wheel` on this machine, outside the work tree.
    local venv="$CACHE/build-venv"
    if [ ! -x "$venv/bin/pip" ]; then
        python3 -m venv "$venv"
        "$venv/bin/pip" install -q --disable-pip-version-check "setuptools>=68" wheel \
            >"$venv.log" 2>&1 || { cat "$venv.log"; rm -rf "$venv"; exit 1; }
        rm -f "$venv.log"
    fi
    echo "$venv"
}

wheels() {
    # The package's wheel and every dependency's, into $1; dependencies from $WHEELS when
    # all are there, else fetched once by pip (its configured index) and kept there.
    local out=$1 src pip
    src=$(mktemp -d /var/tmp/im-src.XXXXXX)
    TEMPS+=("$src" "$src.log")
    source_tar | tar -C "$src" -xf -
    pip="$(build_venv)/bin/pip"
    mkdir -p "$WHEELS"
    local args=(wheel -q --disable-pip-version-check --no-build-isolation --find-links "$WHEELS")
    if ! "$pip" "${args[@]}" --no-index -w "$out" "$src" 2>/dev/null; then
        say "fetching the dependencies' wheels with pip"
        "$pip" "${args[@]}" -w "$WHEELS" "$src" >"$src.log" 2>&1 || { cat "$src.log"; exit 1; }
        rm -f "$src.log"
        rm -f "$WHEELS"/instance_manager-*.whl
        "$pip" "${args[@]}" --no-index -w "$out" "$src" >/dev/null
    fi
    rm -rf "$src"
}

app_script() {
    cat <<'EOF'
set -eu
python3 -m venv /opt/instance-manager/venv
/opt/instance-manager/venv/bin/pip install -q --no-index --no-cache-dir \
    --disable-pip-version-check --find-links /tmp/wheels instance-manager
/opt/instance-manager/venv/bin/pip uninstall -q -y pip setuptools
rm -f /opt/instance-manager/venv/bin/activate* /opt/instance-manager/venv/bin/pip*
# Byte-compiled now: the image's filesystem is not the postgres account's to write.
/opt/instance-manager/venv/bin/python -m compileall -q -j 0 /opt/instance-manager/venv
chmod -R go-w /opt/instance-manager
EOF
}

app_image() {
    local key ctr out
    key=$( (echo "$BASE" && source_tar && app_script && declare -f configure) |
        sha256sum | cut -c1-12)
    IMAGE="$NAME:$key"
    "${PODMAN[@]}" image exists "$IMAGE" && return
    say "image $IMAGE: the package and its dependencies as wheels"
    out=$(mktemp -d /var/tmp/im-wheels.XXXXXX)
    TEMPS+=("$out")
    wheels "$out"
    chmod -R a+rX "$out"
    ctr=$("${BUILDAH[@]}" from --quiet --pull-never "$BASE")
    CONTAINERS+=("$ctr")
    "${BUILDAH[@]}" run -v "$out:/tmp/wheels:ro" "$ctr" -- sh -c "$(app_script)"
    rm -rf "$out"
    configure "$ctr"
    "${BUILDAH[@]}" commit --quiet --rm "$ctr" "$IMAGE" >/dev/null
}

configure() {
    # CloudNativePG's layout and the daemon as the entrypoint: arguments after the image
    # name are `instance-manager run`'s. PostgreSQL's socket for the sidecar's pgbackrest is
    # the daemon's SCRATCH/run on the shared /controller volume.
    local bin=/opt/instance-manager/venv/bin
    "${BUILDAH[@]}" config \
        --user 26:26 --workingdir /var/lib/postgresql \
        --env PATH="$bin:/usr/lib/postgresql/15/bin:/usr/local/bin:/usr/bin:/bin" \
        --env PGDATA=/var/lib/postgresql/data/pgdata \
        --env PLUGIN_SOCKET_DIR=/plugins \
        --env PGBACKREST_PG1_SOCKET_PATH=/controller/run \
        --env LANG=C.UTF-8 --env PYTHONDONTWRITEBYTECODE=1 \
        --entrypoint "[\"$bin/instance-manager\", \"run\"]" --cmd '[]' \
        --port 5432 --port 8000 --port 9187 --stop-signal SIGTERM \
        --label org.opencontainers.image.title=instance-manager \
        --label org.opencontainers.image.description="PostgreSQL 15 with the instance manager as PID 1" \
        "$1"
}

prune() {
    # Earlier builds of either image, unless a container still uses them.
    local ref
    for ref in $("${PODMAN[@]}" images --format '{{.Repository}}:{{.Tag}}' |
        grep -E "^($NAME|$BASE_NAME):" || true); do
        [ "$ref" = "$IMAGE" ] || [ "$ref" = "$BASE" ] || [ "$ref" = "$NAME:latest" ] ||
            "${PODMAN[@]}" rmi "$ref" >/dev/null 2>&1 || true
    done
}

ensure_tools
mkdir -p "$CACHE"
exec 9>"$CACHE/build.lock" # one build at a time on this machine (shared caches and tags)
flock 9
rootfs
base_image
app_image
"${PODMAN[@]}" tag "$IMAGE" "$NAME:latest"
prune
size=$("${PODMAN[@]}" image inspect --format '{{.Size}}' "$IMAGE")
say "image size $((size / 1000000)) MB (${size} bytes)"
echo "$IMAGE" >&3
