# Sourced by the Python-driven checks (tests/sdk, tests/helm).
#
#   python_venv NAME REQUIREMENT...   sets $venv_python
#
# Creates (or reuses) $CARGO_TARGET_DIR/NAME (default target/NAME) and installs the pinned
# requirements (`package==version`) unless exactly those versions are already there.
python_venv() {
    local name="$1"
    shift
    local repo target venv
    repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    target="${CARGO_TARGET_DIR:-$repo/target}"
    venv="$target/$name"
    if [[ ! -x "$venv/bin/python" ]]; then
        "${PYTHON:-python3}" -m venv "$venv"
    fi
    if ! "$venv/bin/python" - "$@" 2>/dev/null <<'PY'; then
import importlib.metadata as m, sys
sys.exit(any(m.version(p.split("==")[0]) != p.split("==")[1] for p in sys.argv[1:]))
PY
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$@"
    fi
    venv_python="$venv/bin/python"
}
