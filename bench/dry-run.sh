#!/usr/bin/env bash
# `berth up --dry-run` of a running stack of N services (N busybox containers), with one
# service changed, and with none: how long the plan takes, end to end (the CLI loads
# the file, asks the daemon for the plan, checks the image store, prints).
# Issue 14's goal: under 100 ms for 1,000 services with one change.
#
# Run as root from the repository root: bench/dry-run.sh   (N=1000 RUNS=10 by default;
# BERTH=path skips the build). Everything it starts is taken down at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

N="${N:-1000}"
RUNS="${RUNS:-10}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
for tool in hyperfine busybox python3; do
  command -v "$tool" >/dev/null || {
    echo "bench/dry-run.sh: $tool is missing (apt-get install -y hyperfine busybox-static python3)" >&2
    exit 2
  }
done
if [ -z "${BERTH:-}" ]; then
  cargo build --release -q -p berth -p agent --bin berth --bin berth-shim
  BERTH="$CARGO_TARGET_DIR/release/berth"
fi
BERTH="$(realpath "$BERTH")"

work="$(mktemp -d)"
state="$work/state"
# The containers' cgroups, this run's own (removed at the end).
export BERTH_CGROUP_PARENT="berth-drybench-$$"
cleanup() {
  set +e
  (cd "$work/s" 2>/dev/null && "$BERTH" --state-dir "$state" -p drybench down -t 1 >/dev/null 2>&1)
  pkill -f -- "--state-dir $state daemon" 2>/dev/null
  sleep 0.5
  # Whatever down left: kill what runs in this run's cgroups, then remove them.
  for procs in /sys/fs/cgroup/*/"$BERTH_CGROUP_PARENT"/*/cgroup.procs; do
    [ -f "$procs" ] && xargs -r kill -9 <"$procs" 2>/dev/null
  done
  pkill -9 -f -- "$state" 2>/dev/null
  sleep 0.5
  grep -o " $state[^ ]*" /proc/self/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null
  find /sys/fs/cgroup/*/"$BERTH_CGROUP_PARENT" -depth -type d -exec rmdir {} + 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/rootfs/bin" "$work/rootfs/etc" "$work/s"
cp "$(command -v busybox)" "$work/rootfs/bin/busybox"
for c in sh sleep; do ln -s busybox "$work/rootfs/bin/$c"; done
echo 'root:x:0:0:root:/root:/bin/sh' > "$work/rootfs/etc/passwd"
tar -C "$work/rootfs" -cf "$work/busybox.tar" .
"$BERTH" --state-dir "$state" image import "$work/busybox.tar" benchbox:local >/dev/null

gen() { # gen MODE: the stack, with service svc0's environment MODE=$1
  python3 - "$N" "$1" <<'PY'
import sys
n, mode = int(sys.argv[1]), sys.argv[2]
print("services:")
for i in range(n):
    print(f"  svc{i}:")
    print("    image: benchbox:local")
    print("""    command: ["sh", "-c", "trap 'exit 0' TERM; sleep 100000 & wait"]""")
    print(f"    environment: {{MODE: {mode if i == 0 else 'a'}}}")
# A /24 holds 254 addresses: the default network gets room for every container.
print("networks:")
print("  default:")
print("    ipam: {config: [{subnet: 10.91.0.0/20}]}")
PY
}
gen a > "$work/s/compose.yaml"
"$BERTH" --state-dir "$state" daemon >"$work/daemon.log" 2>&1 &
for _ in $(seq 100); do "$BERTH" --state-dir "$state" ls >/dev/null 2>&1 && break; sleep 0.1; done
start=$(date +%s.%N)
(cd "$work/s" && "$BERTH" --state-dir "$state" -p drybench up -d >"$work/up.log" 2>&1) || {
  tail -5 "$work/up.log" >&2
  exit 1
}
echo "up -d of $N services: $(python3 -c "print(f'{$(date +%s.%N) - $start:.1f}')") s"

# Let the daemon settle (the first health and status passes over 1,000 tasks).
sleep 5
b="cd $work/s && $BERTH --state-dir $state -p drybench"
hyperfine --runs "$RUNS" -N --warmup 2 -n "config -q (loading the file alone), $N services" \
  "sh -c '$b config -q'"
hyperfine --runs "$RUNS" -N --warmup 2 --export-json "$work/same.json" -n "up --dry-run, $N services, none changed" \
  "sh -c '$b up --dry-run >/dev/null'"
gen b > "$work/s/compose.yaml"
hyperfine --runs "$RUNS" -N --warmup 2 --export-json "$work/one.json" -n "up --dry-run, $N services, one changed" \
  "sh -c '$b up --dry-run >/dev/null'"
(cd "$work/s" && "$BERTH" --state-dir "$state" -p drybench up --dry-run | grep -v '^  unchanged')
