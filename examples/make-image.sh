#!/usr/bin/env bash
# Makes the image the runnable examples use, berth-examples/busybox:latest, from
# Debian's busybox-static (every applet linked), and imports it into berth's store.
# Usage: examples/make-image.sh [BERTH_BINARY]   (BERTH_STATE_DIR picks the store)
set -euo pipefail
berth="${1:-berth}"
busybox="$(command -v busybox || true)"
# The image has no libc: only a statically linked busybox works in it.
linkage="$( [ -n "$busybox" ] && LC_ALL=C ldd "$busybox" 2>&1 || true)"
if [ -z "$busybox" ] || [[ "$linkage" != *"not a dynamic"* ]]; then
  echo "examples/make-image.sh: a static busybox is needed: apt-get install -y busybox-static" >&2
  exit 2
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
root="$work/rootfs"
mkdir -p "$root/bin" "$root/etc" "$root/tmp" "$root/www" "$root/home/app"
cp "$busybox" "$root/bin/busybox"
for applet in $("$root/bin/busybox" --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$root/etc/passwd"
printf 'root:x:0:\napp:x:1000:\nnogroup:x:65534:\n' >"$root/etc/group"
tar -C "$root" -cf "$work/busybox.tar" .
"$berth" image import "$work/busybox.tar" berth-examples/busybox:latest >/dev/null
echo "made berth-examples/busybox:latest"
