//! The kernel seam for links, addresses, routes and network namespaces: the [`Links`]
//! trait, and [`Rtnetlink`], its real implementation over netlink (rtnetlink).
//!
//! Operations inside a container's namespace run on a short-lived thread that joins it
//! with `setns` and opens its own netlink socket there: a netlink socket talks to the
//! namespace it was created in, and `setns` changes only the calling thread.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags};
use rtnetlink::packet_route::link::{InfoData, InfoVeth, LinkAttribute};
use rtnetlink::{
    Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder,
};

use crate::ipam::Subnet;
use crate::ipam6::Subnet6;

/// A kernel call that failed, naming the object.
#[derive(Debug, thiserror::Error)]
#[error("{op} {object}: {message}")]
pub struct LinkError {
    pub op: &'static str,
    pub object: String,
    pub message: String,
}

impl LinkError {
    pub fn new(
        op: &'static str,
        object: impl std::fmt::Display,
        e: impl std::fmt::Display,
    ) -> Self {
        LinkError {
            op,
            object: object.to_string(),
            message: e.to_string(),
        }
    }
}

/// One container interface to make: a veth whose host end `host` joins `bridge` and
/// whose other end is `ifname` with `address` inside the namespace at `netns`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VethPlan {
    pub bridge: String,
    pub host: String,
    pub netns: PathBuf,
    pub ifname: String,
    /// The container side's MAC address, when the service asks for one.
    pub mac: Option<[u8; 6]>,
    /// `link_local_ips`: more addresses of the interface (169.254.0.0/16, fe80::/64).
    pub link_local: Vec<IpAddr>,
    /// Network sysctls of the container's namespace, `net.*` keys (`IFNAME` already
    /// replaced by the interface's name).
    pub sysctls: Vec<(String, String)>,
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    /// The default route's gateway, for the one interface that carries it.
    pub default_via: Option<Ipv4Addr>,
    /// On an `enable_ipv6` network: the interface's IPv6 address and prefix length.
    pub address6: Option<(Ipv6Addr, u8)>,
    /// The IPv6 default route's gateway, for the one interface that carries it.
    pub default_via6: Option<Ipv6Addr>,
}

/// What the network manager needs from the kernel besides nftables.
pub trait Links: Send + Sync {
    /// Creates the bridge if missing, gives it `gateway/prefix_len` (and the IPv6
    /// gateway `gateway6`, usable at once: no duplicate address detection), brings it up.
    fn ensure_bridge(
        &self,
        name: &str,
        gateway: Ipv4Addr,
        prefix_len: u8,
        gateway6: Option<(Ipv6Addr, u8)>,
    ) -> Result<(), LinkError>;
    /// Deletes a link in the host namespace; a missing one is not an error.
    fn delete_link(&self, name: &str) -> Result<(), LinkError>;
    /// Names of the host namespace's links.
    fn link_names(&self) -> Result<Vec<String>, LinkError>;
    /// Destinations of the host's IPv4 routes.
    fn host_routes(&self) -> Result<Vec<Subnet>, LinkError>;
    /// Destinations of the host's IPv6 routes (none when the host has no IPv6).
    fn host_routes6(&self) -> Result<Vec<Subnet6>, LinkError>;
    /// Creates a network namespace kept alive by a bind mount at `path`, with loopback
    /// up and the container interfaces of `veths` (see [`VethPlan`]).
    fn create_netns(&self, path: &Path, veths: &[VethPlan]) -> Result<(), LinkError>;
    /// Unmounts and removes a namespace file; a missing one is not an error. Once no
    /// process holds the namespace, the kernel destroys it with the veths made in it
    /// (both ends), asynchronously.
    fn delete_netns(&self, path: &Path) -> Result<(), LinkError>;
}

/// The real kernel, through rtnetlink on a private single-threaded tokio runtime.
pub struct Rtnetlink {
    host: Mutex<(tokio::runtime::Runtime, Handle)>,
}

impl std::fmt::Debug for Rtnetlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Rtnetlink")
    }
}

fn connect() -> Result<(tokio::runtime::Runtime, Handle), LinkError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| LinkError::new("start", "netlink runtime", e))?;
    let handle = rt.block_on(async {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(conn);
        Ok::<_, std::io::Error>(handle)
    });
    let handle = handle.map_err(|e| LinkError::new("open", "netlink socket", e))?;
    Ok((rt, handle))
}

