#!/usr/bin/env bash
# Builds the container images (`make images`) on a machine that reaches Debian's archive
# and PyPI but no container registry:
#
#   1. base images from Debian's packages: a debootstrap root filesystem imported with
#      `docker import` (modelyard-local/debian:bookworm), and Debian's python3.11 on it
#      (images/base/Dockerfile -> modelyard-local/python:3.11-bookworm); both saved to
#      $CACHE/images/ and loaded from there next time;
#   2. a wheelhouse of the exact versions of the project's virtualenv (`make install`),
#      made once per set of versions (cached in $CACHE/wheels/) and served to the builds
#      on loopback;
#   3. images/{serving,operator,examples}/Dockerfile with those as build arguments
#      (BASE_IMAGE, DEBIAN_IMAGE, WHEELS_URL): the same Dockerfiles build from
#      python:3.11-slim-bookworm elsewhere.
#
# Space: the untagged images of earlier builds and the containers of failed steps are
# removed before and after building (each stage is tagged modelyard-local/*:cache, so its
# layers stay the next build's cache); fewer than MODELYARD_IMAGES_NEED_GB (12) free under
# Docker's data root stops the build with that said, not a full disk halfway through.
#
# A Docker daemon of its own is started when none answers on $DOCKER_HOST (and stopped
# at exit): data in /var/lib/modelyard-docker, no bridge, no firewall rules.
#
# Usage: scripts/images/build.sh [serving|operator|examples|base ...]   (as root)
# Env:   REGISTRY (ghcr.io/modelyard), VERSION (0.1.0), MODELYARD_CACHE (~/.cache/modelyard),
#        MODELYARD_WHEELS_PORT (47391: the wheelhouse's loopback port)
set -euo pipefail

