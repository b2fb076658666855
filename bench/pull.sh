#!/usr/bin/env bash
# Pull throughput: `berth image pull` vs `skopeo copy` of the same multi-layer image from
# a local registry (Debian's docker-registry on 127.0.0.1), side by side with hyperfine.
# Each run starts from an empty store/destination, so every layer is downloaded,
# verified and (for berth) unpacked. Prints both means, MB/s and the ratio.
# Run as root from the repository root: bench/pull.sh   (BERTH=/path skips the build)
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in docker-registry skopeo umoci hyperfine busybox; do
  command -v "$tool" >/dev/null || { echo "bench/pull.sh: $tool is missing (apt-get install -y docker-registry skopeo umoci hyperfine busybox-static)" >&2; exit 2; }
done
if [ -z "${BERTH:-}" ]; then
  cargo build --release -q -p berth
  BERTH="${CARGO_TARGET_DIR:-target}/release/berth"
fi
LAYERS="${LAYERS:-4}"        # random-data layers on top of busybox
LAYER_MB="${LAYER_MB:-32}"   # incompressible MB per layer

work="$(mktemp -d)"
registry_pid=""
cleanup() {
  [ -n "$registry_pid" ] && kill "$registry_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# The image: busybox plus LAYERS layers of random data (so compression cannot help).
layout="$work/layout"
umoci init --layout "$layout" >/dev/null
umoci new --image "$layout:bench" >/dev/null
mkdir -p "$work/bb/bin"
cp "$(command -v busybox)" "$work/bb/bin/busybox"
umoci insert --image "$layout:bench" "$work/bb/bin" /bin >/dev/null
for i in $(seq 1 "$LAYERS"); do
  head -c "$((LAYER_MB * 1024 * 1024))" /dev/urandom > "$work/rand$i.bin"
  umoci insert --image "$layout:bench" "$work/rand$i.bin" "/data/rand$i.bin" >/dev/null
  rm "$work/rand$i.bin"
done

# A registry on a free loopback port.
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
cat > "$work/registry.yml" <<YML
version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: $work/registry
http:
  addr: 127.0.0.1:$port
YML
docker-registry serve "$work/registry.yml" >/dev/null 2>&1 &
registry_pid=$!
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done
ref="127.0.0.1:$port/bench/image:1"
skopeo copy --quiet --dest-tls-verify=false "oci:$layout:bench" "docker://$ref"
bytes="$(du -sb "$work/registry/docker/registry/v2/blobs" | cut -f1)"

hyperfine -N --warmup 1 --min-runs "${MIN_RUNS:-5}" --export-json "$work/result.json" \
  --prepare "rm -rf $work/berth-state $work/skopeo-dest" \
  -n berth "$BERTH --state-dir $work/berth-state image pull -q $ref" \
  -n skopeo "skopeo copy --quiet --src-tls-verify=false docker://$ref oci:$work/skopeo-dest:bench"

python3 - "$work/result.json" "$bytes" <<'PY'
import json, sys
r = {b["command"]: b for b in json.load(open(sys.argv[1]))["results"]}
mb = int(sys.argv[2]) / 1e6
b, s = r["berth"]["mean"], r["skopeo"]["mean"]
print(f"image: {mb:.1f} MB in the registry")
print(f"berth image pull: {b*1000:.0f} ms ({mb/b:.0f} MB/s, download + verify + unpack)")
print(f"skopeo copy:      {s*1000:.0f} ms ({mb/s:.0f} MB/s, download + verify)")
print(f"berth / skopeo:   {b/s:.2f}")
PY
