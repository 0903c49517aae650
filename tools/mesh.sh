#!/usr/bin/env bash
# The README's first command: install hbone + microxds into .venv and run the main job, a local mesh on
# loopback with embedded defaults. Extra arguments go to the demo.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source tools/venv.sh
ensure_venv
exec "$VENV/bin/hbone" demo "$@"
