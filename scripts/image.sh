#!/usr/bin/env bash
# `make image`: the release binaries in local OCI images, each with the OCI labels
# (org.opencontainers.image.*): localhost/bunq-session-worker:<version> (the Helm chart's
# default image; the worker only) and localhost/fake-bunq:<version> (the stand-in for bunq,
# never in the production image). Built FROM scratch with podman because no registry (and
# so no base image) can be reached here; the Dockerfile builds the same layout on
# distroless where one can. Prints the two image names, the worker's first.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-target}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
image=${IMAGE:-localhost/bunq-session-worker:$version}
fake_image=${FAKE_IMAGE:-localhost/fake-bunq:$version}
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
created=$(date -u +%Y-%m-%dT%H:%M:%SZ)
command -v podman >/dev/null || { echo "podman is needed: apt-get install podman" >&2; exit 1; }
cargo build --release --locked --bin bunq-session-worker --bin fake-bunq
build() { # NAME BINARY CONTAINERFILE
  local context="$target/image/$2"
  scripts/image-rootfs.sh "$target" "$context/rootfs" "$2"
  cp "$3" "$context/Containerfile"
  podman build --quiet -f "$context/Containerfile" --build-arg VERSION="$version" \
    --build-arg REVISION="$revision" --build-arg CREATED="$created" -t "$1" "$context" >/dev/null
  echo "$1"
}
build "$image" bunq-session-worker image/Containerfile
build "$fake_image" fake-bunq image/fake-bunq.Containerfile
