#!/usr/bin/env bash
# Builds Kubernetes v1.20.2 from Debian bookworm's `kubernetes` source package: the
# control plane (kube-apiserver, kube-controller-manager) for the operator and Helm
# tests, and a node (kube-scheduler, kubelet, kube-proxy, the pause binary of the
# sandbox image) for the cluster tests (`make test-cluster`).
#
# No registry reachable from CI ships Kubernetes, but Debian ships its full upstream
# source tree (vendor/ included) and Go. The binaries land in
# $MODELYARD_KUBE_CACHE/bin (outside the repository); a rerun with them in place
# takes a second. Only bin/ needs to be kept between CI runs; work/ is scratch and
# is removed after a successful build unless MODELYARD_KUBE_KEEP_WORK is set.
#
# Usage: scripts/kube/build.sh    (as root, or with sudo available for apt-get)
set -euo pipefail

KUBE_VERSION=v1.20.2
CACHE=${MODELYARD_KUBE_CACHE:-$HOME/.cache/modelyard/kube-$KUBE_VERSION}
BIN=$CACHE/bin
WORK=$CACHE/work
GOPATH_DIR=$WORK/gopath
TREE_LINK=$GOPATH_DIR/src/k8s.io/kubernetes
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy)
# Needed to build (golang-go, dpkg-dev, reflect2) and to run the tests (etcd-server, openssl).
# libc6-dev: the static libc the pause binary links.
BUILD_PACKAGES=(golang-go etcd-server dpkg-dev openssl golang-github-modern-go-reflect2-dev gcc libc6-dev)
RUN_PACKAGES=(etcd-server openssl)
SOURCES_FILE=/etc/apt/sources.list.d/modelyard-deb-src.sources

START=$SECONDS
say() { printf '[kube-build %4ds] %s\n' "$((SECONDS - START))" "$*"; }
die() { say "error: $*" >&2; exit 1; }

SUDO=()
if [[ $EUID -ne 0 ]]; then
  command -v sudo >/dev/null || die "apt-get needs root: run as root or install sudo"
  SUDO=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive

binaries_ok() {
  local b
  for b in "${BINARIES[@]}"; do
    [[ -x $BIN/$b ]] && "$BIN/$b" --version >/dev/null 2>&1 || return 1
  done
  [[ -x $BIN/pause ]]
}

missing_packages() {
  local p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || echo "$p"
  done
}

APT_UPDATED=0
apt_update() {
  if [[ $APT_UPDATED -eq 0 ]]; then
    say "apt-get update"
    "${SUDO[@]}" apt-get update -qq
    APT_UPDATED=1
  fi
}

install_packages() {
  local missing
  missing=$(missing_packages "$@")
  [[ -z $missing ]] && return 0
  apt_update
  # shellcheck disable=SC2086  # one package name per word
  say "apt-get install" $missing
  "${SUDO[@]}" apt-get install -y -qq --no-install-recommends $missing >/dev/null
}

if binaries_ok; then
  install_packages "${RUN_PACKAGES[@]}"
  say "cached: $("$BIN/kube-apiserver" --version) in $BIN"
  exit 0
fi

# 1. Debian's source package: deb-src entries mirroring the machine's own deb entries,
#    so a CI mirror or snapshot configured there is used for sources too.
if ! apt-cache showsrc kubernetes 2>/dev/null | grep -q '^Package: kubernetes'; then
  if [[ ! -f $SOURCES_FILE ]]; then
    say "enabling deb-src in $SOURCES_FILE"
    if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
      sed 's/^Types:.*/Types: deb-src/' /etc/apt/sources.list.d/debian.sources |
        "${SUDO[@]}" tee "$SOURCES_FILE" >/dev/null
    else
      "${SUDO[@]}" tee "$SOURCES_FILE" >/dev/null <<'EOF'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    fi
  fi
  apt_update
fi
install_packages "${BUILD_PACKAGES[@]}"

mkdir -p "$WORK" "$BIN"
SRC=$(find "$WORK" -maxdepth 1 -type d -name 'kubernetes-*' | head -n1)
if [[ -z $SRC || ! -f $SRC/.modelyard-extracted ]]; then
  say "apt-get source kubernetes"
  rm -rf "$WORK"/kubernetes-* "$WORK"/kubernetes_*
  # -qq keeps dpkg-source's per-patch lines out of the log.
  (cd "$WORK" && apt-get source -qq kubernetes >/dev/null 2>"$WORK/apt-source.log") ||
    { cat "$WORK/apt-source.log" >&2; die "apt-get source kubernetes failed"; }
  SRC=$(find "$WORK" -maxdepth 1 -type d -name 'kubernetes-*' | head -n1)
  [[ -n $SRC ]] || die "apt-get source produced no kubernetes-* directory"
  touch "$SRC/.modelyard-extracted"
fi
say "source tree: $SRC"

