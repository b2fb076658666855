#!/usr/bin/env bash
# `up -d` of a stack on a cluster of 3 hosts (a manager and two workers, each a network
# namespace with its own `berth daemon`, as on three machines) beside the same stack on
# one host, in one run; then failover: one worker cut off (its link down), timed until
# every task runs again on the other nodes.
#
# The stack: SERVICES services x REPLICAS replicas of a busybox container that sleeps and
# exits at once on SIGTERM, on the stack's default network. Every host has the image
# (imported), so the figure is placement and dispatch, not image transfer.
#
# Run as root from the repository root: bench/cluster.sh
#   SERVICES=100 REPLICAS=3 GRACE=10s RUNS=3 by default; BERTH=path skips the build.
# Everything it makes (namespaces, veths, bridge, daemons, containers, cgroups) is
# removed at the end, also on failure.
set -euo pipefail
cd "$(dirname "$0")/.."

SERVICES="${SERVICES:-100}"
REPLICAS="${REPLICAS:-3}"
GRACE="${GRACE:-10s}"
RUNS="${RUNS:-3}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
if [ "$(id -u)" != 0 ]; then
  echo "bench/cluster.sh: run as root (it makes network namespaces)" >&2
  exit 2
fi
for tool in ip nsenter busybox python3 nft; do
  command -v "$tool" >/dev/null || {
    echo "bench/cluster.sh: $tool is missing (apt-get install -y iproute2 busybox-static python3 nftables)" >&2
    exit 2
  }
done
if [ -z "${BERTH:-}" ]; then
  cargo build --release -q -p berth -p agent --bin berth --bin berth-shim
  BERTH="$CARGO_TARGET_DIR/release/berth"
fi