async fn index_of(handle: &Handle, name: &str) -> Result<Option<u32>, rtnetlink::Error> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(link)) => Ok(Some(link.header.index)),
        Ok(None) => Ok(None),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(e),
    }
}

async fn must_index(handle: &Handle, name: &str) -> Result<u32, LinkError> {
    index_of(handle, name)
        .await
        .map_err(|e| LinkError::new("look up link", name, e))?
        .ok_or_else(|| LinkError::new("look up link", name, "no such link"))
}

impl Rtnetlink {
    pub fn new() -> Result<Rtnetlink, LinkError> {
        Ok(Rtnetlink {
            host: Mutex::new(connect()?),
        })
    }

    fn with<T>(
        &self,
        f: impl AsyncFnOnce(&Handle) -> Result<T, LinkError>,
    ) -> Result<T, LinkError> {
        let guard = self.host.lock().unwrap_or_else(|p| p.into_inner());
        let (rt, handle) = &*guard;
        rt.block_on(f(handle))
    }
}

impl Links for Rtnetlink {
    fn ensure_bridge(
        &self,
        name: &str,
        gateway: Ipv4Addr,
        prefix_len: u8,
        gateway6: Option<(Ipv6Addr, u8)>,
    ) -> Result<(), LinkError> {
        if gateway6.is_some() {
            // Before the bridge has an address: a host that disables IPv6 on new
            // interfaces by default would otherwise refuse it. (A bridge made now
            // does not exist yet; it is written again below.)
            enable_ipv6(name);
        }
        self.with(async |h| {
            let index = match index_of(h, name)
                .await
                .map_err(|e| LinkError::new("look up bridge", name, e))?
            {
                Some(i) => i,
                None => {
                    h.link()
                        .add(LinkBridge::new(name).build())
                        .execute()
                        .await
                        .map_err(|e| LinkError::new("create bridge", name, e))?;
                    must_index(h, name).await?
                }
            };
            h.address()
                .add(index, IpAddr::V4(gateway), prefix_len)
                .replace()
                .execute()
                .await
                .map_err(|e| LinkError::new("add address to bridge", name, e))?;
            if let Some((gw6, len6)) = gateway6 {
                enable_ipv6(name);
                add_address6(h, index, gw6, len6, name, true).await?;
            }
            // A bridge without a MAC of its own takes the lowest of its ports', so it
            // changes when that container goes: every other container's ARP entry for
            // the gateway (its DNS server, its way out) goes stale and its packets are
            // dropped until it asks again (a DNS lookup failed during a rolling update).
            // Fixed from the gateway's address, as Docker's is.
            h.link()
                .set(
                    LinkUnspec::new_with_index(index)
                        .address(mac_for(gateway).to_vec())
                        .up()
                        .build(),
                )
                .execute()
                .await
                .map_err(|e| LinkError::new("bring up bridge", name, e))
        })?;
        // Lets connections to a published port on 127.0.0.1, DNAT'd in the output hook,
        // leave through the bridge (the kernel drops loopback sources elsewhere).
        let sysctl = format!("/proc/sys/net/ipv4/conf/{name}/route_localnet");
        std::fs::write(&sysctl, "1").map_err(|e| LinkError::new("write", sysctl, e))
    }

    fn delete_link(&self, name: &str) -> Result<(), LinkError> {
        self.with(async |h| {
            let Some(index) = index_of(h, name)
                .await
                .map_err(|e| LinkError::new("look up link", name, e))?
            else {
                return Ok(());
            };
            let mut links = h.link();
            match links.del(index).execute().await {
                Ok(()) => Ok(()),
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(()),
                Err(e) => Err(LinkError::new("delete link", name, e)),
            }
        })
    }

    fn link_names(&self) -> Result<Vec<String>, LinkError> {
        self.with(async |h| {
            let mut links = h.link().get().execute();
            let mut names = Vec::new();
            while let Some(link) = links
                .try_next()
                .await
                .map_err(|e| LinkError::new("list", "links", e))?
            {
                for attr in link.attributes {
                    if let LinkAttribute::IfName(n) = attr {
                        names.push(n);
                    }
                }
            }
            Ok(names)
        })
    }

    fn host_routes(&self) -> Result<Vec<Subnet>, LinkError> {
        let text = std::fs::read_to_string("/proc/net/route")
            .map_err(|e| LinkError::new("read", "/proc/net/route", e))?;
        Ok(crate::ipam::parse_proc_net_route(&text))
    }

