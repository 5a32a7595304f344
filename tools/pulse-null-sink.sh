#!/usr/bin/env bash
# A private PulseAudio daemon with a null sink, for capture tests on machines without a
# sound card (CI, containers, headless boxes).
#
#   eval "$(tools/pulse-null-sink.sh start)"        # prints `export VAR=...` lines
#   hearken run --source device:pulse &              # ALSA's `pulse` (and `default`) device
#   paplay --device=hearken_null clip.wav            # ... captures what is played here
#   tools/pulse-null-sink.sh stop                    # uses $HEARKEN_PULSE_DIR
#
# `start` installs pulseaudio, pulseaudio-utils and libasound2-plugins with apt-get when
# they are missing (sudo when not root), starts a user-mode daemon (root is fine) whose
# state lives in a fresh temporary directory, loads module-null-sink as `hearken_null`,
# makes it the default sink and its monitor `hearken_null.monitor` the default source,
# and prints on stdout the environment a client needs:
#
#   PULSE_SERVER       unix socket of the daemon (libpulse and the ALSA pulse plugin)
#   PULSE_COOKIE       its auth cookie (the socket also accepts anonymous clients)
#   HEARKEN_PULSE_DIR  the temporary directory, for `stop`
#
# `stop [DIR]` kills that daemon and removes the directory. `kill DIR` kills it and
# keeps the directory; `start DIR` starts it again there, on the same socket (a
# device that vanishes and comes back). Exit status 2 from `start`
# means the packages could not be installed (so callers may skip); 1 is any other failure.
set -euo pipefail

pkgs=(pulseaudio pulseaudio-utils libasound2-plugins)

log() { echo "pulse-null-sink: $*" >&2; }

install_pkgs() {
  local missing=() p
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if ! command -v apt-get >/dev/null; then
    log "missing ${missing[*]} and apt-get is not available"
    return 2
  fi
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null || ! sudo -n true 2>/dev/null; then
      log "missing ${missing[*]}; need root or password-less sudo to install them"
      return 2
    fi
    sudo="sudo -n"
  fi
  log "installing: ${missing[*]}"
  if ! { $sudo apt-get install -y -qq "${missing[@]}" >&2 ||
         { $sudo apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >&2; }; }; then
    log "apt-get could not install ${missing[*]}"
    return 2
  fi
}

kill_daemon() {
  local dir=$1 pid=""
  [ -f "$dir/runtime/pid" ] && pid=$(tr -dc 0-9 <"$dir/runtime/pid")
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
  fi
}

stop_daemon() {
  local dir=${1:-${HEARKEN_PULSE_DIR:-}}
  if [ -z "$dir" ] || [ ! -d "$dir" ]; then
    log "stop: no daemon directory (give it or set HEARKEN_PULSE_DIR)"
    return 0
  fi
  kill_daemon "$dir"
  case "$dir" in
    */hearken-pulse.*) rm -rf "$dir" ;;
  esac
}

start_daemon() {
  install_pkgs || exit $?
  local dir=${1:-}
  if [ -n "$dir" ]; then
    # Again in the same directory (same socket): clients see the sound server
    # vanish and come back, as when a USB microphone is unplugged and replugged.
    kill_daemon "$dir"
    rm -f "$dir/native" "$dir/runtime/pid"
  else
    dir=$(mktemp -d "${TMPDIR:-/tmp}/hearken-pulse.XXXXXX")
  fi
  mkdir -p "$dir/runtime" "$dir/home" "$dir/state"
  chmod 700 "$dir" "$dir/runtime"
  # The daemon's own environment: everything private to $dir.
  if ! env -u PULSE_SERVER -u DBUS_SESSION_BUS_ADDRESS \
      HOME="$dir/home" XDG_RUNTIME_DIR="$dir" XDG_CONFIG_HOME="$dir/home/.config" \
      PULSE_RUNTIME_PATH="$dir/runtime" PULSE_STATE_PATH="$dir/state" \
      pulseaudio --daemonize=yes --system=false --exit-idle-time=-1 --disallow-exit \
        --use-pid-file=yes --realtime=no --high-priority=no --disable-shm=yes \
        -n --log-target="file:$dir/pulse.log" \
        --load="module-native-protocol-unix auth-anonymous=1 socket=$dir/native" \
        --load="module-null-sink sink_name=hearken_null rate=48000 channels=2" \
        </dev/null >/dev/null 2>>"$dir/pulse.log"; then
    log "pulseaudio failed to start; its log:"
    cat "$dir/pulse.log" >&2 || true
    stop_daemon "$dir"
    exit 1
  fi
  export PULSE_SERVER="unix:$dir/native"
  export PULSE_COOKIE="$dir/home/.config/pulse/cookie"
  local ok=""
  for _ in $(seq 100); do
    if pactl info >/dev/null 2>&1; then
      ok=1
      break
    fi
    sleep 0.1
  done
  if [ -z "$ok" ]; then
    log "pulseaudio did not answer within 10 s; its log:"
    cat "$dir/pulse.log" >&2 || true
    stop_daemon "$dir"
    exit 1
  fi
  pactl set-default-sink hearken_null >&2
  pactl set-default-source hearken_null.monitor >&2
  echo "export PULSE_SERVER=$PULSE_SERVER"
  echo "export PULSE_COOKIE=$PULSE_COOKIE"
  echo "export HEARKEN_PULSE_DIR=$dir"
}

case "${1:-start}" in
  start) start_daemon "${2:-}" ;;
  kill) kill_daemon "${2:?kill needs the daemon directory}" ;;
  stop) stop_daemon "${2:-}" ;;
  *)
    echo "usage: $0 [start [DIR]|kill DIR|stop [DIR]]" >&2
    exit 1
    ;;
esac
