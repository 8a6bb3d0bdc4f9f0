#!/usr/bin/env bash
# Assembles a minimal root filesystem for release binaries: the binaries, the shared
# libraries `ldd` says they load (glibc, libgcc), the CA bundle for TLS, and a passwd entry
# for the non-root user 65532 (as distroless's `nonroot`). No shell.
# Usage: scripts/image-rootfs.sh TARGET_DIR ROOTFS_DIR [BINARY...]  (default: bunq-session-worker)
set -euo pipefail
target=${1:?target dir}
rootfs=${2:?rootfs dir}
shift 2
binaries=("${@:-bunq-session-worker}")
rm -rf "$rootfs"
mkdir -p "$rootfs/usr/local/bin" "$rootfs/etc/ssl/certs" "$rootfs/tmp"
chmod 1777 "$rootfs/tmp"
for bin in "${binaries[@]}"; do
  install -m 0755 "$target/release/$bin" "$rootfs/usr/local/bin/$bin"
  ldd "$target/release/$bin" | awk '/=> \// {print $3} /^[ \t]*\/lib/ {print $1}' | while read -r lib; do
    mkdir -p "$rootfs$(dirname "$lib")"
    cp -L "$lib" "$rootfs$lib"
  done
done
cp -L /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$rootfs/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' >"$rootfs/etc/group"
