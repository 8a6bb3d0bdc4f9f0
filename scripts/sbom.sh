#!/usr/bin/env bash
# `make sbom`: CycloneDX SBOMs (JSON, spec 1.5) of the workspace's crates from the locked
# dependencies, one per crate, in $CARGO_TARGET_DIR/sbom/ (default target/sbom/);
# bunq-session-worker.cdx.json describes what the production image ships. Installs
# cargo-cyclonedx into $CARGO_TARGET_DIR/tools when it is not on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
if ! command -v cargo-cyclonedx >/dev/null; then
  [ -x "$target/tools/bin/cargo-cyclonedx" ] || cargo install cargo-cyclonedx --locked --root "$target/tools"
  export PATH="$target/tools/bin:$PATH"
fi
out="$target/sbom"
mkdir -p "$out"
# Writes <crate dir>/sbom.json for every workspace member; moved out of the tree at once.
cargo cyclonedx --format json --spec-version 1.5 --override-filename sbom
for sbom in crates/*/sbom.json; do
  crate=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["metadata"]["component"]["name"])' "$sbom")
  mv "$sbom" "$out/$crate.cdx.json"
done
python3 - "$out/bunq-session-worker.cdx.json" <<'PY'
import json, sys
bom = json.load(open(sys.argv[1]))
names = {c["name"] for c in bom.get("components", [])}
assert {"lapin", "redis", "bunq-protocol"} <= names, sorted(names)[:20]
print(f"{sys.argv[1]}: {len(names)} components, {bom['bomFormat']} {bom['specVersion']}")
PY
