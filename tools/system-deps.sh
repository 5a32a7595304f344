#!/usr/bin/env bash
# Installs the Debian packages hearken needs to build, plus any named as arguments
# (Debian 12 / Raspberry Pi OS bookworm and later). Only installs what is missing;
# uses sudo when not root.
set -euo pipefail
pkgs=(build-essential pkg-config curl ca-certificates libasound2-dev "$@")
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null; then
  echo "error: cargo (Rust) is not installed; install it with rustup (https://rustup.rs) or 'apt-get install cargo'" >&2
  exit 1
fi
