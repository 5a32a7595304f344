#!/usr/bin/env bash
# Builds the arm64 (Raspberry Pi OS 64-bit) .deb by cross-compiling, shows what is
# in it, and classifies a recording with the packaged binary and models under qemu
# user-mode emulation. Slow (a release cross-build plus emulated inference), so not
# part of CI; it documents and reproduces the arm64 check.
#
#   tools/test-arm64.sh [--no-build] [--profile dev|release] [--deb FILE]
#
# Options other than --deb go to tools/build-deb.sh. Needs root or sudo for apt.
set -euo pipefail
cd "$(dirname "$0")/.."

deb=""
build_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --deb) deb="$(realpath "${2:?}")"; shift 2 ;;
    *) build_args+=("$1"); shift ;;
  esac
done
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export HEARKEN_SHARED="${HEARKEN_SHARED:-$(cd .. && pwd)/shared}"
audio="$HEARKEN_SHARED/audio/gunshots.wav"
[ -f "$audio" ] || { echo "test-arm64.sh: $audio not found; set HEARKEN_SHARED" >&2; exit 1; }

if [ -z "$deb" ]; then
  start=$SECONDS
  deb="$(tools/build-deb.sh --target aarch64-unknown-linux-gnu "${build_args[@]}" | tail -n1)"
  echo "test-arm64: built $deb in $((SECONDS - start)) s"
fi
echo "test-arm64: $deb ($(du -h "$deb" | cut -f1))"
dpkg-deb -I "$deb"
dpkg-deb -c "$deb"
[ "$(dpkg-deb -f "$deb" Architecture)" = arm64 ] || { echo "test-arm64: not an arm64 package" >&2; exit 1; }

# qemu-aarch64 runs the binary; the arm64 loader and libc come from the cross
# toolchain (/usr/aarch64-linux-gnu), libasound from libasound2:arm64 (multiarch).
for p in qemu-user libc6-arm64-cross libasound2:arm64; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$p" >/dev/null
  fi
done

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
dpkg-deb -x "$deb" "$tmp"
file "$tmp/usr/bin/hearken" 2>/dev/null || true

qemu=(qemu-aarch64 -L /usr/aarch64-linux-gnu -E LD_LIBRARY_PATH=/usr/lib/aarch64-linux-gnu)
export HEARKEN_MODELS="$tmp/usr/share/hearken/models"
echo "test-arm64: qemu-aarch64 hearken classify $audio (models from the package)"
start=$(date +%s.%N)
out="$(cd / && "${qemu[@]}" "$tmp/usr/bin/hearken" classify "$audio")"
end=$(date +%s.%N)
echo "$out"
echo "test-arm64: classify under qemu took $(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }') s"
echo "$out" | grep -m1 '^  clip' | grep -Eq '^  clip +Gunshot' ||
  { echo "test-arm64: FAIL: Gunshot is not the top label" >&2; exit 1; }
echo "$out" | grep -q "efficientat-mn04" ||
  { echo "test-arm64: FAIL: expected the default model efficientat-mn04" >&2; exit 1; }
out="$("${qemu[@]}" "$tmp/usr/bin/hearken" check-config "$tmp/etc/hearken/hearken.toml")"
echo "$out"
echo "test-arm64: ok"
