#!/usr/bin/env bash
# Builds kube-apiserver v1.20.2 offline from Debian 12's `kubernetes` source package (the
# tests' real API server; see README "Kubernetes mode") and prints the binary's path.
# The binary is cached outside the work tree and built only when it is missing.
# Needs root (apt-get). About 5 minutes cold on 2 cores.
set -euo pipefail
CACHE="${KUBE_APISERVER_CACHE:-/var/cache/instance-manager/kube-apiserver-1.20.2}"
BIN="$CACHE/kube-apiserver"
if [ -x "$BIN" ]; then echo "$BIN"; exit 0; fi
exec 3>&1 1>&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq golang-go etcd-server golang-github-modern-go-reflect2-dev make rsync >/dev/null
SRC_LIST=/etc/apt/sources.list.d/instance-manager-src.sources
if [ ! -f "$SRC_LIST" ]; then
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
        # The first stanza (the main archive) as deb-src, bookworm only.
        awk 'BEGIN{RS=""; ORS="\n\n"} NR==1' /etc/apt/sources.list.d/debian.sources \
            | sed -e 's/^Types: deb$/Types: deb-src/' -e 's/^Suites: .*/Suites: bookworm/' > "$SRC_LIST"
    else
        echo "deb-src http://deb.debian.org/debian bookworm main" > /etc/apt/sources.list.d/instance-manager-src.list
    fi
    apt-get update -qq
fi
WORK="$(mktemp -d /tmp/kas.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
apt-get source --download-only kubernetes >/dev/null
tar -xzf kubernetes_*.orig.tar.gz
cd "$(find . -maxdepth 1 -mindepth 1 -type d | head -1)"
# The vendored reflect2 v1.0.1 crashes under Go >= 1.18 on the first custom resource.
rm -rf vendor/github.com/modern-go/reflect2
cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 vendor/github.com/modern-go/reflect2
rm -f vendor/github.com/modern-go/reflect2/go.mod vendor/github.com/modern-go/reflect2/*_test.go
# Built with Go >= 1.16 the vendored validators take a zero value for null and refuse "" in
# custom resources (kubernetes#99804): null must mean nil only.
for f in vendor/k8s.io/kube-openapi/pkg/validation/validate/type.go \
         vendor/github.com/go-openapi/validate/type.go; do
    [ -f "$f" ] || continue
    python3 - "$f" <<'PY'
import re, sys
path = sys.argv[1]
text = open(path).read()
old = "if data == nil || reflect.DeepEqual(reflect.Zero(reflect.TypeOf(data)), reflect.ValueOf(data)) {"
n = text.count(old)
new = text.replace(old, "if data == nil {")
if n == 0:
    sys.exit(f"{path}: the null test was not found; patch by hand")
open(path, "w").write(new)
PY
done
GOPROXY=off GOFLAGS=-mod=vendor make WHAT=cmd/kube-apiserver >/dev/null
mkdir -p "$CACHE"
install -m 0755 _output/bin/kube-apiserver "$BIN.tmp"
mv "$BIN.tmp" "$BIN"
echo "$BIN" >&3
