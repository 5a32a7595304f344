#!/usr/bin/env bash
# The test command: installs system packages, then runs every test against the real
# models and recordings in $HEARKEN_SHARED (default ../shared).
set -euo pipefail
cd "$(dirname "$0")/.."
# PulseAudio with a null sink stands in for a microphone in the capture tests;
# mosquitto is the broker of the MQTT tests; PyTorch (Debian's CPU build) runs the
# small seeded fine-tuning of `hearken train --method net`; Chromium loads the web
# page in the HTTP tests and promtool (prometheus) checks /metrics.
tools/system-deps.sh pulseaudio pulseaudio-utils libasound2-plugins mosquitto mosquitto-clients openssl \
  python3-torch python3-onnx python3-numpy chromium prometheus
export HEARKEN_SHARED="${HEARKEN_SHARED:-$(cd .. && pwd)/shared}"
if [ ! -d "$HEARKEN_SHARED/models" ]; then
  echo "error: $HEARKEN_SHARED/models not found; set HEARKEN_SHARED to the shared assets folder" >&2
  exit 1
fi
# Home Assistant core in a venv: the MQTT test checks discovery configs against its schemas.
tools/ha-venv.sh >/dev/null
cargo test --locked 2>&1
# The .deb: packages the binary `cargo test` just built, installs it, checks it,
# removes it. (--no-build: a plain `cargo build` resolves features without the
# dev-dependencies and rebuilds tract and hearken, 2-3 minutes for the same code.)
tools/test-deb.sh --no-build
