#!/usr/bin/env bash
# berth's quickstart, on a fresh Debian/Ubuntu machine, as root:
#   1. installs what berth needs at run time (busybox-static for the example image,
#      nftables for networking) if it is missing;
#   2. builds berth;
#   3. makes the example image from busybox-static (no registry needed);
#   4. brings the stack up (berth up -d --wait) and fetches the published page twice.
# Take it down afterwards with: berth -f examples/quickstart/compose.yaml down -v
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"

need=()
command -v busybox >/dev/null || need+=(busybox-static)
command -v nft >/dev/null || need+=(nftables)
if [ ${#need[@]} -gt 0 ]; then
  echo "==> installing ${need[*]}"
  apt-get update -qq && apt-get install -y -qq "${need[@]}" >/dev/null
fi

echo "==> building berth"
(cd "$root" && cargo build --release -q -p berth -p agent --bin berth --bin berth-shim)
berth="${CARGO_TARGET_DIR:-$root/target}/release/berth"

echo "==> making the image berth-examples/busybox from busybox-static"
"$here/../make-image.sh" "$berth"

echo "==> berth up -d --wait"
"$berth" -f "$here/compose.yaml" up -d --wait
"$berth" -f "$here/compose.yaml" ps

echo "==> curl http://127.0.0.1:8080/ (twice)"
for _ in 1 2; do
  wget -q -O- http://127.0.0.1:8080/ || curl -fsS http://127.0.0.1:8080/
done
echo
echo "It works. Try: $berth -f $here/compose.yaml logs"
echo "Take it down: $berth -f $here/compose.yaml down -v"
