#!/usr/bin/env bash
# One-step setup on Debian / Raspberry Pi OS: installs build dependencies, builds
# hearken, installs the models, then starts listening on the default microphone
# (events printed as JSON lines). Pass --no-run to only set up.
set -euo pipefail
cd "$(dirname "$0")"
tools/system-deps.sh
echo "building hearken (release; the first build takes several minutes)…"
cargo build --release --locked
tools/install-models.sh
bin="$PWD/target/release/hearken"
echo "hearken is ready: $bin"
if [ "${1:-}" = "--no-run" ]; then
  exit 0
fi
echo "listening on the default microphone (Ctrl-C to stop)…"
if ! "$bin" run --print-events; then
  echo
  echo "No usable microphone here. Listen to a recording instead, e.g.:"
  echo "  $bin run --print-events --source file:$(cd .. && pwd)/shared/audio/gunshots.wav"
  echo "or pipe audio in:  arecord -f S16_LE -r 48000 -c 2 | $bin run --print-events --source stdin:48000:2"
fi
