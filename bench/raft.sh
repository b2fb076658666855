#!/usr/bin/env bash
# Commit latency (p50, p99) and throughput of the Raft core (manager::raft), with an
# fdatasync of the log before every acknowledgement, in one process:
#   - 1 node;
#   - 3 nodes talking TCP over 127.0.0.1 (the real transport, no TLS yet);
# each with 1 client writing one put after the other (light load) and 256 concurrent
# clients (heavy load: proposals batch into one Ready and one fsync). Writes are
# 100-byte values through the leader's Node::propose, acknowledged once committed and
# applied. The logs go to BERTH_RAFT_BENCH_DIR (default: the temp dir; it must be a
# real disk, not a tmpfs, for the fsync to mean anything).
# Usage: bench/raft.sh        (prints one line per run; results in bench/raft.md)
set -euo pipefail
cd "$(dirname "$0")/.."
echo "raft bench: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), log dir on $(df -T "${BERTH_RAFT_BENCH_DIR:-${TMPDIR:-/tmp}}" | awk 'NR==2 {print $2}')"
BERTH_RAFT_BENCH=1 cargo test --release -q -p manager --test raft_bench -- --nocapture --test-threads 1 2>&1 |
  grep -E '^raft bench|panicked|error' 
