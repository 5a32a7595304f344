#!/usr/bin/env bash
# Builds hearken and its Debian package (.deb) with cargo-deb; prints the .deb path
# as the last line of output.
#
#   tools/build-deb.sh [--target aarch64-unknown-linux-gnu] [--profile release|dev]
#                      [--no-build] [--fast] [--output DIR] [--detectors DIR]
#
#   --target T     cross-compile for T (aarch64-unknown-linux-gnu: Raspberry Pi OS
#                  64-bit); installs the cross toolchain and arm64 ALSA headers when
#                  missing (apt, needs root or sudo)
#   --profile P    Cargo profile of the packaged binary (default release; dev reuses
#                  the binary `cargo test` builds, dependencies are optimised anyway)
#   --no-build     package the binary already in target/ instead of running cargo build
#   --fast         lighter compression (a bigger .deb, built much faster; for tests)
#   --output DIR   where to write the .deb (default target/debian;
#                  hearken_<version>-1_amd64.deb or ..._arm64.deb)
#   --detectors D  the trained detectors to ship (default models/efficientat-mn04/
#                  detectors, which ./setup.sh or `hearken train` writes once, on the
#                  build machine: a Pi owner never trains). The package refuses to
#                  build without them.
#
# The package takes the models from models/*/ (tools/install-models.sh copies them
# there from $HEARKEN_SHARED/models, default ../shared) and its metadata from
# [package.metadata.deb] in Cargo.toml. Debian 12 (bookworm) or later build host.
set -euo pipefail
cd "$(dirname "$0")/.."

target=""
detectors="models/efficientat-mn04/detectors"
profile="release"
build=1
deb_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --target) target="${2:?--target needs a value}"; shift 2 ;;
    --target=*) target="${1#*=}"; shift ;;
    --profile) profile="${2:?--profile needs a value}"; shift 2 ;;
    --profile=*) profile="${1#*=}"; shift ;;
    --no-build) build=0; shift ;;
    --fast) deb_args+=(--fast); shift ;;
    --output|-o) deb_args+=(--output "${2:?--output needs a value}"); shift 2 ;;
    --detectors) detectors="${2:?--detectors needs a value}"; shift 2 ;;
    -h|--help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build-deb.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$profile" in
  release|dev) ;;
  *) echo "build-deb.sh: --profile must be release or dev" >&2; exit 2 ;;
esac

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
# apt packages (name[:arch]) that are not installed yet.
missing_pkgs() {
  local p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"
  done
}
apt_install() {
  local missing
  missing="$(missing_pkgs "$@")"
  [ -z "$missing" ] && return 0
  echo "installing: $(echo "$missing" | tr '\n' ' ')" >&2
  $sudo apt-get update -qq
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $missing >/dev/null
}

# Build dependencies of the native binary (ALSA headers, pkg-config, C compiler).
tools/system-deps.sh >&2

# cargo-deb itself (about 2 minutes to build once; it lands in ~/.cargo/bin).
if ! cargo deb --version >/dev/null 2>&1; then
  echo "installing cargo-deb (cargo install cargo-deb --locked)…" >&2
  cargo install cargo-deb --locked --version '^3.8' >&2
fi

# Cross-compilation toolchain for arm64.
case "$target" in
  "" ) ;;
  aarch64-unknown-linux-gnu)
    rustup target list --installed | grep -qx "$target" || rustup target add "$target" >&2
    if ! dpkg --print-foreign-architectures | grep -qx arm64; then
      $sudo dpkg --add-architecture arm64
      $sudo apt-get update -qq
    fi
    apt_install gcc-aarch64-linux-gnu libc6-dev-arm64-cross binutils-aarch64-linux-gnu \
      libasound2-dev:arm64 >&2
    export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
    export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
    export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
    # alsa-sys finds libasound through pkg-config: look only at the arm64 .pc files.
    export PKG_CONFIG_ALLOW_CROSS=1
    export PKG_CONFIG_LIBDIR=/usr/lib/aarch64-linux-gnu/pkgconfig:/usr/share/pkgconfig
    # cargo-deb strips the binary with /usr/bin/aarch64-linux-gnu-strip (binutils-aarch64-linux-gnu).
    ;;
  *)
    echo "build-deb.sh: target $target is not set up here (only aarch64-unknown-linux-gnu);" \
         "set its linker and pkg-config yourself and run cargo deb --target $target" >&2
    exit 2 ;;
esac

# The models are package contents; copy them in (sha256-checked) if needed.
tools/install-models.sh >&2

# So are the trained detectors (and a fine-tuned network, if they read one): staged
# where [package.metadata.deb] picks them up.
if ! ls "$detectors"/*.json >/dev/null 2>&1; then
  echo "build-deb.sh: no trained detectors in $detectors; train them once with ./setup.sh" \
       "or 'hearken train --out $detectors' (about 50 minutes; --method heads: 15), or pass --detectors DIR" >&2
  exit 1
fi
stage=target/deb-stage/detectors
rm -rf "$stage"
mkdir -p "$stage"
cp "$detectors"/*.json "$stage"/
for f in "$detectors"/*.onnx; do [ -f "$f" ] && cp "$f" "$stage"/; done
# The validation events `hearken adapt` (the weekly timer) measures recall on.
if [ -f "$detectors/validation.hkv" ]; then
  cp "$detectors/validation.hkv" "$stage"/
else
  echo "build-deb.sh: warning: no validation.hkv in $detectors; the installed daemon cannot adapt to its home" >&2
fi
echo "packaging the detectors in $detectors: $(cd "$stage" && echo *)" >&2

target_args=()
[ -n "$target" ] && target_args=(--target "$target")
if [ "$build" = 1 ]; then
  echo "building hearken ($profile${target:+, $target})…" >&2
  start=$SECONDS
  cargo build --locked --profile "$profile" --bin hearken "${target_args[@]}" >&2
  echo "cargo build took $((SECONDS - start)) s" >&2
fi

start=$SECONDS
# cargo-deb reads [package.metadata.deb]; the binary asset path target/release/...
# is mapped to the real profile and target directory. Its last output line is the
# path of the .deb.
deb="$(cargo deb --no-build --profile "$profile" "${target_args[@]}" "${deb_args[@]}" | tail -n1)"
echo "cargo deb took $((SECONDS - start)) s" >&2
[ -f "$deb" ] || { echo "build-deb.sh: cargo deb did not report a .deb ($deb)" >&2; exit 1; }
echo "$deb"
