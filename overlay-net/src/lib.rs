//! Container networking on one node: a bridge per network, a veth per container
//! attachment, IPAM, nftables isolation/NAT/published ports, and the DNS server for
//! service discovery. [`NetworkManager`] is the entry point; see ARCHITECTURE.md.
//!
//! Pure planning (`ipam`, `names`, `firewall` scripts, `dns::Records`, `resolv`) is
//! separate from the kernel seams (`kernel::Links`, `firewall::Firewall`), so the
//! WireGuard overlay of a later issue reuses the planning and adds peers.
//!
//! The map:
//! - `network/`: [`NetworkManager`], the daemon's handle, one file per concept: its
//!   on-disk records, networks (bridges, subnets), attachments (a container's netns,
//!   veths, addresses), published ports, and `gc` of what a crash left;
//! - `dns/`: service discovery: the records (a pure name -> addresses table) apart
//!   from the server (UDP and TCP listeners, forwarding upstream);
//! - pure planning: `ipam` (subnets, addresses), `names` (kernel object names from
//!   the prefix), `resolv` (a container's resolv.conf and hosts);
//! - kernel seams, each a small trait with a real implementation and a fake in the
//!   tests: `kernel` (links and namespaces over rtnetlink) and `firewall` (nft
//!   scripts, applied by the `nft` tool);
//! - published ports: `ports` (host port reservations, DNAT rules), `port_groups`
//!   (pure: which containers are behind each host port, who may share it, which of
//!   them are serving) and `proxy` (the userspace relay for the host's IPv6
//!   addresses, spreading over the same backends).
//!
//! The WireGuard mesh between nodes (per-node key pairs, peers, allowed IPs, a kernel
//! or TUN device) goes in a `mesh/` module beside `network/` when its issue comes:
//! its peer planning pure, its device behind a seam like `kernel::Links`; cluster-wide
//! DNS records go into `dns::Records`.

pub mod dns;
pub mod firewall;
pub mod ipam;
pub mod ipam6;
pub mod kernel;
pub mod names;
mod network;
pub mod port_groups;
pub mod ports;
pub mod proxy;
pub mod resolv;

pub use network::{
    AttachRequest, Attachment, GcReport, Interface, NetConfig, NetError, NetworkInfo,
    NetworkManager, NetworkRequest,
};
