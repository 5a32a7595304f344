#!/usr/bin/env bash
# One-step setup on Debian / Raspberry Pi OS: installs build dependencies, builds
# hearken, installs the models, then starts listening on the default microphone
# (events printed as JSON lines and published over MQTT: to the broker already
# listening on 127.0.0.1:1883 if there is one, else to hearken's embedded broker).
# The first time, it also trains detectors for glass, gunshot, siren, smoke alarm and
# scream from the labelled recordings in $HEARKEN_SHARED (default ../shared), which
# the daemon then uses in place of raw AudioSet scores (docs/detection.md): small
# heads on mn04's embedding, and mn04 fine-tuned end to end (with Debian's
# python3-torch, installed here) for the groups where that wins; --no-train skips
# it. Pass --no-run to only set up.
set -euo pipefail
cd "$(dirname "$0")"
run=1
train=1
for arg in "$@"; do
  case "$arg" in
    --no-run) run=0 ;;
    --train) train=1 ;;
    --no-train) train=0 ;;
    *) echo "usage: $0 [--no-run] [--no-train]" >&2; exit 2 ;;
  esac
done
tools/system-deps.sh
if [ "$train" = 1 ] && [ ! -d models/efficientat-mn04/detectors ]; then
  # The trainer that fine-tunes mn04 (PyTorch on the CPU). Where the distribution
  # has no python3-torch, `hearken train` trains the heads alone and says so.
  tools/system-deps.sh python3-torch python3-onnx python3-numpy ||
    echo "python3-torch could not be installed: training heads only" >&2
fi
echo "building hearken (release; the first build takes several minutes)…"
cargo build --release --locked
tools/install-models.sh
bin="$PWD/target/release/hearken"
shared="${HEARKEN_SHARED:-$(cd .. && pwd)/shared}"
detectors="models/efficientat-mn04/detectors"
if [ "$train" = 1 ] && [ ! -d "$detectors" ]; then
  if [ -f "$shared/eval-dev/labels.csv" ] && [ -f "$shared/train-extra/labels.csv" ]; then
    echo "training detectors from $shared (once; about 50 minutes on a 2-core PC)…"
    rm -rf "$detectors.new"
    if HEARKEN_SHARED="$shared" "$bin" train --model efficientat-mn04 --out "$detectors.new"; then
      mv "$detectors.new" "$detectors"
    else
      echo "training failed; hearken uses raw AudioSet scores (retry with: $bin train)" >&2
    fi
  else
    echo "no labelled recordings in $shared: hearken uses raw AudioSet scores (see docs/detection.md)"
  fi
fi
echo "hearken is ready: $bin"
if [ "$run" = 0 ]; then
  exit 0
fi
# A broker already on this machine (e.g. Debian's mosquitto) gets the events;
# otherwise hearken runs its own on loopback.
if (exec 3<>/dev/tcp/127.0.0.1/1883) 2>/dev/null; then
  mqtt=(--mqtt mqtt://127.0.0.1:1883)
  echo "publishing to the MQTT broker on 127.0.0.1:1883"
else
  mqtt=(--embedded-broker)
fi
echo "listening on the default microphone (Ctrl-C to stop); watch the MQTT side with:"
echo "  mosquitto_sub -h 127.0.0.1 -t 'hearken/#' -v"
if ! "$bin" run --print-events "${mqtt[@]}"; then
  echo
  echo "No usable microphone here. Listen to a recording instead, e.g.:"
  echo "  $bin run --print-events ${mqtt[*]} --source file:$(cd .. && pwd)/shared/audio/gunshots.wav"
  echo "or pipe audio in:  arecord -f S16_LE -r 48000 -c 2 | $bin run --print-events --source stdin:48000:2"
fi
