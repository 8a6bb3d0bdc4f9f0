#!/usr/bin/env bash
# Runs bunq's official Python SDK against a freshly built fake-bunq.
#
#   tests/sdk/run.sh
#
# Creates (or reuses) a venv under $CARGO_TARGET_DIR/sdk-venv (default target/),
# installs the pinned bunq-sdk, builds and starts `fake-bunq --listen 127.0.0.1:0` with a
# fresh partner API key (in a file, never on a command line), reads the URL it prints and
# runs official_sdk_session.py against it. The fake is stopped on exit, whatever happens.
# Exit status: the Python test's.
set -euo pipefail

# 1.28.0 is the newest release at the time of writing; its ApiContext, SessionServer
# adapter and response verification are what the fake was checked against.
BUNQ_SDK_VERSION="${BUNQ_SDK_VERSION:-1.28.0}"

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
target="${CARGO_TARGET_DIR:-$repo/target}"
# shellcheck source=../python-venv.sh
source "$repo/tests/python-venv.sh"
python_venv sdk-venv "bunq-sdk==$BUNQ_SDK_VERSION"

(cd "$repo" && cargo build --quiet --bin fake-bunq)

workdir="$(mktemp -d)"
fake_pid=""
cleanup() {
    if [[ -n "$fake_pid" ]] && kill -0 "$fake_pid" 2>/dev/null; then
        kill -TERM "$fake_pid" 2>/dev/null || true
        wait "$fake_pid" 2>/dev/null || true
    fi
    rm -rf "$workdir"
}
trap cleanup EXIT

mkfifo "$workdir/stdout"
(umask 077 && printf 'partner_%s' "$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')" >"$workdir/partner-key")
"$target/debug/fake-bunq" --listen 127.0.0.1:0 --partner-api-key-file "$workdir/partner-key" \
    --token-reset-delay-ms 300 >"$workdir/stdout" 2>"$workdir/stderr" &
fake_pid=$!

# The fake prints exactly one line once it accepts connections.
if ! read -r -t 30 line <"$workdir/stdout"; then
    echo "fake-bunq did not report its address; stderr:" >&2
    cat "$workdir/stderr" >&2
    exit 1
fi
base_url="${line#fake-bunq listening on }"
echo "fake-bunq at $base_url (pid $fake_pid)"

status=0
# The SDK sends its own User-Agent and signs every call after installation.
"$venv_python" "$repo/tests/sdk/official_sdk_session.py" "$base_url" "$workdir/partner-key" || status=$?
if [[ $status -ne 0 ]]; then
    echo "--- fake-bunq stderr ---" >&2
    cat "$workdir/stderr" >&2
fi
exit $status
