#!/usr/bin/env bash
# Checks the Helm chart offline: lint, render, and the rendered configuration accepted by
# the worker's own validation.
#
#   tests/helm/run.sh
#
# Creates (or reuses) a venv under $CARGO_TARGET_DIR/helm-venv (default target/) with
# helm-python-sdk (Helm's Go library, bundled; no helm binary or cluster needed) and
# PyYAML, builds the worker and runs check_chart.py. Exit status: the Python test's.
set -euo pipefail

HELM_SDK_VERSION="${HELM_SDK_VERSION:-0.2.2}"
PYYAML_VERSION="${PYYAML_VERSION:-6.0.3}"

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
target="${CARGO_TARGET_DIR:-$repo/target}"
# shellcheck source=../python-venv.sh
source "$repo/tests/python-venv.sh"
python_venv helm-venv "helm-python-sdk==$HELM_SDK_VERSION" "PyYAML==$PYYAML_VERSION"

(cd "$repo" && cargo build --quiet --bin bunq-session-worker)

exec "$venv_python" "$repo/tests/helm/check_chart.py" \
    --chart "$repo/helm/bunq-session-worker" \
    --worker "$target/debug/bunq-session-worker" \
    --client-key "$repo/tests/fixtures/client_key.pem"
