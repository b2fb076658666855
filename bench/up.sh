#!/usr/bin/env bash
# `up -d` and `down` of generated stacks (N services, each a busybox container that
# sleeps and exits at once on SIGTERM, on the stack's default network): berth against
# docker-compose on Docker, side by side in one run, with the same busybox-static image
# (`docker import` for Docker, `berth image import` for berth). Also the memory of
# berth's daemon and shims with the largest stack running, next to dockerd+containerd's.
#
# Run as root from the repository root: bench/up.sh   (SIZES="10 50" RUNS=5 by default)
# BERTH_ONLY=1 times berth alone (no Docker installed or started): for comparing two
# builds of berth on a machine where dockerd must not run (it changes the firewall).
# It starts dockerd for the Docker side and stops it at the end: dockerd changes the
# host's firewall (FORWARD policy DROP), which breaks other bridge tests while it runs.
set -euo pipefail
cd "$(dirname "$0")/.."

SIZES="${SIZES:-10 50}"
RUNS="${RUNS:-5}"
BERTH_ONLY="${BERTH_ONLY:-}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"

tools="hyperfine busybox"
[ -n "$BERTH_ONLY" ] || tools="$tools docker dockerd docker-compose"
for tool in $tools; do
  command -v "$tool" >/dev/null || {
    echo "bench/up.sh: $tool is missing (apt-get install -y hyperfine busybox-static docker.io docker-compose)" >&2
    exit 2
  }
done

if [ -z "${BERTH:-}" ]; then
  cargo build --release -q -p berth -p agent --bin berth --bin berth-shim
  BERTH="$CARGO_TARGET_DIR/release/berth"
fi

