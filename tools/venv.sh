# Sourced by tools/mesh.sh and tools/test.sh: make .venv with this project installed (idempotent).
# Usage: ensure_venv [EXTRAS]   e.g. ensure_venv test
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"

ensure_venv() {
    local extras="${1:-}"
    local python="${PYTHON:-python3}"
    if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        echo "hbone needs Python >= 3.11 (found: $("$python" --version 2>&1))" >&2
        return 1
    fi
    if [[ ! -x "$PY" ]]; then
        if ! "$python" -c 'import ensurepip, venv' >/dev/null 2>&1; then
            # Debian ships venv separately.
            local sudo=""; [[ "$(id -u)" -ne 0 ]] && sudo="sudo -n"
            $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv
        fi
        "$python" -m venv "$VENV"
    fi
    # Reinstall only when the dependency list changed since the last install.
    local stamp="$VENV/.hbone-installed" want
    want="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)-${extras}"
    if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
        local spec="$ROOT"
        [[ -n "$extras" ]] && spec="$ROOT[$extras]"
        "$PY" -m pip install -q --disable-pip-version-check -e "$spec" || return 1
        echo "$want" > "$stamp"
    fi
}
