#!/usr/bin/env bash
# Container networking (overlay-net), as root:
#   - attach time per container: network namespace + veth + address + default route
#     + DNS registration (NetworkManager::attach), N containers on one network;
#   - DNS: sequential query latency and queries/s with 1-8 clients, sent from inside a
#     container's network namespace (through its veth and the bridge) to berth's DNS
#     server on the gateway;
#   - published ports: connect+echo round trips and bulk throughput from 127.0.0.1
#     through nftables DNAT vs a minimal userspace proxy vs the container directly,
#     and from [::1] through berth's IPv6 relay.
# Everything is made under the prefix "bnch" and collected at the end (and at the start,
# after an interrupted run). Needs nftables and iproute2.
# Usage: bench/net.sh [N]     (N containers, default 50)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v nft >/dev/null || { echo "bench/net.sh: nft is missing (apt-get install -y nftables)" >&2; exit 2; }
cargo build --release -q -p overlay-net --example netbench
exec "${CARGO_TARGET_DIR:-target}/release/examples/netbench" "${1:-50}"
