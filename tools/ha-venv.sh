#!/usr/bin/env bash
# Creates a Python venv holding Home Assistant core (pinned in tools/ha-requirements.txt)
# so tools/ha-schema-check.py can validate hearken's MQTT discovery payloads against
# Home Assistant's own voluptuous schemas.
#
#   tools/ha-venv.sh [DIR]     DIR defaults to ${HEARKEN_HA_VENV:-$HOME/.cache/hearken/ha-venv}
#
# Idempotent: if DIR already imports the pinned Home Assistant's MQTT binary_sensor,
# event and sensor platforms, nothing is installed. Needs Python 3.11 (python3, or
# $PYTHON) and access to PyPI. The last line printed is the venv's python path.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
req="$here/ha-requirements.txt"
dir="${1:-${HEARKEN_HA_VENV:-$HOME/.cache/hearken/ha-venv}}"
py="${PYTHON:-python3}"

want="$(sed -n 's/^homeassistant==\([^ ]*\).*/\1/p' "$req")"
[ -n "$want" ] || { echo "error: no homeassistant==X pin in $req" >&2; exit 1; }

check() {
  "$dir/bin/python" - "$want" <<'EOF' >/dev/null 2>&1
import sys
from homeassistant.const import __version__
assert __version__ == sys.argv[1], __version__
import homeassistant.components.mqtt.binary_sensor  # noqa: F401
import homeassistant.components.mqtt.event  # noqa: F401
import homeassistant.components.mqtt.sensor  # noqa: F401
EOF
}

if [ -x "$dir/bin/python" ] && check; then
  echo "ha-venv: $dir already has Home Assistant $want" >&2
  echo "$dir/bin/python"
  exit 0
fi

if ! "$py" -c 'import sys; sys.exit(0 if sys.version_info[:2] >= (3, 11) else 1)'; then
  echo "error: $py is $("$py" -V 2>&1); Home Assistant $want needs Python >= 3.11" >&2
  exit 1
fi

start=$(date +%s)
echo "ha-venv: creating $dir with Home Assistant $want ($("$py" -V 2>&1))" >&2
mkdir -p "$(dirname "$dir")"
[ -x "$dir/bin/python" ] || "$py" -m venv "$dir"
# Low priority: this shares the machine with cargo builds.
nice -n 10 "$dir/bin/python" -m pip install --quiet --disable-pip-version-check \
  --no-input -r "$req" >&2

if ! check; then
  echo "error: $dir still cannot import homeassistant.components.mqtt.{binary_sensor,event,sensor}:" >&2
  "$dir/bin/python" -c 'import homeassistant.components.mqtt.binary_sensor, homeassistant.components.mqtt.event, homeassistant.components.mqtt.sensor' >&2 || true
  exit 1
fi
echo "ha-venv: done in $(( $(date +%s) - start ))s, $(du -sh "$dir" | cut -f1) in $dir" >&2
echo "$dir/bin/python"
