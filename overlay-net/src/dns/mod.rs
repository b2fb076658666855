//! Service discovery: berth's DNS server (split into its parts in the next commit).

mod server;

pub use server::*;
