#!/usr/bin/env bash
# NVIDIA perf_analyzer (PyPI perf-analyzer), runnable on Debian 12.
#
# Its wheels (2.58-2.60) are built for glibc 2.38 and GCC 13's libstdc++
# (__isoc23_strtol & co., GLIBCXX_3.4.32); Debian 12 has glibc 2.36. The older
# wheel on PyPI (0.1.0) is an empty placeholder. So the binary runs under Debian 13's
# dynamic loader, libc6 and libstdc++6, unpacked beside it (nothing is installed on
# the system), with the system's libssl and libz; `bin/perf_analyzer` is that
# command line.
#
# Usage: scripts/perf_analyzer/install.sh [DEST]  (default ~/.cache/modelyard/perf-analyzer-VERSION)
set -euo pipefail

VERSION=2.60.0
DEST=${1:-${MODELYARD_PERF_ANALYZER:-$HOME/.cache/modelyard/perf-analyzer-$VERSION}}
PIP=${PIP:-$(dirname "$0")/../../.venv/bin/pip}

if [ -x "$DEST/bin/perf_analyzer" ]; then
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The wheel: pip picks it only for a glibc 2.38 platform, so say so.
"$PIP" download --quiet --no-deps --only-binary=:all: --platform manylinux_2_38_x86_64 \
  --python-version 3.11 --dest "$work" "perf-analyzer==$VERSION"
python3 -m zipfile -e "$work"/perf_analyzer-"$VERSION"-*.whl "$work/wheel"

# Debian 13's C and C++ runtimes, fetched with a private apt state (no root needed).
apt_dir="$work/apt"
mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" \
  >"$apt_dir/sources.list"
apt_opts=(-q -o "Dir::Etc::sourcelist=$apt_dir/sources.list" -o Dir::Etc::sourceparts=/dev/null
  -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache" -o Debug::NoLocking=1
  -o APT::Sandbox::User="$(id -un)")
apt-get "${apt_opts[@]}" update >/dev/null
(cd "$work" && apt-get "${apt_opts[@]}" download libc6 libstdc++6 libgcc-s1 >/dev/null)

mkdir -p "$work/out/bin" "$work/out/lib"
for deb in "$work"/*.deb; do
  dpkg-deb -x "$deb" "$work/root"
done
cp -a "$work/root/usr/lib/x86_64-linux-gnu/." "$work/out/lib/"
install -m 0755 "$work/wheel/perf_analyzer/bin/perf_analyzer" "$work/out/lib/perf_analyzer.bin"
cat >"$work/out/bin/perf_analyzer" <<'WRAP'
#!/bin/sh
# perf_analyzer under Debian 13's loader and C/C++ runtimes (see install.sh).
lib=$(cd "$(dirname "$0")/../lib" && pwd)
exec "$lib/ld-linux-x86-64.so.2" --library-path "$lib:/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu" \
  "$lib/perf_analyzer.bin" "$@"
WRAP
chmod 0755 "$work/out/bin/perf_analyzer"
mkdir -p "$(dirname "$DEST")"
rm -rf "$DEST"
mv "$work/out" "$DEST"
"$DEST/bin/perf_analyzer" --version 2>&1 | head -1 || true
echo "perf_analyzer $VERSION in $DEST"
