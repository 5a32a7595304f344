#!/usr/bin/env bash
# CI check of the Debian package: builds the amd64 .deb, verifies the systemd units,
# installs the package, checks what it installed (binary, config, models, user,
# unit), then removes and purges it and checks nothing is left.
#
#   tools/test-deb.sh [--profile dev|release] [--no-build] [--deb FILE]
#
#   --profile P   profile of the packaged binary (default dev: the binary `cargo test`
#                 already built; its dependencies are optimised, so it classifies fast)
#   --no-build    package the binary already in target/ without running cargo build
#   --deb FILE    test this .deb instead of building one
#
# Needs root (or sudo) for dpkg. Runs without systemd as PID 1 (CI containers): the
# maintainer scripts then only create the enable symlinks. Safe on a development
# machine: it refuses to run when a hearken package or a `hearken` user already
# exists, and purges what it installed on exit, also on failure.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=dev
deb=""
build_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile="${2:?}"; shift 2 ;;
    --deb) deb="$(realpath "${2:?}")"; shift 2 ;;
    --no-build) build_args+=(--no-build); shift ;;
    *) echo "test-deb.sh: unknown argument: $1" >&2; exit 2 ;;
  esac
done

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export HEARKEN_SHARED="${HEARKEN_SHARED:-$(cd .. && pwd)/shared}"
audio="$HEARKEN_SHARED/audio/gunshots.wav"
[ -f "$audio" ] || { echo "test-deb.sh: $audio not found; set HEARKEN_SHARED" >&2; exit 1; }

step() { echo "test-deb: $*"; }
fail() { echo "test-deb: FAIL: $*" >&2; exit 1; }

# Never touch a real installation.
if dpkg-query -W -f='${Status}' hearken 2>/dev/null | grep -qv "not-installed"; then
  fail "a hearken package is already on this machine ($(dpkg-query -W -f='${Status}' hearken)); remove it first (dpkg -P hearken)"
fi
if getent passwd hearken >/dev/null || getent group hearken >/dev/null; then
  fail "a hearken user or group already exists; this test would delete it on purge"
fi

