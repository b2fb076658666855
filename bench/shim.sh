#!/usr/bin/env bash
# Memory of the per-container shim: creates 10 detached containers running `sleep`,
# prints the RSS (and PSS) of each shim (the container's parent: there is no other
# berth process per container; the script checks that the shim's only child is the
# container), for the small `berth-shim` program and for `berth runtime shim` (the
# berth binary re-executed), then stops and deletes them. Run as root from the
# repository root: bench/shim.sh
set -euo pipefail
cd "$(dirname "$0")/.."

N="${N:-10}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
command -v busybox >/dev/null || { echo "bench/shim.sh: busybox is missing (apt-get install -y busybox-static)" >&2; exit 2; }

if [ -z "${SKIP_BUILD:-}" ]; then
  cargo build --release -q -p berth -p agent --bin berth --bin berth-shim
fi
BERTH="$CARGO_TARGET_DIR/release/berth"
SHIM="$CARGO_TARGET_DIR/release/berth-shim"

work="$(mktemp -d)"
ids=()
cleanup() {
  for id in "${ids[@]}"; do
    BERTH_STATE_DIR="$work/state" "$BERTH" runtime kill "$id" KILL >/dev/null 2>&1 || true
  done
  sleep 0.5
  for id in "${ids[@]}"; do
    rmdir "/sys/fs/cgroup/$id" /sys/fs/cgroup/*/"$id" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

bundle="$work/bundle"
mkdir -p "$bundle/rootfs/bin" "$bundle/rootfs"/{proc,sys,dev,tmp,etc}
cp "$(command -v busybox)" "$bundle/rootfs/bin/busybox"
ln -s busybox "$bundle/rootfs/bin/sleep"
"$BERTH" runtime spec --bundle "$bundle" -- /bin/sleep 100000

kb() { awk -v k="$2" '$1 == k":" { print $2 }' "/proc/$1/$3"; }

measure() { # label, BERTH_SHIM value
  local label="$1" shim="$2" i id state pid runner
  echo "== $label ($(du -h "${shim/builtin/$BERTH}" | cut -f1) binary)"
  for i in $(seq 1 "$N"); do
    id="shimbench-$label-$i-$$"
    ids+=("$id")
    # Each container its own top-level cgroup, removed on exit.
    python3 - "$bundle/config.json" "/$id" <<'PY'
import json, sys
spec = json.load(open(sys.argv[1])); spec["linux"]["cgroupsPath"] = sys.argv[2]
json.dump(spec, open(sys.argv[1], "w"))
PY
    state="$(BERTH_STATE_DIR="$work/state" BERTH_SHIM="$shim" "$BERTH" runtime run -d --bundle "$bundle" "$id")"
    pid="$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["shim_pid"])' "$state")"
    ids_pids+=("$pid")
  done
  sleep 1
  local total=0 totalpss=0 n=0 children pss
  printf "%-8s %8s %10s %10s %s\n" container shim-pid shim-RSS shim-PSS "shim's children"
  for pid in "${ids_pids[@]}"; do
    children="$(cat "/proc/$pid/task/$pid/children")"
    local rss; rss="$(kb "$pid" VmRSS status)"
    pss="$(kb "$pid" Pss smaps_rollup)"
    printf '%-8s %8s %7s kB %7s kB %s\n' "#$((n + 1))" "$pid" "$rss" "$pss" \
      "$children($(tr '\0' ' ' < "/proc/${children%% *}/cmdline"))"
    total=$((total + rss)); totalpss=$((totalpss + pss)); n=$((n + 1))
  done
  echo "mean shim PSS: $((totalpss / n)) kB"
  echo "mean shim RSS: $((total / n)) kB"
  ids_pids=()
}

ids_pids=()
measure berth-shim "$SHIM"
measure berth-builtin builtin
