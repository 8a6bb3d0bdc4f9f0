#!/usr/bin/env bash
# Checks the Helm chart offline: lint, render, the rendered configuration accepted by
# the worker's own validation, and the alerts under `promtool test rules`
# (tests/helm/alerts.test.yaml).
#
#   tests/helm/run.sh
#
# Creates (or reuses) a venv under $CARGO_TARGET_DIR/helm-venv (default target/) with
# helm-python-sdk (Helm's Go library, bundled; no helm binary or cluster needed),
# PyYAML and kubernetes-validate (Kubernetes' schemas, bundled), installs promtool (Debian's `prometheus` package) when it is missing, builds the
# worker and runs check_chart.py. Exit status: the Python test's.
set -euo pipefail

HELM_SDK_VERSION="${HELM_SDK_VERSION:-0.2.2}"
PYYAML_VERSION="${PYYAML_VERSION:-6.0.3}"
# Bundles Kubernetes' JSON schemas: every rendered manifest is validated offline.
KUBERNETES_VALIDATE_VERSION="${KUBERNETES_VALIDATE_VERSION:-1.37.0}"

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
target="${CARGO_TARGET_DIR:-$repo/target}"
# shellcheck source=../python-venv.sh
source "$repo/tests/python-venv.sh"
python_venv helm-venv "helm-python-sdk==$HELM_SDK_VERSION" "PyYAML==$PYYAML_VERSION" \
    "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"

if ! command -v promtool >/dev/null; then
    echo "installing promtool (Debian package prometheus)" >&2
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null \
        || { echo "promtool is needed and could not be installed" >&2; exit 1; }
fi

(cd "$repo" && cargo build --quiet --bin bunq-session-worker)

exec "$venv_python" "$repo/tests/helm/check_chart.py" \
    --chart "$repo/helm/bunq-session-worker" \
    --worker "$target/debug/bunq-session-worker" \
    --client-key "$repo/tests/fixtures/client_key.pem" \
    --promtool "$(command -v promtool)"
