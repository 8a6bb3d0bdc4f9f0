#!/usr/bin/env bash
# The image as a runtime would see it: built by `make image`, unpacked, and its binaries
# run from its own filesystem with chroot as the image's user (podman cannot run
# containers on this machine). Checks: the image's user, entrypoint and layout; no shell;
# `--version`; fake-bunq from the image serving; `check` from the image reaching this
# machine's RabbitMQ and Redis and that fake-bunq, on a read-only root filesystem.
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! command -v podman >/dev/null; then
  echo "installing podman (Debian)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman >/dev/null || { echo "podman is needed and could not be installed" >&2; exit 1; }
fi
image=$(scripts/image.sh)
work=$(mktemp -d)
fake_pid=""
cleanup() {
  [ -n "$fake_pid" ] && kill "$fake_pid" 2>/dev/null || true
  mountpoint -q "$work/ro" && umount "$work/ro" || true
  podman rm -f "${container:-none}" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

config=$(podman image inspect --format '{{.Config.User}} {{join .Config.Entrypoint ","}}' "$image")
[ "$config" = "65532:65532 /usr/local/bin/bunq-session-worker" ] || fail "user and entrypoint: $config"

container=$(podman create "$image")
mkdir -p "$work/rootfs" "$work/ro"
podman export "$container" | tar -x -C "$work/rootfs"
rootfs="$work/rootfs"
[ ! -e "$rootfs/bin/sh" ] && [ ! -e "$rootfs/usr/bin/sh" ] || fail "the image has a shell"
for bin in bunq-session-worker fake-bunq; do [ -x "$rootfs/usr/local/bin/$bin" ] || fail "$bin missing"; done
echo "image: $image, $(du -sh "$rootfs" | cut -f1), user 65532, no shell"

# Configuration comes from outside, as a Secret volume would bring it.
install -D -m 0444 tests/fixtures/client_key.pem "$rootfs/run/secrets/client_key.pem"
# Read-only from here on, where the kernel allows a read-only bind mount.
if mount --bind "$rootfs" "$work/ro" 2>/dev/null && mount -o remount,bind,ro "$work/ro" 2>/dev/null; then
  rootfs="$work/ro"
  echo "root filesystem: read-only"
else
  echo "root filesystem: read-write (no read-only bind mount here)"
fi
# Each binary runs as the image's user with nothing from this shell's environment.
chroot=$(command -v chroot)
version=$(env -i "$chroot" --userspec=65532:65532 "$rootfs" /usr/local/bin/bunq-session-worker --version 2>&1) || fail "--version: $version"
echo "$version" | grep -q "bunq-session-worker" || fail "--version printed: $version"
echo "version: $version"

env -i "$chroot" --userspec=65532:65532 "$rootfs" /usr/local/bin/fake-bunq --listen 127.0.0.1:0 >"$work/fake.out" 2>&1 &
fake_pid=$!
for _ in $(seq 50); do grep -q "listening on" "$work/fake.out" && break; sleep 0.1; done
base_url=$(sed -n 's/.*listening on \(http[^ ]*\).*/\1/p' "$work/fake.out" | head -1)
[ -n "$base_url" ] || fail "fake-bunq from the image did not start: $(cat "$work/fake.out")"

out=$(env -i AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f REDIS_URL=redis://127.0.0.1:6379/0 \
  BUNQ_BASE_URL="$base_url" BUNQ_ALLOW_INSECURE_HTTP=true \
  BUNQ_CLIENT_PRIVATE_KEY_FILE=/run/secrets/client_key.pem LOG_FORMAT=pretty \
  "$chroot" --userspec=65532:65532 "$rootfs" /usr/local/bin/bunq-session-worker check 2>&1) || fail "check from the image: $out"
for dependency in config rabbitmq redis bunq; do
  echo "$out" | grep -q "^$dependency .*ok" || fail "$dependency not ok: $out"
done
echo "$out"
echo "image test passed"