    fn host_routes6(&self) -> Result<Vec<Subnet6>, LinkError> {
        // A host without IPv6 has no such file, and no routes to avoid.
        let text = std::fs::read_to_string("/proc/net/ipv6_route").unwrap_or_default();
        Ok(crate::ipam6::parse_proc_net_ipv6_route(&text))
    }

    fn create_netns(&self, path: &Path, veths: &[VethPlan]) -> Result<(), LinkError> {
        use nix::mount::{mount, MsFlags};
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| LinkError::new("create", dir.display(), e))?;
        }
        File::create(path).map_err(|e| LinkError::new("create", path.display(), e))?;
        // The host's namespace, for the host ends of the veths made from inside.
        let host_ns = File::open("/proc/thread-self/ns/net")
            .map_err(|e| LinkError::new("open", "/proc/thread-self/ns/net", e))?;
        let target = path.to_path_buf();
        let plans = veths.to_vec();
        // One thread does all the work inside: unshare affects only the calling thread
        // and leaves the process where it was; the veths are created from inside with
        // their host end placed in the host namespace, which is cheaper than moving a
        // device between namespaces (that waits for an RCU grace period, ~20 ms here).
        let made = std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| LinkError::new("unshare", "network namespace", e))?;
            mount(
                Some("/proc/thread-self/ns/net"),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| LinkError::new("bind-mount netns at", target.display(), e))?;
            let (rt, handle) = connect()?;
            rt.block_on(configure_inside(&handle, host_ns.as_raw_fd(), &plans))
        })
        .join()
        .unwrap_or_else(|_| {
            Err(LinkError::new(
                "create netns",
                path.display(),
                "thread panicked",
            ))
        });
        if let Err(e) = made {
            let _ = self.delete_netns(path);
            for v in veths {
                let _ = self.delete_link(&v.host);
            }
            return Err(e);
        }
        // The host ends join their bridges.
        self.with(async |h| {
            for v in veths {
                let bridge = must_index(h, &v.bridge).await?;
                let host = must_index(h, &v.host).await?;
                h.link()
                    .set(
                        LinkUnspec::new_with_index(host)
                            .controller(bridge)
                            .up()
                            .build(),
                    )
                    .execute()
                    .await
                    .map_err(|e| LinkError::new("attach veth to bridge", &v.host, e))?;
            }
            Ok(())
        })
    }

    fn delete_netns(&self, path: &Path) -> Result<(), LinkError> {
        use nix::mount::{umount2, MntFlags};
        match umount2(path, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => return Err(LinkError::new("unmount netns", path.display(), e)),
        }
        match std::fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(LinkError::new("remove", path.display(), e)),
        }
    }
}

/// Turns IPv6 on for a link (`net.ipv6.conf.<name>.disable_ipv6=0`) in the calling
/// thread's network namespace, without duplicate address detection (`accept_dad=0`):
/// a bridge whose link-local address is still tentative when it comes up left
/// forwarded IPv6 unanswered for its first 2 s (measured: the first ping from another
/// network took 2,040 ms, then 0.1 ms; 0.1 ms from the start with DAD off). A link that
/// does not exist yet is left alone.
/// Writes a `net.*` sysctl of the namespace this thread is in. The key was checked by
/// the loader (no `/`, no `..`); an interface name with dots keeps them, as in
/// `net.ipv4.conf.eth0.forwarding` the interface is the fifth component.
fn set_net_sysctl(key: &str, value: &str) -> std::io::Result<()> {
    if !key.starts_with("net.")
        || key.contains('/')
        || key.split('.').any(|c| c == ".." || c.is_empty())
    {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a network sysctl",
        ));
    }
    std::fs::write(format!("/proc/sys/{}", key.replace('.', "/")), value)
}

fn enable_ipv6(name: &str) {
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "0");
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/accept_dad"), "0");
}

/// Adds an IPv6 address without duplicate address detection (`nodad`), so it is usable
/// at once: berth's IPAM already made it unique on the network. `replace` for a
/// bridge made again.
async fn add_address6(
    h: &Handle,
    index: u32,
    ip: Ipv6Addr,
    prefix_len: u8,
    link: &str,
    replace: bool,
) -> Result<(), LinkError> {
    let mut req = h.address().add(index, IpAddr::V6(ip), prefix_len);
    if replace {
        req = req.replace();
    }
    let msg = req.message_mut();
    msg.header.flags |= AddressHeaderFlags::Nodad;
    msg.attributes
        .push(AddressAttribute::Flags(AddressFlags::Nodad));
    req.execute()
        .await
        .map_err(|e| LinkError::new("add IPv6 address to", link, e))
}

