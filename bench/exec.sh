#!/usr/bin/env bash
# exec latency: `berth runtime exec ID /bin/true` against `runc exec`, into a running
# container of the same busybox bundle (both sleeping). berth's exec goes through its
# exec helper (a sealed copy of berth-shim, see agent/src/shim/enter.rs); runc's
# through `runc init` re-executed from its own sealed copy. Run as root from the
# repository root: bench/exec.sh (BERTH=/path/to/berth skips the build; BERTH_OLD=
# another berth binary adds it as a third command, for before/after).
set -euo pipefail
cd "$(dirname "$0")/.."

WARMUP="${WARMUP:-5}"
MIN_RUNS="${MIN_RUNS:-50}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"

for tool in hyperfine runc busybox; do
  command -v "$tool" >/dev/null || { echo "bench/exec.sh: $tool is missing (apt-get install -y hyperfine runc busybox-static)" >&2; exit 2; }
done

if [ -z "${BERTH:-}" ]; then
  cargo build --release -q -p berth -p agent
  BERTH="$CARGO_TARGET_DIR/release/berth"
fi

work="$(mktemp -d)"
id="berth-exec-bench-$$"
cleanup() {
  runc --root "$work/runc" delete --force runc-exec-bench >/dev/null 2>&1 || true
  BERTH_STATE_DIR="$work/berth" "$BERTH" runtime stop -t 0 "$id" >/dev/null 2>&1 || true
  BERTH_STATE_DIR="$work/berth" "$BERTH" runtime rm "$id" >/dev/null 2>&1 || true
  if [ -n "${BERTH_OLD:-}" ]; then
    BERTH_STATE_DIR="$work/old" "$BERTH_OLD" runtime stop -t 0 "$id-old" >/dev/null 2>&1 || true
    BERTH_STATE_DIR="$work/old" "$BERTH_OLD" runtime rm "$id-old" >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
  rmdir /sys/fs/cgroup/*/berth /sys/fs/cgroup/berth 2>/dev/null || true
}
trap cleanup EXIT

bundle="$work/bundle"
mkdir -p "$bundle/rootfs/bin" "$bundle/rootfs"/{proc,sys,dev,tmp,etc}
cp "$(command -v busybox)" "$bundle/rootfs/bin/busybox"
for a in true sleep sh; do ln -s busybox "$bundle/rootfs/bin/$a"; done
"$BERTH" runtime spec --bundle "$bundle" -- /bin/sleep 100000
# runc does not clamp rlimits to what the host allows (berth does): both get the
# host's hard limit, so that one bundle is valid for both.
nofile_to_hard_limit() {
  python3 - "$1" "$(ulimit -Hn)" <<'PY'
import json, sys
path, hard = sys.argv[1], int(sys.argv[2])
spec = json.load(open(path))
for r in spec["process"]["rlimits"]:
    if r["type"] == "RLIMIT_NOFILE":
        r["hard"] = r["soft"] = hard
json.dump(spec, open(path, "w"), indent=2)
PY
}
nofile_to_hard_limit "$bundle/config.json"

BERTH_STATE_DIR="$work/berth" "$BERTH" runtime run -d --bundle "$bundle" "$id" >/dev/null
runc --root "$work/runc" run -d --bundle "$bundle" runc-exec-bench >/dev/null 2>&1 </dev/null
commands=(-n berth "env BERTH_STATE_DIR=$work/berth $BERTH runtime exec $id /bin/true"
          -n runc "runc --root $work/runc exec runc-exec-bench /bin/true")
if [ -n "${BERTH_OLD:-}" ]; then
  # The older berth gets a bundle with its own default spec (an older one refuses the
  # cgroup mount the newer spec has on v1 hosts), the same rootfs and limits.
  old_bundle="$work/bundle-old"
  mkdir -p "$old_bundle" && cp -a "$bundle/rootfs" "$old_bundle/"
  "$BERTH_OLD" runtime spec --bundle "$old_bundle" -- /bin/sleep 100000
  nofile_to_hard_limit "$old_bundle/config.json"
  # A berth from before the OCI command line detaches with `create`, a newer one with
  # `run -d` (`create` now leaves the program waiting for `start`).
  BERTH_STATE_DIR="$work/old" "$BERTH_OLD" runtime run -d --bundle "$old_bundle" "$id-old" >/dev/null 2>&1 ||
    BERTH_STATE_DIR="$work/old" "$BERTH_OLD" runtime create --bundle "$old_bundle" "$id-old" >/dev/null
  commands+=(-n berth-old "env BERTH_STATE_DIR=$work/old $BERTH_OLD runtime exec $id-old /bin/true")
fi

hyperfine -N --warmup "$WARMUP" --min-runs "$MIN_RUNS" --export-json "$work/result.json" "${commands[@]}"

python3 - "$work/result.json" <<'PY'
import json, sys
r = {b["command"]: b for b in json.load(open(sys.argv[1]))["results"]}
ms = lambda k: r[k]["mean"] * 1000
for k in r:
    print(f"{k:10} exec: {ms(k):.1f} ms ± {r[k]['stddev']*1000:.1f}")
print(f"berth / runc:     {ms('berth') / ms('runc'):.2f}")
if "berth-old" in r:
    print(f"berth / berth-old: {ms('berth') / ms('berth-old'):.2f}")
PY