if [ -z "$deb" ]; then
  start=$SECONDS
  detectors=models/efficientat-mn04/detectors
  if ! ls "$detectors"/*.json >/dev/null 2>&1; then
    # No full training here: a small seeded gunshot detector from three eval-dev
    # gunshots and a few ordinary sounds stands in for the defaults ./setup.sh trains.
    bin=target/debug/hearken
    [ "$profile" = release ] && bin=target/release/hearken
    [ -x "$bin" ] || cargo build --locked --profile "$profile" --bin hearken >&2
    small=target/deb-test-detectors
    rm -rf "$small"
    mkdir -p "$small"
    ln -s "$HEARKEN_SHARED/eval-dev/clips" "$small/clips"
    { head -n1 "$HEARKEN_SHARED/eval-dev/labels.csv"
      for want in gunshot:3 speech:2 keyboard_typing:2 door_knock:2; do
        awk -F, -v l="${want%%:*}" '$4 == l' "$HEARKEN_SHARED/eval-dev/labels.csv" | head -n "${want##*:}"
      done; } > "$small/labels.csv"
    step "training a small seeded gunshot detector to package"
    tools/install-models.sh >/dev/null
    HEARKEN_MODELS="$PWD/models" "$bin" train --method heads --groups gunshot --snr 9,0 --seed 3 --hidden 0,4 \
      --data "$small" --out "$small/detectors" >"$small/train.log" 2>&1 ||
      fail "hearken train: $(tail -n 20 "$small/train.log")"
    detectors="$small/detectors"
  fi
  deb="$(tools/build-deb.sh --profile "$profile" --fast --output target/debian-test --detectors "$detectors" "${build_args[@]}" | tail -n1)"
  step "built $deb ($(du -h "$deb" | cut -f1)) in $((SECONDS - start)) s"
fi

step "systemd units (before install)"
for u in systemd/hearken.service systemd/hearken-adapt.service systemd/hearken-adapt.timer; do
  tools/verify-unit.sh "$u"
done

installed=0
cleanup() {
  if [ "$installed" = 1 ]; then
    echo "test-deb: cleaning up: dpkg -P hearken" >&2
    $sudo dpkg -P hearken >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

step "dpkg -i $(basename "$deb")"
installed=1
$sudo dpkg -i "$deb"
dpkg-query -W -f='${Status}\n' hearken | grep -qx "install ok installed" || fail "not installed after dpkg -i"

step "installed files"
[ -x /usr/bin/hearken ] || fail "/usr/bin/hearken missing"
unit=/usr/lib/systemd/system/hearken.service
[ -f "$unit" ] || fail "$unit missing"
for m in efficientat-mn04 yamnet; do
  for f in model.toml model.onnx labels.csv; do
    [ -s "/usr/share/hearken/models/$m/$f" ] || fail "/usr/share/hearken/models/$m/$f missing"
  done
done
dpkg-query -W -f='${Conffiles}\n' hearken | grep -q "/etc/hearken/hearken.toml" ||
  fail "/etc/hearken/hearken.toml is not a conffile"
[ "$(stat -c '%U:%G %a' /etc/hearken/hearken.toml)" = "root:hearken 640" ] ||
  fail "/etc/hearken/hearken.toml is $(stat -c '%U:%G %a' /etc/hearken/hearken.toml), want root:hearken 640"

step "shared libraries match Depends"
# Depends: in Cargo.toml lists libasound, libc6 (>= 2.35) and libgcc-s1 by hand; a new
# shared library or a newer glibc symbol must be added there.
needed="$(objdump -p /usr/bin/hearken | awk '/NEEDED/ { print $2 }' | sort | tr '\n' ' ')"
for lib in $needed; do
  case "$lib" in
    libasound.so.2|libgcc_s.so.1|libm.so.6|libc.so.6|ld-linux*) ;;
    *) fail "/usr/bin/hearken links $lib, which Depends: does not cover (Cargo.toml [package.metadata.deb])" ;;
  esac
done
glibc="$(objdump -T /usr/bin/hearken | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -n1)"
dpkg --compare-versions "${glibc#GLIBC_}" le 2.35 ||
  fail "/usr/bin/hearken needs $glibc; raise libc6 (>= 2.35) in Depends"
echo "  links: $needed(newest symbol $glibc)"

step "system user"
getent passwd hearken >/dev/null || fail "user hearken missing"
id -nG hearken | tr ' ' '\n' | grep -qx audio || fail "hearken is not in group audio"
[ "$(getent passwd hearken | cut -d: -f7)" = /usr/sbin/nologin ] || fail "hearken has a login shell"

step "systemd unit (installed, real ExecStart)"
tools/verify-unit.sh "$unit"
[ -L /etc/systemd/system/multi-user.target.wants/hearken.service ] ||
  fail "hearken.service was not enabled (no multi-user.target.wants link)"

step "weekly adapting: hearken-adapt.service and .timer (installed, timer enabled)"
adapt_unit=/usr/lib/systemd/system/hearken-adapt.service
tools/verify-unit.sh "$adapt_unit"
tools/verify-unit.sh /usr/lib/systemd/system/hearken-adapt.timer
[ -L /etc/systemd/system/timers.target.wants/hearken-adapt.timer ] ||
  fail "hearken-adapt.timer was not enabled (no timers.target.wants link)"
# The service is started by the timer only, never enabled on its own.
[ ! -e /etc/systemd/system/multi-user.target.wants/hearken-adapt.service ] ||
  fail "hearken-adapt.service is enabled at boot; only its timer should start it"

step "check-config"
out="$(/usr/bin/hearken check-config /etc/hearken/hearken.toml)" || fail "check-config: $out"
echo "  $out"
# The service user can read its config (root:hearken 0640).
runuser -u hearken -- /usr/bin/hearken check-config /etc/hearken/hearken.toml >/dev/null ||
  fail "user hearken cannot check /etc/hearken/hearken.toml"

step "classify with the installed models"
# From / with HEARKEN_MODELS unset, models are found by name in /usr/share/hearken/models;
# the explicit directories make sure those very files load (sha256-checked).
# mn04 ranks Gunshot first; YAMNet ranks Explosion just above it.
for spec in efficientat-mn04:'clip +Gunshot' /usr/share/hearken/models/efficientat-mn04:'clip +Gunshot' \
  /usr/share/hearken/models/yamnet:'clip .*Gunshot'; do
  model="${spec%%:*}"
  want="${spec#*:}"
  out="$(cd / && env -u HEARKEN_MODELS /usr/bin/hearken classify --model "$model" --top 3 "$audio")" ||
    fail "classify --model $model: $out"
  clip="$(echo "$out" | grep -m1 '^  clip')"
  echo "  $model: $clip"
  echo "$clip" | grep -Eq "^  $want" || fail "classify --model $model: no Gunshot where expected ($want)"
done

step "the daemon as the service user (recording as the source)"
# What systemd would set up: the state directory and the user; the config as installed.
$sudo install -d -o hearken -g hearken -m 0750 /var/lib/hearken
# No training step: the packaged detectors score gunshot.
ls /usr/share/hearken/models/efficientat-mn04/detectors/*.json >/dev/null 2>&1 ||
  fail "no trained detectors in /usr/share/hearken/models/efficientat-mn04/detectors"
[ -s /usr/share/hearken/models/efficientat-mn04/detectors/validation.hkv ] ||
  fail "no validation.hkv beside the packaged detectors: hearken adapt could not measure recall"
log="$(mktemp)"
# A copy the service user can read wherever the checkout is (a 0700 parent of
# $HEARKEN_SHARED would refuse it, as it would refuse the service).
svc_audio="$(mktemp --suffix=.wav)"
cp "$audio" "$svc_audio"
chmod 0644 "$svc_audio"
out="$(cd / && timeout 300 runuser -u hearken -- env STATE_DIRECTORY=/var/lib/hearken \
  /usr/bin/hearken run --config /etc/hearken/hearken.toml --source "file:$svc_audio" --fast \
  --print-events 2>"$log")" || fail "hearken run as user hearken failed: $out $(cat "$log")"
rm -f "$svc_audio"
grep -q "gunshot: trained detector" "$log" || fail "the packaged gunshot detector was not used: $(cat "$log")"
rm -f "$log"
echo "$out" | grep -Eq '"group": ?"gunshot"' || fail "hearken run as user hearken reported no gunshot event: $out"
echo "  $(echo "$out" | grep -c '"group"') event messages, gunshot among them, from the packaged detector"

step "the weekly adapting run as the service user (the unit's own ExecStart)"
# The store the run above wrote holds seconds, not the half hour adapting needs:
# every group keeps its detector and the run succeeds, as a first week would.
adapt_cmd="$(sed -n 's/^ExecStart=//p' "$adapt_unit")"
# shellcheck disable=SC2086 # the unit's command line, split as systemd splits it
out="$(cd / && runuser -u hearken -- $adapt_cmd 2>&1)" || fail "$adapt_cmd as user hearken failed: $out"
echo "$out" | grep -q "home store /var/lib/hearken/home" || fail "$adapt_cmd did not read the store: $out"
echo "$out" | grep -q "needs at least 0.5 h" || fail "$adapt_cmd did not report the store too short: $out"
! ls /var/lib/hearken/adapted/*.json >/dev/null 2>&1 || fail "$adapt_cmd adapted on seconds of sound"
echo "  $(echo "$out" | head -n1)"
# Off in the config: the run says so and changes nothing.
off_conf="$(mktemp --suffix=.toml)"
sed 's/^weekly_adapt = true/weekly_adapt = false/' /etc/hearken/hearken.toml >"$off_conf"
chmod 0644 "$off_conf"
out="$(cd / && runuser -u hearken -- /usr/bin/hearken adapt --scheduled --config "$off_conf" \
  --state-dir /var/lib/hearken 2>&1)" || fail "hearken adapt --scheduled with weekly_adapt = false failed: $out"
rm -f "$off_conf"
echo "$out" | grep -q "weekly adapting is off" || fail "weekly_adapt = false was not honoured: $out"

step "reinstall over itself (upgrade path; conffile edits survive)"
echo "# local edit" | $sudo tee -a /etc/hearken/hearken.toml >/dev/null
$sudo dpkg -i "$deb" >/dev/null
grep -q "^# local edit" /etc/hearken/hearken.toml || fail "reinstall lost a conffile edit"
[ "$(stat -c '%U:%G %a' /etc/hearken/hearken.toml)" = "root:hearken 640" ] || fail "reinstall changed config ownership"
# Stand in for state the running service would have left (StateDirectory=hearken).
$sudo install -o hearken -g hearken -m 0640 /dev/null /var/lib/hearken/test-state

step "dpkg -r hearken"
$sudo dpkg -r hearken
[ ! -e /usr/bin/hearken ] || fail "/usr/bin/hearken left after dpkg -r"
[ ! -e "$unit" ] || fail "$unit left after dpkg -r"
[ ! -e /usr/share/hearken ] || fail "/usr/share/hearken left after dpkg -r"
[ -f /etc/hearken/hearken.toml ] || fail "dpkg -r removed the conffile (only purge should)"
[ ! -e /etc/systemd/system/multi-user.target.wants/hearken.service ] || fail "service still enabled after dpkg -r"
[ ! -e /etc/systemd/system/timers.target.wants/hearken-adapt.timer ] || fail "adapting timer still enabled after dpkg -r"

step "dpkg -P hearken"
$sudo dpkg -P hearken
installed=0
for p in /etc/hearken /var/lib/hearken /usr/share/doc/hearken /etc/systemd/system/hearken.service \
  /etc/systemd/system/multi-user.target.wants/hearken.service \
  /var/lib/systemd/deb-systemd-helper-enabled/hearken.service.dsh-also \
  /var/lib/systemd/deb-systemd-helper-enabled/multi-user.target.wants/hearken.service \
  /var/lib/systemd/deb-systemd-helper-masked/hearken.service \
  /etc/systemd/system/timers.target.wants/hearken-adapt.timer \
  /var/lib/systemd/deb-systemd-helper-enabled/hearken-adapt.timer.dsh-also \
  /var/lib/systemd/deb-systemd-helper-enabled/timers.target.wants/hearken-adapt.timer \
  /var/lib/systemd/deb-systemd-helper-masked/hearken-adapt.timer; do
  if [ -e "$p" ] || [ -L "$p" ]; then fail "$p left after purge"; fi
done
! getent passwd hearken >/dev/null || fail "user hearken left after purge"
! getent group hearken >/dev/null || fail "group hearken left after purge"
! dpkg-statoverride --list /etc/hearken/hearken.toml >/dev/null || fail "statoverride left after purge"
[ -z "$(dpkg -L hearken 2>/dev/null)" ] || fail "dpkg -L hearken still lists files"
! dpkg-query -W -f='${Status}' hearken 2>/dev/null | grep -q "config-files" || fail "hearken still has config-files status"

echo "test-deb: ok"