cd "$(dirname "$0")/../.."
REPO=$PWD
REGISTRY=${REGISTRY:-ghcr.io/modelyard}
VERSION=${VERSION:-0.1.0}
CACHE=${MODELYARD_CACHE:-$HOME/.cache/modelyard}
SUITE=bookworm
DEBIAN_IMAGE=modelyard-local/debian:$SUITE
PYTHON_IMAGE=modelyard-local/python:3.11-$SUITE
BASE_TARBALL=$CACHE/images/base-$SUITE.tar
DOCKER_RUN=/run/modelyard-docker
export DOCKER_HOST=${DOCKER_HOST:-unix://$DOCKER_RUN/docker.sock}
WHEELS_PORT=${MODELYARD_WHEELS_PORT:-47391}
# The classic builder: `--network host` for apt and the wheelhouse, no buildx needed.
export DOCKER_BUILDKIT=0
TARGETS=("$@")
[[ ${#TARGETS[@]} -gt 0 ]] || TARGETS=(serving operator examples)

START=$SECONDS
say() { printf '[images %4ds] %s\n' "$((SECONDS - START))" "$*"; }
die() { say "error: $*" >&2; exit 1; }
[[ $EUID -eq 0 ]] || die "run as root: it starts dockerd and runs debootstrap"

CLEANUP=()
cleanup() {
  local i
  for ((i = ${#CLEANUP[@]} - 1; i >= 0; i--)); do eval "${CLEANUP[i]}" || true; done
}
trap cleanup EXIT

missing=()
for pair in dockerd:docker.io debootstrap:debootstrap; do
  command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
done
if [[ ${#missing[@]} -gt 0 ]]; then
  say "apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian's client: the engine it ships speaks its API version.
DOCKER=/usr/bin/docker
[[ -x $DOCKER ]] || DOCKER=$(command -v docker)

# -- the daemon ---------------------------------------------------------------------------
if ! "$DOCKER" version >/dev/null 2>&1; then
  [[ $DOCKER_HOST == "unix://$DOCKER_RUN/docker.sock" ]] || die "no Docker daemon answers on $DOCKER_HOST"
  mkdir -p "$DOCKER_RUN"
  say "starting dockerd (log $DOCKER_RUN/dockerd-images.log)"
  # Under nice: image builds must not take the machine from other work. No bridge, no
  # iptables, no forwarding: builds use the host's network (--network host) and change
  # no rule or sysctl.
  nice -n 19 dockerd \
    --host "$DOCKER_HOST" \
    --exec-root "$DOCKER_RUN/exec" \
    --pidfile "$DOCKER_RUN/docker.pid" \
    --data-root /var/lib/modelyard-docker \
    --bridge=none --iptables=false --ip-masq=false --ip-forward=false \
    --oom-score-adjust=0 \
    >"$DOCKER_RUN/dockerd-images.log" 2>&1 &
  DOCKERD_PID=$!
  CLEANUP+=("say 'stopping dockerd'; kill $DOCKERD_PID; wait $DOCKERD_PID")
  for _ in $(seq 300); do
    "$DOCKER" version >/dev/null 2>&1 && break
    kill -0 "$DOCKERD_PID" 2>/dev/null || { tail -n 30 "$DOCKER_RUN/dockerd-images.log" >&2; die "dockerd exited"; }
    sleep 0.1
  done
  "$DOCKER" version >/dev/null 2>&1 || die "dockerd did not answer within 30 s"
fi

build() {
  local tag=$1 dockerfile=$2 context=$3
  shift 3
  local began=$SECONDS
  local log
  log=$(mktemp /tmp/modelyard-docker-build.XXXXXX)
  CLEANUP+=("rm -f '$log'")
  say "docker build -f $dockerfile -t $tag"
  "$DOCKER" build --network host --pull=false -f "$dockerfile" -t "$tag" "$@" "$context" >"$log" 2>&1 ||
    { tail -n 40 "$log" >&2; die "docker build of $tag failed"; }
  say "built $tag in $((SECONDS - began)) s: $(size "$tag")"
}
size() { "$DOCKER" image inspect -f '{{.Size}}' "$1" | awk '{printf "%.0f MB", $1 / 1e6}'; }

# -- 1. base images -----------------------------------------------------------------------
base_images() {
  if "$DOCKER" image inspect "$DEBIAN_IMAGE" "$PYTHON_IMAGE" >/dev/null 2>&1; then
    return
  fi
  if [[ -s $BASE_TARBALL ]]; then
    say "docker load < $BASE_TARBALL"
    "$DOCKER" load -q -i "$BASE_TARBALL" >/dev/null
    return
  fi
  local root mirror
  root=$(mktemp -d /var/tmp/modelyard-rootfs.XXXXXX)
  CLEANUP+=("rm -rf '$root'")
  # The machine's own mirror, so that a CI mirror configured there serves this too.
  mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  mirror=${mirror:-http://deb.debian.org/debian}
  say "debootstrap --variant=minbase $SUITE from $mirror"
  nice -n 19 debootstrap --variant=minbase "$SUITE" "$root" "$mirror" >"$root.log" 2>&1 ||
    { tail -n 30 "$root.log" >&2; die "debootstrap failed"; }
  rm -f "$root.log"
  # What debian:bookworm-slim leaves out: package lists, caches, documentation.
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/usr/share/doc/* \
    "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/var/log/*.log
  printf 'path-exclude /usr/share/doc/*\npath-exclude /usr/share/man/*\npath-exclude /usr/share/info/*\n' \
    >"$root/etc/dpkg/dpkg.cfg.d/docker-slim"
  printf 'APT::Install-Recommends "false";\nAcquire::Languages "none";\n' >"$root/etc/apt/apt.conf.d/docker-slim"
  say "docker import -> $DEBIAN_IMAGE"
  tar -C "$root" --numeric-owner -c . |
    "$DOCKER" import -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      -c 'CMD ["bash"]' - "$DEBIAN_IMAGE" >/dev/null
  build "$PYTHON_IMAGE" images/base/Dockerfile images/base --build-arg "DEBIAN_IMAGE=$DEBIAN_IMAGE"
  mkdir -p "$(dirname "$BASE_TARBALL")"
  "$DOCKER" save -o "$BASE_TARBALL.tmp" "$DEBIAN_IMAGE" "$PYTHON_IMAGE"
  mv "$BASE_TARBALL.tmp" "$BASE_TARBALL"
  say "cached the base images in $BASE_TARBALL ($(du -h "$BASE_TARBALL" | cut -f1))"
}

# -- 2. the wheelhouse --------------------------------------------------------------------
WHEELS_URL=""
wheelhouse() {
  local key dir venv pip
  venv=$REPO/.venv
  pip=$venv/bin/pip
  [[ -x $pip ]] || die "no $pip: run make install first"
  # Exactly the versions of the project's virtualenv, which `make install` resolved from
  # pyproject.toml and the tests run with: no second resolution (with the machine's
  # local indexes beside PyPI, one can backtrack for many minutes), the same libraries
  # in the images as under test. The images' Python is 3.11 on bookworm's glibc, as the
  # host's: the same wheels fit.
  local frozen
  frozen=$("$pip" freeze --all --exclude-editable 2>/dev/null | grep -v -e '^modelyard' -e ' @ ')
  key=$(printf '%s\n' "$frozen" | sha256sum | cut -c1-16)
  dir=$CACHE/wheels/$key
  if [[ ! -f $dir/.complete ]]; then
    say "pip wheel -> $dir (once per set of versions)"
    rm -rf "$dir" && mkdir -p "$dir"
    printf '%s\n' "$frozen" >"$dir/requirements.txt"
    nice -n 19 "$pip" wheel --quiet --no-deps --wheel-dir "$dir" -r "$dir/requirements.txt" 2>&1 |
      grep -v '^WARNING: Location' >&2 || true
    ls "$dir"/torch-2.13.0*.whl >/dev/null 2>&1 || die "the wheelhouse has no torch 2.13.0 wheel"
    [[ $(find "$dir" -name '*.whl' | wc -l) -ge $(grep -c . "$dir/requirements.txt") ]] ||
      die "pip wheel left packages out of $dir"
    touch "$dir/.complete"
    # One wheelhouse is kept: an older set of versions will not be asked for again.
    find "$CACHE/wheels" -mindepth 1 -maxdepth 1 -type d ! -name "$key" -exec rm -rf {} +
  fi
  # WHEELS_URL is a build argument, so part of the cache key of every layer after it: on
  # a port of its own each run, the serving and operator images would be rebuilt from
  # scratch every time. One fixed port, another only when that one is taken.
  local port=$WHEELS_PORT
  if ! python3 -c "import socket; socket.socket().bind(('127.0.0.1', $port))" 2>/dev/null; then
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    say "port $WHEELS_PORT is taken: the wheelhouse on $port (the images' layers are rebuilt)"
  fi
  python3 -m http.server --bind 127.0.0.1 --directory "$dir" "$port" >/dev/null 2>&1 &
  local pid=$!
  CLEANUP+=("kill $pid")
  # Ours answering, not another server that took the port meanwhile.
  local served=""
  for _ in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || die "the wheelhouse server on port $port exited"
    served=$(python3 -c "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:$port/requirements.txt').read().decode(), end='')" 2>/dev/null) && break
    sleep 0.1
  done
  [[ $served == "$(cat "$dir/requirements.txt")" ]] || die "no wheelhouse answers on port $port"
  WHEELS_URL=http://127.0.0.1:$port/
  say "wheelhouse: $(find "$dir" -name '*.whl' | wc -l) wheels served at $WHEELS_URL"
}

# The serving image runs models only: no compiler or build tool, no CUDA library.
no_build_tools() {
  local found
  found=$("$DOCKER" run --rm --network none --entrypoint sh "$1" -c \
    'for b in gcc cc c++ g++ clang make ld as; do command -v "$b"; done
     pip list 2>/dev/null | grep -i -E "^(nvidia|cuda)"; true')
  [[ -z $found ]] || die "$1 carries build tools or CUDA libraries: $(echo "$found" | tr '\n' ' ')"
  say "$1: no compiler, build tool or CUDA library"
}

# -- space ---------------------------------------------------------------------------------
# Every build of a changed tree leaves the previous images and their build stages
# untagged (tens of GB after a day of builds) and a failed RUN step leaves its container:
# those go, the images in use and the tagged build stages (kept for their cache) stay.
reclaim() {
  "$DOCKER" container prune -f >/dev/null
  local freed
  freed=$("$DOCKER" image prune -f | awk '/Total reclaimed space/ {print $4}')
  [[ -z $freed || $freed == 0B ]] || say "removed untagged images of earlier builds: $freed"
}
DATA_ROOT=$("$DOCKER" info -f '{{.DockerRootDir}}')
NEED_GB=${MODELYARD_IMAGES_NEED_GB:-12}
check_space() {
  local free_gb
  free_gb=$(df -BG --output=avail "$DATA_ROOT" | tail -n 1 | tr -dc 0-9)
  [[ $free_gb -ge $NEED_GB ]] ||
    die "$free_gb GB free under $DATA_ROOT; the serving image needs about $NEED_GB GB to build. Free space there (docker image rm of old images) or set MODELYARD_IMAGES_NEED_GB"
}
# The stages of a multi-stage image are untagged: a tag keeps each (the next build's
# cache) from the prune above. Their layers are all cached by then: a second or two.
tag_stages() {
  local name=$1 dockerfile=$2 stage
  shift 2
  for stage in $(awk 'toupper($1) == "FROM" && toupper($3) == "AS" {print $4}' "$dockerfile"); do
    "$DOCKER" build --network host --pull=false -q --target "$stage" -f "$dockerfile" \
      -t "modelyard-local/$name-$stage:cache" "$@" . >/dev/null
  done
}

reclaim
check_space
base_images
ARGS=(--build-arg "BASE_IMAGE=$PYTHON_IMAGE" --build-arg "DEBIAN_IMAGE=$DEBIAN_IMAGE")
for target in "${TARGETS[@]}"; do
  case $target in
    base) ;;
    serving | operator)
      [[ -n $WHEELS_URL ]] || wheelhouse
      name=modelyard
      [[ $target == operator ]] && name=modelyard-operator
      build "$REGISTRY/$name:$VERSION" "images/$target/Dockerfile" . "${ARGS[@]}" \
        --build-arg "WHEELS_URL=$WHEELS_URL"
      tag_stages "$name" "images/$target/Dockerfile" "${ARGS[@]}" --build-arg "WHEELS_URL=$WHEELS_URL"
      [[ $target == serving ]] && no_build_tools "$REGISTRY/$name:$VERSION"
      ;;
    examples)
      build "$REGISTRY/modelyard-examples:$VERSION" images/examples/Dockerfile . "${ARGS[@]}"
      tag_stages modelyard-examples images/examples/Dockerfile "${ARGS[@]}"
      ;;
    *) die "unknown image '$target' (serving, operator, examples, base)" ;;
  esac
done
reclaim
say "done: $("$DOCKER" images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E "^($REGISTRY|modelyard-local)/" | tr '\n' ';')"
