//! Container networking: per-node bridges and veths, IPAM, the WireGuard mesh between
//! nodes, the DNS server for service discovery and published ports.
//!
//! Nothing lives here yet: it arrives with the networking issue. See ARCHITECTURE.md.