work="$(mktemp -d)"
state="$work/state"
started_dockerd=""
cleanup() {
  for n in $SIZES; do
    (cd "$work/s$n" 2>/dev/null && "$BERTH" --state-dir "$state" down -t 1 >/dev/null 2>&1) || true
    [ -n "$BERTH_ONLY" ] || (cd "$work/s$n" 2>/dev/null && docker-compose -p "bench$n" down -t 1 >/dev/null 2>&1) || true
  done
  pkill -f -- "--state-dir $state daemon" 2>/dev/null || true
  if [ -n "$started_dockerd" ]; then
    kill "$started_dockerd" 2>/dev/null || true
    wait "$started_dockerd" 2>/dev/null || true
    pkill containerd 2>/dev/null || true
    # dockerd's firewall changes outlive it: undo the ones that break other tests.
    iptables -P FORWARD ACCEPT 2>/dev/null || true
    ip link del docker0 2>/dev/null || true
    rmdir /sys/fs/cgroup/*/docker 2>/dev/null || true
  fi
  umount "$state"/containers/*/rootfs 2>/dev/null || true
  rm -rf "$work"
  # berth's cgroup parents, once empty (rmdir never removes a non-empty cgroup).
  rmdir /sys/fs/cgroup/*/berth /sys/fs/cgroup/berth 2>/dev/null || true
}
trap cleanup EXIT

# The image, both sides.
mkdir -p "$work/rootfs/bin" "$work/rootfs/etc" "$work/rootfs/tmp"
cp "$(command -v busybox)" "$work/rootfs/bin/busybox"
for c in sh sleep; do ln -s busybox "$work/rootfs/bin/$c"; done
echo 'root:x:0:0:root:/root:/bin/sh' > "$work/rootfs/etc/passwd"
echo 'root:x:0:' > "$work/rootfs/etc/group"
tar -C "$work/rootfs" -cf "$work/busybox.tar" .
"$BERTH" --state-dir "$state" image import "$work/busybox.tar" benchbox:local >/dev/null

if [ -z "$BERTH_ONLY" ]; then
  if ! docker info >/dev/null 2>&1; then
    dockerd >"$work/dockerd.log" 2>&1 &
    started_dockerd=$!
    for _ in $(seq 100); do docker info >/dev/null 2>&1 && break; sleep 0.2; done
  fi
  docker import "$work/busybox.tar" benchbox:local >/dev/null
fi

for n in $SIZES; do
  mkdir -p "$work/s$n"
  python3 - "$n" >"$work/s$n/docker-compose.yml" <<'PY'
import sys
n = int(sys.argv[1])
print('version: "3.8"')
print("services:")
for i in range(n):
    print(f"  svc{i}:")
    print("    image: benchbox:local")
    print("""    command: ["sh", "-c", "trap 'exit 0' TERM; sleep 100000 & wait"]""")
PY
done

results="$work/results"
mkdir -p "$results"
for n in $SIZES; do
  dir="$work/s$n"
  b="cd $dir && $BERTH --state-dir $state"
  d="cd $dir && docker-compose -p bench$n"
  if [ -n "$BERTH_ONLY" ]; then
    hyperfine --runs "$RUNS" --export-json "$results/up-$n.json" \
      --prepare "$b down -t 1 >/dev/null 2>&1 || true" --cleanup "$b down -t 1 >/dev/null 2>&1 || true" \
      -n "berth up -d ($n)" "$b up -d 2>/dev/null"
    hyperfine --runs "$RUNS" --export-json "$results/down-$n.json" \
      --prepare "$b up -d >/dev/null 2>&1" -n "berth down ($n)" "$b down 2>/dev/null"
    continue
  fi
  # up: each run starts from nothing; down: each run starts from a running stack.
  # (--prepare runs before every timed run; --cleanup only once after all of them,
  # which would time runs 2..N of `up` on a stack already up.)
  hyperfine --runs "$RUNS" --export-json "$results/up-$n.json" \
    --prepare "$b down -t 1 >/dev/null 2>&1; $d down -t 1 >/dev/null 2>&1 || true" \
    --cleanup "$b down -t 1 >/dev/null 2>&1; $d down -t 1 >/dev/null 2>&1" \
    -n "berth up -d ($n)" "$b up -d 2>/dev/null" \
    -n "docker-compose up -d ($n)" "$d up -d 2>/dev/null"
  # docker-compose's down of 50 sometimes exits 1 (a container it cannot stop in
  # time): timed anyway, not fatal.
  hyperfine --runs "$RUNS" --export-json "$results/down-$n.json" --ignore-failure \
    --prepare "$b up -d >/dev/null 2>&1; $d up -d >/dev/null 2>&1" \
    -n "berth down ($n)" "$b down 2>/dev/null" \
    -n "docker-compose down ($n)" "$d down 2>/dev/null"
done

# Memory with the largest stack running on both sides.
largest="${SIZES##* }"
(cd "$work/s$largest" && "$BERTH" --state-dir "$state" up -d >/dev/null 2>&1)
[ -n "$BERTH_ONLY" ] || (cd "$work/s$largest" && docker-compose -p "bench$largest" up -d >/dev/null 2>&1)
# Measured once the burst is over: `up` runs container starts on up to 32 blocking
# threads, which exit after 2 s idle (each with its allocator heap and stack).
sleep 4
rss() { # total RSS in kB of processes whose command line matches $1
  ps -eo rss=,args= | awk -v pat="$1" '$0 ~ pat { s += $1 } END { print s + 0 }'
}
berth_daemon=$(rss "state-dir $state daemon")
berth_shims=$(rss "berth-shim|runtime shim")
dockerd_mem=$(rss "^ *[0-9]+ (/usr/s?bin/)?dockerd")
containerd_mem=$(rss "^ *[0-9]+ (/usr/s?bin/)?containerd( |$)")
docker_shims=$(rss "containerd-shim")

python3 - "$results" "$SIZES" <<PY
import json, sys, os
res, sizes = sys.argv[1], sys.argv[2].split()
print("| services | berth up -d | docker-compose up -d | ratio | berth down | docker-compose down | ratio |")
print("|---|---|---|---|---|---|---|")
for n in sizes:
    up = {r["command"]: r["mean"] for r in json.load(open(f"{res}/up-{n}.json"))["results"]}
    dn = {r["command"]: r["mean"] for r in json.load(open(f"{res}/down-{n}.json"))["results"]}
    bu, du = up[f"berth up -d ({n})"], up.get(f"docker-compose up -d ({n})", float("nan"))
    bd, dd = dn[f"berth down ({n})"], dn.get(f"docker-compose down ({n})", float("nan"))
    print(f"| {n} | {bu*1000:.0f} ms | {du*1000:.0f} ms | {du/bu:.1f}x | {bd*1000:.0f} ms | {dd*1000:.0f} ms | {dd/bd:.1f}x |")
n = int("$largest")
print()
print(f"Memory with {n} containers running (RSS):")
print(f"- berth daemon: {$berth_daemon/1024:.1f} MB; shims: {$berth_shims/1024:.1f} MB ({$berth_shims/1024/n:.2f} MB per container)")
print(f"- dockerd: {$dockerd_mem/1024:.1f} MB; containerd: {$containerd_mem/1024:.1f} MB; shims: {$docker_shims/1024:.1f} MB ({$docker_shims/1024/n:.2f} MB per container)")
PY
