#!/usr/bin/env bash
# A rolling update of 10 replicas, parallelism 2, no delay: its total time beside the
# sum of its parts, from `berth events`. The parts are what the update has to wait for
# in any updater: each batch's old tasks stopping (stop-first), its new tasks starting
# and turning healthy, and `monitor`. What is left is the updater's own overhead: the
# time between one batch being done and the next one starting, and from `up` to the
# first batch and from the last to "completed".
#
# Run as root from the repository root: bench/rolling.sh   (REPLICAS=10 PAR=2
# MONITOR_MS=1000 ORDER=stop-first by default; BERTH=path skips the build). Everything
# it starts is taken down at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

REPLICAS="${REPLICAS:-10}"
PAR="${PAR:-2}"
MONITOR_MS="${MONITOR_MS:-1000}"
ORDER="${ORDER:-stop-first}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
for tool in busybox python3; do
  command -v "$tool" >/dev/null || {
    echo "bench/rolling.sh: $tool is missing (apt-get install -y busybox-static python3)" >&2
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
export BERTH_CGROUP_PARENT="berth-rollbench-$$"
cleanup() {
  set +e
  [ -n "${events_pid:-}" ] && kill "$events_pid" 2>/dev/null
  (cd "$work/s" 2>/dev/null && "$BERTH" --state-dir "$state" -p rollbench down -t 1 >/dev/null 2>&1)
  pkill -f -- "--state-dir $state daemon" 2>/dev/null
  sleep 0.5
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
for c in sh sleep true; do ln -s busybox "$work/rootfs/bin/$c"; done
echo 'root:x:0:0:root:/root:/bin/sh' > "$work/rootfs/etc/passwd"
tar -C "$work/rootfs" -cf "$work/busybox.tar" .
"$BERTH" --state-dir "$state" image import "$work/busybox.tar" benchbox:local >/dev/null

gen() { # gen VERSION
  cat <<EOF
name: rollbench
services:
  web:
    image: benchbox:local
    command: ["sh", "-c", "trap 'exit 0' TERM; sleep 100000 & wait"]
    environment: {VERSION: "$1"}
    healthcheck:
      test: ["CMD", "true"]
      interval: 1s
      start_period: 10s
      start_interval: 100ms
    deploy:
      replicas: $REPLICAS
      update_config: {parallelism: $PAR, monitor: ${MONITOR_MS}ms, order: $ORDER}
EOF
}
gen 1 > "$work/s/compose.yaml"
"$BERTH" --state-dir "$state" daemon >"$work/daemon.log" 2>&1 &
for _ in $(seq 100); do "$BERTH" --state-dir "$state" ls >/dev/null 2>&1 && break; sleep 0.1; done
(cd "$work/s" && "$BERTH" --state-dir "$state" up -d --wait >/dev/null 2>&1)
sleep 1

(cd "$work/s" && "$BERTH" --state-dir "$state" events --json >"$work/events.json" 2>/dev/null) &
events_pid=$!
sleep 0.5
gen 2 > "$work/s/compose.yaml"
start_ms=$(python3 -c 'import time; print(int(time.time() * 1000))')
(cd "$work/s" && "$BERTH" --state-dir "$state" up -d --wait --wait-timeout 300 >/dev/null 2>"$work/up.log") || {
  cat "$work/up.log" >&2
  exit 1
}
end_ms=$(python3 -c 'import time; print(int(time.time() * 1000))')
sleep 0.5
kill "$events_pid" 2>/dev/null || true
events_pid=

python3 - "$work/events.json" "$start_ms" "$end_ms" "$MONITOR_MS" "$PAR" "$REPLICAS" "$ORDER" <<'PY'
import json, sys
path, start, end, monitor, par, replicas, order = sys.argv[1:]
start, end, monitor, par, replicas = int(start), int(end), int(monitor), int(par), int(replicas)
ev = [json.loads(l) for l in open(path) if l.strip()]
creates = sorted((e["time"], e["id"]) for e in ev if e["action"] == "create")
healthy = {e["id"]: e["time"] for e in ev if e["action"] == "health_status: healthy"}
# Old tasks' ends, by slot (stop-first: a batch begins when its old tasks are told to go).
ends = {}
for e in ev:
    if e["action"] in ("die", "destroy") and e["id"] not in healthy:
        slot = e["container"].rsplit("-", 1)[1]
        ends.setdefault(slot, e["time"])
completed = [e["time"] for e in ev if e["action"] == "update" and e["update"].startswith("update completed")]
assert len(creates) == replicas, f"{len(creates)} tasks created, {replicas} expected"
batches = [creates[i:i + par] for i in range(0, len(creates), par)]
parts = 0
rows = []
for b in batches:
    slots = [i.rsplit("-", 1)[1].split(".")[0] for _, i in b]
    began = min([ends.get(s, b[0][0]) for s in slots] + [b[0][0]]) if order == "stop-first" else b[0][0]
    ready = max(healthy[i] for _, i in b)
    part = ready - began + monitor
    rows.append((began, ready, part))
    parts += part
total = (completed[0] if completed else end) - start
overhead = total - parts
print(f"rolling update of {replicas} replicas, parallelism {par}, {order}, monitor {monitor} ms:")
for n, (began, ready, part) in enumerate(rows, 1):
    print(f"  batch {n}: began +{began - start} ms, healthy +{ready - start} ms, part {part} ms (stop/start/health {part - monitor} + monitor {monitor})")
print(f"  total (up to 'update completed'): {total} ms; sum of parts: {parts} ms")
print(f"  updater overhead: {overhead} ms ({overhead / len(batches):.0f} ms per batch, {100 * overhead / total:.1f}% of the total)")
print(f"  up --wait returned after {end - start} ms")
PY
