//! Service discovery: berth's DNS server.
//!
//! [`Records`] is the pure part: which addresses a name has on one network. The
//! [`DnsServer`] is the thin shell around it: one UDP socket per network bound to the
//! network's gateway address (so the socket a query arrives on tells which network
//! asked), one thread per socket, messages encoded and decoded with hickory-proto.
//! Updates take a write lock on the records and are visible to the next query.
//!
//! An answer too large for the client's UDP payload (512 bytes, or its EDNS size) goes
//! out truncated (TC set, no records), and the client asks again over TCP: each network
//! also has a TCP listener on the same address, answering the same way and forwarding
//! over TCP what it forwards (RFC 7766).
//!
//! One file per part, from the pure table out to the sockets:
//! - `records.rs`: the table of [`Endpoint`]s and [`Records::answer`], which addresses
//!   a name has for a client on one network (service names, aliases, `tasks.`,
//!   container names, which names are ours and which are forwarded);
//! - `wire.rs`: DNS messages, from a query packet to its reply ([`respond`]), a reply
//!   cut to what UDP carries ([`fit_udp`]), SERVFAIL, and the length-prefixed framing
//!   over TCP;
//! - `server.rs`: [`DnsServer`], the UDP and TCP listeners per network and who may ask;
//! - `upstream.rs`: forwarding what is not ours to the upstream resolvers;
//! - `client.rs`: [`query_a`], a stub resolver for tests, benchmarks and probes.
//!
//! Cluster-wide records (the tasks of other nodes, from the node's view of the
//! cluster) go into the same [`Records`] table: the server answers from it whatever
//! filled it.

mod client;
mod records;
mod server;
mod upstream;
mod wire;

#[cfg(test)]
mod fixture;

pub use client::{query_a, query_aaaa};
pub use hickory_proto::op::ResponseCode;
pub use records::{Answer, Endpoint, Family, Records};
pub use server::DnsServer;
pub use upstream::parse_nameservers;
pub use wire::{fit_udp, respond};
