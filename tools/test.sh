#!/usr/bin/env bash
# The test command: installs system packages, then runs every test against the real
# models and recordings in $HEARKEN_SHARED (default ../shared).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/system-deps.sh
export HEARKEN_SHARED="${HEARKEN_SHARED:-$(cd .. && pwd)/shared}"
if [ ! -d "$HEARKEN_SHARED/models" ]; then
  echo "error: $HEARKEN_SHARED/models not found; set HEARKEN_SHARED to the shared assets folder" >&2
  exit 1
fi
cargo test --locked 2>&1