# 2. The vendored reflect2 (1.0.1) faults under Go 1.19's runtime ("fatal error: fault"
#    on the first custom object); Debian's 1.0.2 is API-compatible.
REFLECT2=$SRC/vendor/github.com/modern-go/reflect2
if [[ ! -f $REFLECT2/.modelyard-debian ]]; then
  say "replacing vendored reflect2 with Debian's copy"
  cp "$REFLECT2/LICENSE" "$WORK/reflect2.LICENSE"
  rm -rf "$REFLECT2"
  cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 "$REFLECT2"
  find "$REFLECT2" -name '*_test.go' -delete
  cp "$WORK/reflect2.LICENSE" "$REFLECT2/LICENSE"
  touch "$REFLECT2/.modelyard-debian"
fi

# 3. GOPATH mode: the 1.20 tree resolves its staging repositories through vendor/.
mkdir -p "$(dirname "$TREE_LINK")"
ln -sfn "$SRC" "$TREE_LINK"
export GOPATH=$GOPATH_DIR GO111MODULE=off CGO_ENABLED=0 GOPROXY=off GOFLAGS=
export GOCACHE=$WORK/gocache
cd "$TREE_LINK"
say "$(go version)"

# 4. The OpenAPI definitions the API server links in are generated, not shipped.
OPENAPI=pkg/generated/openapi/zz_generated.openapi.go
if [[ ! -s $OPENAPI ]]; then
  say "building openapi-gen"
  go build -o "$WORK/openapi-gen" ./vendor/k8s.io/kube-openapi/cmd/openapi-gen
  # Every package tagged for OpenAPI, as the upstream Makefile finds them: staging
  # repositories are addressed through their vendor/ path.
  mapfile -t DIRS < <(
    grep -rl --include='*.go' '+k8s:openapi-gen=' pkg cmd plugin staging/src vendor/k8s.io 2>/dev/null |
      xargs -n1 dirname |
      sed 's,^staging/src/,vendor/,' |
      grep -v -e '^vendor/k8s.io/code-generator' -e '^vendor/k8s.io/sample-apiserver' |
      LC_ALL=C sort -u
  )
  INPUTS=$(printf 'k8s.io/kubernetes/%s,' "${DIRS[@]}")
  say "generating $OPENAPI from ${#DIRS[@]} packages"
  "$WORK/openapi-gen" \
    --input-dirs "${INPUTS%,}" \
    --output-base "$GOPATH/src" \
    -p k8s.io/kubernetes/pkg/generated/openapi \
    -O zz_generated.openapi \
    -h vendor/k8s.io/code-generator/hack/boilerplate.go.txt \
    -r "$WORK/openapi-violations.list" 2>"$WORK/openapi-gen.log" ||
    { tail -n 40 "$WORK/openapi-gen.log" >&2; die "openapi-gen failed"; }
  # The same violations upstream accepted means the same packages were generated.
  if ! diff -q "$WORK/openapi-violations.list" api/api-rules/violation_exceptions.list >/dev/null; then
    diff "$WORK/openapi-violations.list" api/api-rules/violation_exceptions.list | head -n 20 >&2
    rm -f "$OPENAPI"
    die "openapi-gen's violation report differs from api/api-rules/violation_exceptions.list"
  fi
fi

# 5. The version is stamped as upstream's release builds do; clients (Helm, kopf)
#    read it from /version.
VERSION_PKGS=(
  k8s.io/kubernetes/vendor/k8s.io/component-base/version
  k8s.io/kubernetes/vendor/k8s.io/client-go/pkg/version
)
MAJOR=${KUBE_VERSION#v}; MAJOR=${MAJOR%%.*}
MINOR=${KUBE_VERSION#v"$MAJOR".}; MINOR=${MINOR%%.*}
LDFLAGS="-s -w"
for pkg in "${VERSION_PKGS[@]}"; do
  LDFLAGS+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=$MAJOR -X $pkg.gitMinor=$MINOR"
  LDFLAGS+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done
for b in "${BINARIES[@]}"; do
  say "go build ./cmd/$b"
  go build -ldflags "$LDFLAGS" -o "$BIN/$b.tmp" "./cmd/$b"
  mv "$BIN/$b.tmp" "$BIN/$b"
done

# The sandbox ("pause") container's binary, as upstream builds it for k8s.gcr.io/pause.
say "gcc build/pause/linux/pause.c"
gcc -Os -Wall -Werror -static -DVERSION=v3.2 -o "$BIN/pause.tmp" build/pause/linux/pause.c
strip "$BIN/pause.tmp"
mv "$BIN/pause.tmp" "$BIN/pause"

binaries_ok || die "built binaries do not run"
# The tree and Go's build cache take ~2 GB; the binaries are all that is reused.
if [[ -z ${MODELYARD_KUBE_KEEP_WORK:-} ]]; then
  cd "$CACHE" && rm -rf "$WORK"
fi
say "built $("$BIN/kube-apiserver" --version) in $BIN"
