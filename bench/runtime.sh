#!/usr/bin/env bash
# Container start latency: `berth runtime run` against `runc run`, on the same busybox
# bundle running /bin/true (the whole life of a container: namespaces, mounts,
# cgroup, capabilities, seccomp, exec, exit, cleanup). Run as root from the repository
# root: bench/runtime.sh
set -euo pipefail
cd "$(dirname "$0")/.."

WARMUP="${WARMUP:-5}"
MIN_RUNS="${MIN_RUNS:-50}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"

for tool in hyperfine runc busybox; do
  command -v "$tool" >/dev/null || { echo "bench/runtime.sh: $tool is missing (apt-get install -y hyperfine runc busybox-static)" >&2; exit 2; }
done

if [ -z "${BERTH:-}" ]; then
  cargo build --release -q -p berth
  BERTH="$CARGO_TARGET_DIR/release/berth"
fi

work="$(mktemp -d)"
cleanup() {
  runc --root "$work/runc" delete --force runc-bench >/dev/null 2>&1 || true
  rm -rf "$work"
  # berth's cgroup parents, if the runs left them empty (rmdir never removes a
  # non-empty cgroup, so a running berth is safe).
  rmdir /sys/fs/cgroup/*/berth /sys/fs/cgroup/berth 2>/dev/null || true
}
trap cleanup EXIT

# The bundle: a static busybox and /bin/true, berth's default spec.
bundle="$work/bundle"
mkdir -p "$bundle/rootfs/bin" "$bundle/rootfs"/{proc,sys,dev,tmp,etc}
cp "$(command -v busybox)" "$bundle/rootfs/bin/busybox"
ln -s busybox "$bundle/rootfs/bin/true"
"$BERTH" runtime spec --bundle "$bundle" -- /bin/true
# runc does not clamp rlimits to what the host allows (berth does): give both the
# host's hard limit so the same bundle is valid for both.
hard="$(ulimit -Hn)"
python3 - "$bundle/config.json" "$hard" <<'PY'
import json, sys
path, hard = sys.argv[1], int(sys.argv[2])
spec = json.load(open(path))
for r in spec["process"]["rlimits"]:
    if r["type"] == "RLIMIT_NOFILE":
        r["hard"] = r["soft"] = hard
json.dump(spec, open(path, "w"), indent=2)
PY

# A foreground run removes its container when it exits (runc its state, berth its
# cgroup), so each run may reuse the id; the prepare step removes whatever a failed
# run left behind, so a failure cannot turn into "container exists" for the next.
hyperfine -N --warmup "$WARMUP" --min-runs "$MIN_RUNS" \
  --export-json "$work/result.json" \
  --prepare "runc --root $work/runc delete --force runc-bench" \
  -n berth "$BERTH runtime run --bundle $bundle berth-bench" \
  -n runc "runc --root $work/runc run --bundle $bundle runc-bench"

python3 - "$work/result.json" <<'PY'
import json, sys
r = {b["command"]: b for b in json.load(open(sys.argv[1]))["results"]}
b, c = r["berth"]["mean"] * 1000, r["runc"]["mean"] * 1000
print(f"berth runtime run: {b:.1f} ms ± {r['berth']['stddev']*1000:.1f}")
print(f"runc run:          {c:.1f} ms ± {r['runc']['stddev']*1000:.1f}")
print(f"berth / runc:      {b / c:.2f} (goal: at most 0.50)")
PY
