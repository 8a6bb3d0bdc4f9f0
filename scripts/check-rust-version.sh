#!/usr/bin/env bash
# The workspace's `rust-version` is the highest `rust-version` any locked dependency
# declares: a lower one promises a toolchain the lock file cannot build with, a higher one
# refuses toolchains that can. Run by `make lint`; prints the packages that set it.
#
#   scripts/check-rust-version.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo metadata --format-version 1 --locked --offline 2>/dev/null >"${TMPDIR:-/tmp}/bsw-metadata.$$.json" \
    || cargo metadata --format-version 1 --locked >"${TMPDIR:-/tmp}/bsw-metadata.$$.json"
trap 'rm -f "${TMPDIR:-/tmp}/bsw-metadata.$$.json"' EXIT
exec python3 - "${TMPDIR:-/tmp}/bsw-metadata.$$.json" <<'PY'
import json, re, sys
from pathlib import Path

meta = json.loads(Path(sys.argv[1]).read_text())
resolved = {node["id"] for node in meta["resolve"]["nodes"]}
members = set(meta["workspace_members"])

def key(version):
    parts = [int(part) for part in version.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))

def short(version):
    # "1.89.0" and "1.89" are the same promise.
    return ".".join(version.split(".")[:2]) if version.endswith(".0") else version

needs = [(key(p["rust_version"]), p["name"], p["version"], p["rust_version"])
         for p in meta["packages"]
         if p["id"] in resolved and p["id"] not in members and p.get("rust_version")]
highest = max(needs)
required = short(highest[3])
cargo = Path("Cargo.toml").read_text()
declared = re.search(r'^rust-version = "([^"]+)"', cargo, re.M).group(1)
setters = ", ".join(f"{name} {version}" for k, name, version, _ in needs if k == highest[0])
if key(declared) != key(highest[3]):
    sys.exit(f"Cargo.toml says rust-version = \"{declared}\"; the locked dependencies need {required} "
             f"({setters}): set rust-version = \"{required}\"")
print(f"rust-version {declared}: the highest any locked dependency needs ({setters})")
PY
