#!/usr/bin/env bash
# Git-ops latency and idle cost on one host, with a real daemon and real containers.
#
# 1. Latency: a local source of STACKS stacks (busybox, one service each); CHANGES
#    times, one stack's file is saved (written to a temporary file and renamed, as an
#    editor does), and the time from the save to its new container running (`start`
#    in `berth events`) is taken. p50 and p99. The anchors poll: doco-cd every 180 s,
#    Argo CD about 3 min, Portainer 5 min, swarm-cd 2 min, Komodo 1 h.
#    The same for a remote (a bare repository on this host): from `git push` with its
#    signed webhook to the new container running.
# 2. Idle cost: the daemon's CPU (utime + stime from /proc) and RSS over IDLE_S
#    seconds while it watches those STACKS stacks and nothing changes, beside the same
#    daemon running the same stacks deployed by `berth up` (no source): what watching
#    costs.
#
# Run as root from the repository root: bench/gitops.sh   (STACKS=100 CHANGES=100
# IDLE_S=30 by default; BERTH=path skips the build). Everything it starts is removed.
set -euo pipefail
cd "$(dirname "$0")/.."

STACKS="${STACKS:-100}"
CHANGES="${CHANGES:-100}"
IDLE_S="${IDLE_S:-30}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
for tool in busybox python3 curl git openssl; do
  command -v "$tool" >/dev/null || {
    echo "bench/gitops.sh: $tool is missing (apt-get install -y busybox-static python3 curl git openssl)" >&2
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
export BERTH_CGROUP_PARENT="berth-gitopsbench-$$"
# Network objects of its own, removed at the end whatever happened.
export BERTH_NET_PREFIX="bg$(printf %04x $(($$ % 65536)))"
b() { "$BERTH" --state-dir "$state" "$@"; }
cleanup() {
  set +e
  [ -n "${events_pid:-}" ] && kill "$events_pid" 2>/dev/null
  b gitops rm src --prune >/dev/null 2>&1
  b gitops rm remote --prune >/dev/null 2>&1
  for i in $(seq "$STACKS"); do b -p "hand$i" down -t 1 >/dev/null 2>&1; done
  pkill -f -- "--state-dir $state daemon" 2>/dev/null
  sleep 0.5
  for procs in /sys/fs/cgroup/*/"$BERTH_CGROUP_PARENT"/*/cgroup.procs; do
    [ -f "$procs" ] && xargs -r kill -9 <"$procs" 2>/dev/null
  done
  pkill -9 -f -- "$state" 2>/dev/null
  sleep 0.5
  grep -o " $state[^ ]*" /proc/self/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null
  find /sys/fs/cgroup/*/"$BERTH_CGROUP_PARENT" -depth -type d -exec rmdir {} + 2>/dev/null
  for l in $(ip -o link | awk -F': ' '{print $2}' | cut -d@ -f1 | grep "^$BERTH_NET_PREFIX"); do
    ip link del "$l" 2>/dev/null
  done
  for t in $(nft list tables 2>/dev/null | awk '{print $2 " " $3}' | grep " $BERTH_NET_PREFIX" | tr ' ' ':'); do
    nft delete table "${t%%:*}" "${t#*:}" 2>/dev/null
  done
  rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/rootfs/bin" "$work/rootfs/etc" "$work/src" "$work/hand"
cp "$(command -v busybox)" "$work/rootfs/bin/busybox"
for c in sh sleep true; do ln -s busybox "$work/rootfs/bin/$c"; done
echo 'root:x:0:0:root:/root:/bin/sh' > "$work/rootfs/etc/passwd"
tar -C "$work/rootfs" -cf "$work/busybox.tar" .
b image import "$work/busybox.tar" benchbox:local >/dev/null

gen() { # gen VERSION
  cat <<EOF
services:
  web:
    image: benchbox:local
    # Ends at once on SIGTERM (sleep as PID 1 would wait out the grace period): the
    # time measured is berth's, not a container's shutdown.
    command: ["sh", "-c", "trap 'exit 0' TERM; sleep 100000 & wait"]
    stop_grace_period: 1s
    environment: {VERSION: "$1"}
EOF
}
save() { # save FILE TEXT...: as an editor saves
  printf '%s' "$2" > "$1.tmp~" && mv "$1.tmp~" "$1"
}
now_ms() { python3 -c 'import time; print(int(time.time() * 1000))'; }
daemon_pid() { pgrep -f -- "--state-dir $state daemon" | head -1; }
# CPU seconds (utime + stime) and RSS (kB) of the daemon.
usage() {
  local pid; pid="$(daemon_pid)"
  python3 - "$pid" <<'PY'
import os, sys
pid = sys.argv[1]
f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
tick = os.sysconf("SC_CLK_TCK")
cpu = (int(f[11]) + int(f[12])) / tick
rss = [l for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS")][0].split()[1]
print(f"{cpu} {rss}")
PY
}
idle() { # idle LABEL: the daemon's CPU and RSS over IDLE_S seconds
  local a b2
  a=($(usage)); sleep "$IDLE_S"; b2=($(usage))
  python3 -c "import sys; c=(float(sys.argv[2])-float(sys.argv[1]))/float(sys.argv[3]); print(f'  {sys.argv[5]}: {100*c:.2f}% of a core, RSS {int(sys.argv[4])//1024} MiB')" \
    "${a[0]}" "${b2[0]}" "$IDLE_S" "${b2[1]}" "$1"
}

hook_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
BERTH_GITOPS_WEBHOOK_LISTEN="127.0.0.1:$hook_port" b daemon >"$work/daemon.log" 2>&1 &
for _ in $(seq 100); do b ls >/dev/null 2>&1 && break; sleep 0.1; done

# The baseline: the same stacks by hand.
for i in $(seq "$STACKS"); do gen 0 > "$work/hand/$i.yaml"; done
pids=()
for i in $(seq "$STACKS"); do b -f "$work/hand/$i.yaml" -p "hand$i" up -d >/dev/null 2>&1 & pids+=($!); done
wait "${pids[@]}"
sleep 10
echo "idle cost, $STACKS stacks of one container:"
idle "deployed by berth up (no source)"
pids=()
for i in $(seq "$STACKS"); do b -p "hand$i" down -t 1 >/dev/null 2>&1 & pids+=($!); done
wait "${pids[@]}"

for i in $(seq "$STACKS"); do gen 0 > "$work/src/s$i.yaml"; done
b gitops add "$work/src" --name src >/dev/null
sleep 10
idle "kept by a git-ops source (watched)"

# Every stack's events, from the API (`berth events` shows one project's).
(curl -sN --unix-socket "$state/berth.sock" http://berth/v1/events >"$work/events.json" 2>/dev/null) &
events_pid=$!
sleep 0.5
: > "$work/saves"
starts() { grep -c "\"action\":\"start\",\"stack\":\"$1\"" "$work/events.json" || true; }
# wait_start STACK BEFORE: until STACK has more starts than BEFORE (10 s at most): the
# next change once this one runs, one at a time, as a user makes them.
wait_start() {
  for _ in $(seq 500); do
    [ "$(starts "$1")" -gt "$2" ] && return
    sleep 0.02
  done
}
for n in $(seq "$CHANGES"); do
  i=$(( (n % STACKS) + 1 ))
  before=$(starts "s$i")
  t=$(now_ms)
  save "$work/src/s$i.yaml" "$(gen "$n")"
  echo "$t s$i" >> "$work/saves"
  wait_start "s$i" "$before"
done

report() { # report SAVES LABEL: latency from each line's time to its stack's next start
  python3 - "$work/events.json" "$1" "$2" <<'PY'
import json, sys
events = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
saves = [l.split() for l in open(sys.argv[2]) if l.strip()]
starts = [(e["time"], e["stack"]) for e in events if e["action"] == "start"]
lat = []
for t, stack in saves:
    t = int(t)
    after = [s for s, st in starts if st == stack and s >= t]
    if after:
        lat.append(min(after) - t)
lat.sort()
def pct(p):
    return lat[min(len(lat) - 1, int(round(p / 100 * (len(lat) - 1))))]
print(f"{sys.argv[3]}, {len(lat)} of {len(saves)} changes:")
print(f"  p50 {pct(50)} ms, p99 {pct(99)} ms, max {lat[-1]} ms")
PY
}
sleep 0.5
kill "$events_pid" 2>/dev/null || true
events_pid=
report "$work/saves" "save -> new container running, a local source of $STACKS stacks"

# A remote: a bare repository on this host (file://), REMOTE_STACKS stacks; each change
# is committed, and timed from the push (with its signed webhook) to the new container.
REMOTE_STACKS="${REMOTE_STACKS:-10}"
git init -q --bare -b main "$work/repo.git"
git clone -q "$work/repo.git" "$work/work" 2>/dev/null
g() { git -C "$work/work" -c user.name=bench -c user.email=bench@example.com "$@"; }
for i in $(seq "$REMOTE_STACKS"); do gen 0 > "$work/work/r$i.yaml"; done
g add -A && g commit -qm stacks && g push -q origin HEAD:main
printf 'bench-secret' > "$work/hook.secret"
b gitops add --git "file://$work/repo.git" --name remote --interval 1h \
  --webhook-secret-file "$work/hook.secret" >/dev/null
sleep 5
(curl -sN --unix-socket "$state/berth.sock" http://berth/v1/events >"$work/events.json" 2>/dev/null) &
events_pid=$!
sleep 0.5
: > "$work/pushes"
body='{"ref":"refs/heads/main"}'
sig="sha256=$(printf '%s' "$body" | openssl dgst -sha256 -hmac bench-secret -r | cut -d' ' -f1)"
for n in $(seq "$CHANGES"); do
  i=$(( (n % REMOTE_STACKS) + 1 ))
  before=$(starts "r$i")
  gen "$n" > "$work/work/r$i.yaml"
  g commit -qam "r$i $n"
  t=$(now_ms)
  g push -q origin HEAD:main
  curl -s -o /dev/null -X POST -H "X-Hub-Signature-256: $sig" --data "$body" \
    "http://127.0.0.1:$hook_port/v1/gitops/hook/remote"
  echo "$t r$i" >> "$work/pushes"
  wait_start "r$i" "$before"
done
sleep 0.5
kill "$events_pid" 2>/dev/null || true
events_pid=
report "$work/pushes" "push + signed webhook -> new container running, a remote of $REMOTE_STACKS stacks"
