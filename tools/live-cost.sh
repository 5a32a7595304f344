#!/usr/bin/env bash
# What `hearken run` costs while it listens: CPU (% of one core, per thread) and
# memory (RSS), over a real recording played in real time.
#
#   tools/live-cost.sh [--seconds N] [--binary PATH] [--wav FILE] [--] [extra hearken run args]
#
# By default hearken listens on stdin to a real recording played like a
# microphone: ../shared/audio/typing.wav (48 kHz stereo; --wav another), looped and paced in
# real time, 10 ms at a time, by a small Python feeder (its CPU is not counted).
# Give --source to measure another source. Extra arguments go to `hearken run`
# (e.g. --config with trained detectors). Prints one JSON object: cpu_percent of
# one core for the whole process over the run (after a 5 s warm-up), per thread,
# rss_mb (at the end) and hwm_mb (peak).
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=60
bin=target/release/hearken
wav="${HEARKEN_SHARED:-../shared}/audio/typing.wav"
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds=$2; shift 2 ;;
    --binary) bin=$2; shift 2 ;;
    --wav) wav=$2; shift 2 ;;
    --) shift; break ;;
    *) break ;;
  esac
done
args=("$@")
have_source=false
for a in "${args[@]}"; do [ "$a" = --source ] && have_source=true; done
state=$(mktemp -d)
feeder=""
cleanup() {
  [ -n "$feeder" ] && kill "$feeder" 2>/dev/null
  rm -rf "$state"
}
trap cleanup EXIT
if $have_source; then
  "$bin" run --http "" --state-dir "$state" "${args[@]}" 2>"$state/log" &
  pid=$!
else
  mkfifo "$state/mic"
  python3 "$(dirname "$0")/play-paced.py" "$wav" "$state/mic" &
  feeder=$!
  format=$(python3 -c "import wave,sys; w=wave.open(sys.argv[1]); print(f'{w.getframerate()}:{w.getnchannels()}')" "$wav")
  "$bin" run --http "" --state-dir "$state" --source "stdin:$format" "${args[@]}" \
    <"$state/mic" 2>"$state/log" &
  pid=$!
fi
# A snapshot of the running process, or its log and failure if it has ended.
snap() {
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "live-cost: hearken ended (a recording shorter than ${seconds} s + 5 s?):" >&2
    cat "$state/log" >&2
    exit 1
  fi
  python3 "$(dirname "$0")/proc-threads.py" "$pid"
}
sleep 5
a=$(snap)
t0=$(date +%s.%N)
sleep "$seconds"
b=$(snap)
t1=$(date +%s.%N)
kill -TERM "$pid"
wait "$pid" || true
python3 "$(dirname "$0")/proc-threads.py" --diff "$a" "$b" "$(echo "$t1 - $t0" | bc -l)"