/// A locally administered unicast MAC made from an IPv4 address: `02:42:a.b.c.d`.
pub fn mac_for(ip: std::net::Ipv4Addr) -> [u8; 6] {
    let [a, b, c, d] = ip.octets();
    [0x02, 0x42, a, b, c, d]
}

/// Inside a new namespace: loopback up, then per plan a veth named `ifname` here whose
/// other end (`host`) is created in the namespace of `host_ns`, its address, and the
/// default route on the one plan that carries it.
async fn configure_inside(
    h: &Handle,
    host_ns: std::os::fd::RawFd,
    plans: &[VethPlan],
) -> Result<(), LinkError> {
    if plans.iter().any(|p| p.address6.is_some()) {
        // This thread is in the new namespace, so /proc/sys/net is its own: IPv6 on
        // for everything here (before loopback comes up, so it gets ::1), whatever a
        // host's default for new namespaces says.
        for key in ["all", "default", "lo"] {
            for (name, value) in [("disable_ipv6", "0"), ("accept_dad", "0")] {
                let path = format!("/proc/sys/net/ipv6/conf/{key}/{name}");
                std::fs::write(&path, value).map_err(|e| LinkError::new("write", path, e))?;
            }
        }
    }
    let lo = must_index(h, "lo").await?;
    h.link()
        .set(LinkUnspec::new_with_index(lo).up().build())
        .execute()
        .await
        .map_err(|e| LinkError::new("bring up", "lo", e))?;
    for p in plans {
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name(p.host.clone())
            .setns_by_fd(host_ns)
            .build();
        // The MAC follows from the address (as Docker's does): a successor given the
        // same address answers to the MAC its peers' ARP caches already hold, instead
        // of leaving them talking to a vanished one until their entries go stale.
        let veth = LinkVeth::new(&p.ifname, &p.host)
            .address(p.mac.unwrap_or_else(|| mac_for(p.address)).to_vec())
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
            .build();
        h.link()
            .add(veth)
            .execute()
            .await
            .map_err(|e| LinkError::new("create veth", &p.host, e))?;
        let idx = must_index(h, &p.ifname).await?;
        h.address()
            .add(idx, IpAddr::V4(p.address), p.prefix_len)
            .execute()
            .await
            .map_err(|e| LinkError::new("add address to", &p.ifname, e))?;
        if let Some((ip6, len6)) = p.address6 {
            enable_ipv6(&p.ifname);
            add_address6(h, idx, ip6, len6, &p.ifname, false).await?;
        }
        for ip in &p.link_local {
            match ip {
                IpAddr::V4(_) => h
                    .address()
                    .add(idx, *ip, 16)
                    .execute()
                    .await
                    .map_err(|e| LinkError::new("add link-local address to", &p.ifname, e))?,
                IpAddr::V6(v6) => {
                    enable_ipv6(&p.ifname);
                    add_address6(h, idx, *v6, 64, &p.ifname, false).await?;
                }
            }
        }
        h.link()
            .set(LinkUnspec::new_with_index(idx).up().build())
            .execute()
            .await
            .map_err(|e| LinkError::new("bring up", &p.ifname, e))?;
        for (key, value) in &p.sysctls {
            set_net_sysctl(key, value)
                .map_err(|e| LinkError::new("set sysctl", format!("{key}={value}"), e))?;
        }
    }
    // Routes last: the gateway must be on a link that is up.
    for p in plans {
        if let Some(gw) = p.default_via {
            let idx = must_index(h, &p.ifname).await?;
            h.route()
                .add(
                    RouteMessageBuilder::<Ipv4Addr>::new()
                        .gateway(gw)
                        .output_interface(idx)
                        .build(),
                )
                .execute()
                .await
                .map_err(|e| LinkError::new("add default route via", gw, e))?;
        }
        if let Some(gw) = p.default_via6 {
            let idx = must_index(h, &p.ifname).await?;
            h.route()
                .add(
                    RouteMessageBuilder::<Ipv6Addr>::new()
                        .gateway(gw)
                        .output_interface(idx)
                        .build(),
                )
                .execute()
                .await
                .map_err(|e| LinkError::new("add IPv6 default route via", gw, e))?;
        }
    }
    Ok(())
}
