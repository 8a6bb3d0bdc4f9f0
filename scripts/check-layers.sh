#!/usr/bin/env bash
# The worker's module layers (written in crates/worker/src/lib.rs) hold: no upward
# import, none within a layer, no import circle between files. Run by `make lint`.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 scripts/check-layers.py crates/worker/src