work="$(mktemp -d)"
[ -z "${VERBOSE:-}" ] || echo "bench/cluster.sh: working in $work" >&2
p="bcb$$"
br="${p}br"
pids=()
ns() { echo "${p}h$1"; }
# In host I's network namespace only: `ip netns exec` also remounts /sys, which hides
# the cgroup hierarchy the daemon needs.
in_host() {
  local i="$1"
  shift
  nsenter --net="/var/run/netns/$(ns "$i")" -- "$@"
}
b() { # b HOST ARGS...: the CLI in host HOST against its own daemon
  local i="$1"
  shift
  in_host "$i" "$BERTH" --state-dir "$work/h$i" "$@"
}
cleanup() {
  set +e
  b 0 -p bench -f "$work/compose.yaml" down -t 1 >/dev/null 2>&1
  # Whatever is left: every process in the hosts' cgroups (containers), every process
  # naming the work directory (daemons, shims), mounts under it, the namespaces.
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null; done
  for round in 1 2; do
    for c in /sys/fs/cgroup/*/"$p"-* /sys/fs/cgroup/"$p"-*; do
      [ -d "$c" ] || continue
      find "$c" -name cgroup.procs -exec cat {} + 2>/dev/null | xargs -r kill -9 2>/dev/null
    done
    pkill -9 -f -- "$work/" 2>/dev/null
    sleep 0.5
  done
  mount | awk '{print $3}' | grep "^$work/" | sort -r | xargs -r -n1 umount -l 2>/dev/null
  for i in 0 1 2; do
    ip netns del "$(ns "$i")" 2>/dev/null
    ip link del "${p}v$i" 2>/dev/null
  done
  for c in /sys/fs/cgroup/*/"$p"-* /sys/fs/cgroup/"$p"-*; do
    [ -d "$c" ] && find "$c" -depth -type d -exec rmdir {} \; 2>/dev/null
  done
  ip link del "$br" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Three hosts on one bridge: 10.251.0.1-3.
ip link add "$br" type bridge
ip link set "$br" up
for i in 0 1 2; do
  ip netns add "$(ns "$i")"
  ip link add "${p}v$i" type veth peer name eth0 netns "$(ns "$i")"
  ip link set "${p}v$i" master "$br" up
  ip -n "$(ns "$i")" link set lo up
  ip -n "$(ns "$i")" addr add "10.251.0.$((i + 1))/24" dev eth0
  ip -n "$(ns "$i")" link set eth0 up
done

# The image, on every host.
mkdir -p "$work/rootfs/bin" "$work/rootfs/etc" "$work/rootfs/tmp"
cp "$(command -v busybox)" "$work/rootfs/bin/busybox"
for c in sh sleep; do ln -s busybox "$work/rootfs/bin/$c"; done
echo 'root:x:0:0:root:/root:/bin/sh' >"$work/rootfs/etc/passwd"
echo 'root:x:0:' >"$work/rootfs/etc/group"
tar -C "$work/rootfs" -cf "$work/busybox.tar" .
for i in 0 1 2; do
  "$BERTH" --state-dir "$work/h$i" image import "$work/busybox.tar" benchbox:local >/dev/null
done

python3 - "$SERVICES" "$REPLICAS" >"$work/compose.yaml" <<'PY'
import sys
n, r = int(sys.argv[1]), int(sys.argv[2])
print("services:")
for i in range(n):
    print(f"  svc{i}:")
    print("    image: benchbox:local")
    print("""    command: ["sh", "-c", "trap 'exit 0' TERM; sleep 100000 & wait"]""")
    print(f"    deploy: {{replicas: {r}}}")
# A /24 holds 254 containers: room for all of them on one host.
print("networks:")
print("  default:")
print("    ipam: {config: [{subnet: 10.90.0.0/20}]}")
PY
total=$((SERVICES * REPLICAS))

start_daemon() {
  local i="$1"
  in_host "$i" env BERTH_NET_PREFIX=bb BERTH_CGROUP_PARENT="$p-$i" \
    "$BERTH" --state-dir "$work/h$i" daemon >>"$work/h$i.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do b "$i" cluster status >/dev/null 2>&1 && return; sleep 0.1; done
  echo "bench/cluster.sh: daemon $i does not answer; its log:" >&2
  cat "$work/h$i.log" >&2
  exit 1
}
# Seconds (3 decimals) that `up -d` takes on host 0, from nothing to every container
# started (what `up -d` waits for).
time_up() {
  b 0 -p bench -f "$work/compose.yaml" down -t 1 >/dev/null 2>&1 || true
  local t0 t1
  t0=$(date +%s.%N)
  b 0 -p bench -f "$work/compose.yaml" up -d >/dev/null 2>"$work/up.err" || {
    cat "$work/up.err" >&2
    exit 1
  }
  t1=$(date +%s.%N)
  python3 -c "print(f'{$t1 - $t0:.3f}')"
}
running() { # running tasks of the stack, as "node" lines
  b 0 -p bench ps --format json 2>/dev/null |
    python3 -c 'import json,sys; [print(r["NodeID"]) for r in json.load(sys.stdin) if r["State"] == "running"]'
}
median() { python3 -c 'import sys, statistics; print(f"{statistics.median(float(x) for x in sys.argv[1:]):.3f}")' "$@"; }

# One host: host 0's daemon alone.
start_daemon 0
single=()
for _ in $(seq "$RUNS"); do single+=("$(time_up)"); done
b 0 -p bench -f "$work/compose.yaml" down -t 1 >/dev/null 2>&1

# The cluster: host 0 becomes the manager, hosts 1 and 2 join as workers.
b 0 cluster init --advertise-addr 10.251.0.1 --node-grace "$GRACE" >/dev/null
for _ in $(seq 100); do b 0 cluster status >/dev/null 2>&1 && break; sleep 0.2; done
token="$(b 0 cluster join-token -q worker)"
for i in 1 2; do
  start_daemon "$i"
  b "$i" cluster join --token "$token" 10.251.0.1 >/dev/null
done
for _ in $(seq 150); do
  ready=$(b 0 node ls --format json 2>/dev/null | python3 -c 'import json,sys; print(sum(n["status"] == "ready" for n in json.load(sys.stdin)))' 2>/dev/null || echo 0)
  [ "$ready" = 3 ] && break
  sleep 0.2
done
cluster=()
for _ in $(seq "$RUNS"); do cluster+=("$(time_up)"); done
spread="$(running | sort | uniq -c | awk '{print $1}' | sort -n | tr '\n' ' ')"

# Failover: worker 2 cut off; timed until every task runs on the others.
worker2="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["node_id"])' "$work/h2/cluster/config.json")"
on_2=$(running | grep -c "$worker2" || true)
t0=$(date +%s.%N)
ip -n "$(ns 2)" link set eth0 down
deadline=$(($(date +%s) + 180))
while :; do
  now="$(running)"
  n=$(printf '%s\n' "$now" | grep -c . || true)
  if [ -n "${VERBOSE:-}" ]; then
    elsewhere=$(printf '%s\n' "$now" | grep -vc "$worker2" || true)
    echo "$(python3 -c "print(f'{$(date +%s.%N) - $t0:.2f}')") s: $elsewhere running elsewhere" >&2
  fi
  if [ "$n" = "$total" ] && ! printf '%s\n' "$now" | grep -q "$worker2"; then break; fi
  if [ "$(date +%s)" -gt "$deadline" ]; then
    echo "bench/cluster.sh: after 180 s, $n of $total run elsewhere" >&2
    exit 1
  fi
  sleep 0.1
done
t1=$(date +%s.%N)
failover=$(python3 -c "print(f'{$t1 - $t0:.2f}')")
ip -n "$(ns 2)" link set eth0 up

s=$(median "${single[@]}")
c=$(median "${cluster[@]}")
cat <<EOF
| stack | one host (s) | 3 hosts (s) | ratio |
|---|---|---|---|
| $SERVICES services x $REPLICAS replicas ($total containers), up -d, median of $RUNS | $s (${single[*]}) | $c (${cluster[*]}) | $(python3 -c "print(f'{$c / $s:.2f}')") |

Spread on 3 hosts (tasks per node): $spread
Failover: $on_2 tasks on the cut worker, all $total running elsewhere after ${failover} s (grace $GRACE).
EOF
