#!/usr/bin/env bash
# Commit latency (p50, p99, max) and throughput of store writes on 1 and 3 managers,
# each in its own network namespace (testkit::hosts), wired as `berth daemon` wires a
# cluster manager: Store::open_member with cluster_config (fsynced Raft log on a real
# disk), TlsTransport and the cluster port (mutual TLS, certificates from one CA).
# Clients run Store::update on the leader's and on a follower's host: sequential writes
# (light load), 64 concurrent writers on one Store and on a Store each, batched
# transactions, and Node::propose of pipelined Txns (the Raft layer's ceiling).
# Prints a Markdown table (results and how to read them: bench/raft.md).
#
# Usage (as root, from anywhere): bench/raft-netns.sh [options of the program]
#   e.g. bench/raft-netns.sh --writes 1000 --seconds 5 --writers 64 --managers 1,3
#        bench/raft-netns.sh --managers 3 --slow-follower 1000000
# Environment: BERTH_BENCH_DIR (where the stores go; default the temp dir, must be a
# real disk), SKIP_BUILD=1 (reuse the last build), CARGO_TARGET_DIR (as cargo's).
# Everything it makes (namespaces, veths, bridge, store directories) is removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "raft-netns.sh: run as root (it makes network namespaces)" >&2
  exit 2
fi
command -v ip >/dev/null || { echo "raft-netns.sh: needs iproute2 (apt-get install -y iproute2)" >&2; exit 2; }
# Errors are messages; a backtrace only when asked for with RUST_LIB_BACKTRACE=1.
export RUST_LIB_BACKTRACE="${RUST_LIB_BACKTRACE:-0}"
target="${CARGO_TARGET_DIR:-target}"
if [ -z "${SKIP_BUILD:-}" ]; then
  cargo build --release -q -p manager --example store_netns
fi
exec "$target/release/examples/store_netns" "$@"
