#!/usr/bin/env bash
# Checks a hearken systemd unit with `systemd-analyze verify` (syntax, directive
# names and values, dependencies, executables) and prints its sandbox exposure
# score (`systemd-analyze security --offline`), failing above a threshold.
#
#   tools/verify-unit.sh [UNIT_FILE]      (default systemd/hearken.service)
#
# A .timer is only verified (it has no program or sandbox).
# `verify` also requires ExecStart='s program to exist. When the unit's program
# (/usr/bin/hearken) is not installed, a copy of the unit whose ExecStart points at
# $HEARKEN_BIN (default: target/release/hearken, else target/debug/hearken, else
# /bin/true) is verified instead; everything else is checked unchanged. After the
# package is installed, tools/test-deb.sh verifies the installed unit as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
unit="${1:-systemd/hearken.service}"
# Highest accepted exposure (systemd's 0.0-10.0 scale; hearken.service scores 2.0,
# hearken-adapt.service 0.9).
max_exposure="${HEARKEN_MAX_EXPOSURE:-3.0}"

if ! command -v systemd-analyze >/dev/null; then
  tools/system-deps.sh systemd >&2
fi

case "$unit" in
  *.service) ;;
  *.timer)
    # A timer has no program and no sandbox; verify checks its syntax and calendar
    # expression.
    out="$(systemd-analyze verify "$unit" 2>&1)" || { echo "$out" >&2; echo "verify-unit: systemd-analyze verify failed for $unit" >&2; exit 1; }
    [ -z "$out" ] || { echo "$out" >&2; echo "verify-unit: systemd-analyze verify reported problems in $unit" >&2; exit 1; }
    echo "verify-unit: systemd-analyze verify $unit: ok"
    exit 0 ;;
  *) echo "verify-unit: $unit is neither a .service nor a .timer" >&2; exit 2 ;;
esac

prog="$(sed -n 's/^ExecStart=[-@:+!]*\([^ ]*\).*/\1/p' "$unit" | head -n1)"
tmp=""
trap '[ -z "$tmp" ] || rm -rf "$tmp"' EXIT
check="$unit"
if [ ! -x "$prog" ]; then
  bin="${HEARKEN_BIN:-}"
  if [ -z "$bin" ]; then
    for b in "$PWD/target/release/hearken" "$PWD/target/debug/hearken" /bin/true; do
      if [ -x "$b" ]; then bin="$b"; break; fi
    done
  fi
  tmp="$(mktemp -d)"
  # Same file name: verify derives the unit name from it.
  check="$tmp/$(basename "$unit")"
  sed "s#^\(ExecStart=[-@:+!]*\)$prog#\1$bin#" "$unit" >"$check"
  echo "verify-unit: $prog is not installed; verifying a copy that runs $bin"
fi

# verify prints problems and exits non-zero on errors; treat any output as failure
# too (warnings such as unknown directives only print).
out="$(systemd-analyze verify "$check" 2>&1)" || { echo "$out" >&2; echo "verify-unit: systemd-analyze verify failed for $unit" >&2; exit 1; }
if [ -n "$out" ]; then
  echo "$out" >&2
  echo "verify-unit: systemd-analyze verify reported problems in $unit" >&2
  exit 1
fi
echo "verify-unit: systemd-analyze verify $unit: ok"

exposure="$(systemd-analyze security --offline=yes --no-pager "$check" 2>/dev/null |
  sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')"
if [ -z "$exposure" ]; then
  echo "verify-unit: systemd-analyze security gave no exposure level (systemd older than 250?); skipped"
elif awk -v e="$exposure" -v m="$max_exposure" 'BEGIN { exit !(e > m) }'; then
  systemd-analyze security --offline=yes --no-pager "$check" >&2 || true
  echo "verify-unit: exposure $exposure is above $max_exposure: was sandboxing removed from $unit?" >&2
  exit 1
else
  echo "verify-unit: sandbox exposure $exposure (at most $max_exposure): ok"
fi
