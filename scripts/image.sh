#!/usr/bin/env bash
# `make image`: the release binaries in a local OCI image, tagged as the Helm chart's
# default image (localhost/bunq-session-worker:<version>). Built FROM scratch with podman
# because no registry (and so no base image) can be reached here; the Dockerfile builds
# the same layout on distroless where one can.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
image=${IMAGE:-localhost/bunq-session-worker:$version}
command -v podman >/dev/null || { echo "podman is needed: apt-get install podman" >&2; exit 1; }
cargo build --release --locked --bin bunq-session-worker --bin fake-bunq
context="$target/image"
scripts/image-rootfs.sh "$target" "$context/rootfs"
cp image/Containerfile "$context/Containerfile"
podman build --quiet -f "$context/Containerfile" -t "$image" "$context" >/dev/null
echo "$image"
