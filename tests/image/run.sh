#!/usr/bin/env bash
# The images as a runtime would see them: built by `make image`, unpacked, and their
# binaries run from their own filesystems with chroot as the images' user (podman cannot
# run containers on this machine). Checks: user, entrypoint, OCI labels and layout; no
# shell; no fake-bunq in the worker's image; `--version`; fake-bunq from its own image
# serving; `check` from the worker's image reaching this machine's RabbitMQ and Redis and
# that fake-bunq, on a read-only root filesystem.
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! command -v podman >/dev/null; then
  echo "installing podman (Debian)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman >/dev/null || { echo "podman is needed and could not be installed" >&2; exit 1; }
fi
images=$(scripts/image.sh)
image=$(sed -n 1p <<<"$images")
fake_image=$(sed -n 2p <<<"$images")
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
work=$(mktemp -d)
fake_pid=""
cleanup() {
  [ -n "$fake_pid" ] && kill "$fake_pid" 2>/dev/null || true
  mountpoint -q "$work/ro" && umount "$work/ro" || true
  podman rm -f "${container:-none}" "${fake_container:-none}" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

config=$(podman image inspect --format '{{.Config.User}} {{join .Config.Entrypoint ","}}' "$image")
[ "$config" = "65532:65532 /usr/local/bin/bunq-session-worker" ] || fail "user and entrypoint: $config"

config=$(podman image inspect --format '{{.Config.User}} {{join .Config.Entrypoint ","}}' "$fake_image")
[ "$config" = "65532:65532 /usr/local/bin/fake-bunq" ] || fail "fake-bunq's user and entrypoint: $config"
for name in "$image" "$fake_image"; do
  labels=$(podman image inspect --format '{{json .Labels}}' "$name")
  for label in title description version revision created licenses; do
    grep -q "\"org.opencontainers.image.$label\":\"[^\"]" <<<"$labels" || fail "$name has no org.opencontainers.image.$label: $labels"
  done
  grep -q "\"org.opencontainers.image.version\":\"$version\"" <<<"$labels" || fail "$name's version label: $labels"
  grep -q '"org.opencontainers.image.licenses":"MIT OR Apache-2.0"' <<<"$labels" || fail "$name's licenses label: $labels"
done

container=$(podman create "$image")
fake_container=$(podman create "$fake_image")
mkdir -p "$work/rootfs" "$work/fake-rootfs" "$work/ro"
podman export "$container" | tar -x -C "$work/rootfs"
podman export "$fake_container" | tar -x -C "$work/fake-rootfs"
rootfs="$work/rootfs"
fake_rootfs="$work/fake-rootfs"
for fs in "$rootfs" "$fake_rootfs"; do
  [ ! -e "$fs/bin/sh" ] && [ ! -e "$fs/usr/bin/sh" ] || fail "an image has a shell"
done
[ -x "$rootfs/usr/local/bin/bunq-session-worker" ] || fail "bunq-session-worker missing"
[ ! -e "$rootfs/usr/local/bin/fake-bunq" ] || fail "the production image carries fake-bunq"
[ -x "$fake_rootfs/usr/local/bin/fake-bunq" ] || fail "fake-bunq missing from its image"
echo "image: $image, $(du -sh "$rootfs" | cut -f1), user 65532, no shell, no fake-bunq"
echo "image: $fake_image, $(du -sh "$fake_rootfs" | cut -f1)"

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

env -i "$chroot" --userspec=65532:65532 "$fake_rootfs" /usr/local/bin/fake-bunq --listen 127.0.0.1:0 >"$work/fake.out" 2>&1 &
fake_pid=$!
for _ in $(seq 50); do grep -q "listening on" "$work/fake.out" && break; sleep 0.1; done
base_url=$(sed -n 's/.*listening on \(http[^ ]*\).*/\1/p' "$work/fake.out" | head -1)
[ -n "$base_url" ] || fail "fake-bunq from its image did not start: $(cat "$work/fake.out")"

out=$(env -i AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f REDIS_URL=redis://127.0.0.1:6379/0 \
  BUNQ_BASE_URL="$base_url" BUNQ_ALLOW_INSECURE_HTTP=true \
  BUNQ_CLIENT_PRIVATE_KEY_FILE=/run/secrets/client_key.pem LOG_FORMAT=pretty \
  "$chroot" --userspec=65532:65532 "$rootfs" /usr/local/bin/bunq-session-worker check 2>&1) || fail "check from the image: $out"
for dependency in config rabbitmq redis bunq; do
  echo "$out" | grep -q "^$dependency .*ok" || fail "$dependency not ok: $out"
done
echo "$out"
echo "image test passed"
