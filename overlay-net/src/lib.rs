//! Container networking on one node: a bridge per network, a veth per container
//! attachment, IPAM, nftables isolation/NAT/published ports, and the DNS server for
//! service discovery. [`NetworkManager`] is the entry point; see ARCHITECTURE.md.
//!
//! Pure planning (`ipam`, `names`, `firewall` scripts, `dns::Records`, `resolv`) is
//! separate from the kernel seams (`kernel::Links`, `firewall::Firewall`), so the
//! WireGuard overlay of a later issue reuses the planning and adds peers.

pub mod dns;
pub mod firewall;
pub mod ipam;
pub mod kernel;
pub mod names;
mod network;
pub mod ports;
pub mod proxy;
pub mod resolv;

pub use network::{
    AttachRequest, Attachment, GcReport, Interface, NetConfig, NetError, NetworkInfo,
    NetworkManager, NetworkRequest,
};
