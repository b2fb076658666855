#!/usr/bin/env bash
# Pull throughput: `berth image pull` vs `skopeo copy` of the same multi-layer image from
# a local registry (Debian's docker-registry on 127.0.0.1), side by side with hyperfine.
# Each run starts from an empty store/destination, so every layer is downloaded,
# verified and (for berth) unpacked. Prints both means, MB/s and the ratio.
# Then two `berth image pull` processes of the same image at once into one store: the
# registry's access log counts how often each layer blob was served (once each, thanks
# to the per-blob lock), and the wall time is printed next to a single pull's.
# Run as root from the repository root: bench/pull.sh   (BERTH=/path skips the build)
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in docker-registry skopeo hyperfine busybox python3; do
  command -v "$tool" >/dev/null || { echo "bench/pull.sh: $tool is missing (apt-get install -y docker-registry skopeo hyperfine busybox-static)" >&2; exit 2; }
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

# The image: busybox plus LAYERS layers of random data (so compression cannot help),
# written as an OCI layout by a few lines of Python (umoci 0.4.7's `insert` writes
# truncated layers, which berth, GNU tar and Python's tarfile all rightly refuse).
layout="$work/layout"
python3 - "$layout" "$(command -v busybox)" "$LAYERS" "$LAYER_MB" <<'PY'
import gzip, hashlib, io, json, os, sys, tarfile
layout, busybox, layers, mb = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
os.makedirs(f"{layout}/blobs/sha256")
def blob(data):
    h = hashlib.sha256(data).hexdigest()
    open(f"{layout}/blobs/sha256/{h}", "wb").write(data)
    return f"sha256:{h}", len(data)
def layer(name, data, mode):
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as t:
        info = tarfile.TarInfo(name); info.size = len(data); info.mode = mode
        t.addfile(info, io.BytesIO(data))
    diff_id = "sha256:" + hashlib.sha256(raw.getvalue()).hexdigest()
    digest, size = blob(gzip.compress(raw.getvalue(), compresslevel=1))
    return diff_id, {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest, "size": size}
parts = [layer("bin/busybox", open(busybox, "rb").read(), 0o755)]
parts += [layer(f"data/rand{i}.bin", os.urandom(mb << 20), 0o644) for i in range(layers)]
config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/busybox", "true"]},
                     "rootfs": {"type": "layers", "diff_ids": [d for d, _ in parts]}}).encode()
cdigest, csize = blob(config)
manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cdigest, "size": csize},
                       "layers": [l for _, l in parts]}).encode()
mdigest, msize = blob(manifest)
json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
           "digest": mdigest, "size": msize, "annotations": {"org.opencontainers.image.ref.name": "bench"}}]},
          open(f"{layout}/index.json", "w"))
open(f"{layout}/oci-layout", "w").write('{"imageLayoutVersion":"1.0.0"}')
PY

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
# Its access log (stdout) is what the concurrent-pull part counts blob GETs in.
docker-registry serve "$work/registry.yml" >>"$work/registry.log" 2>&1 &
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

# Two processes pulling the same image into one empty store at once; the registry's
# access log says how many times each blob was served (200s only).
blob_gets() { grep -c '"GET /v2/bench/image/blobs/sha256:[0-9a-f]* HTTP/1.1" 200' "$work/registry.log" || true; }
rm -rf "$work/berth-state"
: >"$work/registry.log"
start=$(date +%s%N)
"$BERTH" --state-dir "$work/berth-state" image pull -q "$ref" >/dev/null &
first=$!
"$BERTH" --state-dir "$work/berth-state" image pull -q "$ref" >/dev/null
wait "$first"
end=$(date +%s%N)
concurrent_gets="$(blob_gets)"
rm -rf "$work/berth-state"
: >"$work/registry.log"
single_start=$(date +%s%N)
"$BERTH" --state-dir "$work/berth-state" image pull -q "$ref" >/dev/null
single_end=$(date +%s%N)
echo "blob GETs: two concurrent pulls $concurrent_gets, one pull $(blob_gets) (config + $((LAYERS + 1)) layers)"
echo "wall time: two concurrent pulls into one store $(( (end - start) / 1000000 )) ms, one pull $(( (single_end - single_start) / 1000000 )) ms"
