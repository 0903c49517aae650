#!/usr/bin/env bash
# The README's first command: install hbone + microxds into .venv and run the main job, a local mesh on
# loopback with embedded defaults: microxds (dev CA + watched config) and two agents with echo apps, showing
# traffic allowed and then denied by a policy. Extra arguments go to tools/localmesh.py.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source tools/venv.sh
ensure_venv
exec "$PY" tools/localmesh.py "$@"
