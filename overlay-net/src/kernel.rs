//! The kernel seam for links, addresses, routes and network namespaces: the [`Links`]
//! trait, and [`Rtnetlink`], its real implementation over netlink (rtnetlink).
//!
//! Operations inside a container's namespace run on a short-lived thread that joins it
//! with `setns` and opens its own netlink socket there: a netlink socket talks to the
//! namespace it was created in, and `setns` changes only the calling thread.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use futures_util::TryStreamExt;
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::ipam::Subnet;

/// A kernel call that failed, naming the object.
#[derive(Debug, thiserror::Error)]
#[error("{op} {object}: {message}")]
pub struct LinkError {
    pub op: &'static str,
    pub object: String,
    pub message: String,
}

impl LinkError {
    fn new(op: &'static str, object: impl std::fmt::Display, e: impl std::fmt::Display) -> Self {
        LinkError {
            op,
            object: object.to_string(),
            message: e.to_string(),
        }
    }
}

/// One container interface to make: a veth whose host end joins `bridge` and whose
/// other end becomes `ifname` with `address` inside the namespace at `netns`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VethPlan {
    pub bridge: String,
    pub host: String,
    pub peer: String,
    pub netns: PathBuf,
    pub ifname: String,
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    /// The default route's gateway, for the one interface that carries it.
    pub default_via: Option<Ipv4Addr>,
}

/// What the network manager needs from the kernel besides nftables.
pub trait Links: Send + Sync {
    /// Creates the bridge if missing, gives it `gateway/prefix_len`, brings it up.
    fn ensure_bridge(&self, name: &str, gateway: Ipv4Addr, prefix_len: u8)
        -> Result<(), LinkError>;
    /// Deletes a link in the host namespace; a missing one is not an error.
    fn delete_link(&self, name: &str) -> Result<(), LinkError>;
    /// Names of the host namespace's links.
    fn link_names(&self) -> Result<Vec<String>, LinkError>;
    /// Destinations of the host's IPv4 routes.
    fn host_routes(&self) -> Result<Vec<Subnet>, LinkError>;
    /// Creates a network namespace kept alive by a bind mount at `path`, loopback up.
    fn create_netns(&self, path: &Path) -> Result<(), LinkError>;
    /// Unmounts and removes a namespace file; a missing one is not an error.
    fn delete_netns(&self, path: &Path) -> Result<(), LinkError>;
    /// Makes one container interface (see [`VethPlan`]).
    fn add_veth(&self, plan: &VethPlan) -> Result<(), LinkError>;
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

/// Runs `f` on a thread inside the namespace at `netns`, with a netlink handle there.
fn in_netns<T: Send + 'static>(
    netns: &Path,
    f: impl AsyncFnOnce(&Handle) -> Result<T, LinkError> + Send + 'static,
) -> Result<T, LinkError> {
    let file = File::open(netns).map_err(|e| LinkError::new("open netns", netns.display(), e))?;
    let shown = netns.display().to_string();
    std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| LinkError::new("join netns", &shown, e))?;
        let (rt, handle) = connect()?;
        rt.block_on(f(&handle))
    })
    .join()
    .unwrap_or_else(|_| {
        Err(LinkError::new(
            "configure",
            netns.display(),
            "thread panicked",
        ))
    })
}

impl Links for Rtnetlink {
    fn ensure_bridge(
        &self,
        name: &str,
        gateway: Ipv4Addr,
        prefix_len: u8,
    ) -> Result<(), LinkError> {
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
            h.link()
                .set(LinkUnspec::new_with_index(index).up().build())
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

    fn create_netns(&self, path: &Path) -> Result<(), LinkError> {
        use nix::mount::{mount, MsFlags};
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| LinkError::new("create", dir.display(), e))?;
        }
        File::create(path).map_err(|e| LinkError::new("create", path.display(), e))?;
        let target = path.to_path_buf();
        let made = std::thread::spawn(move || {
            // unshare on this thread only: it leaves the process where it was.
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
            rt.block_on(async {
                let lo = must_index(&handle, "lo").await?;
                handle
                    .link()
                    .set(LinkUnspec::new_with_index(lo).up().build())
                    .execute()
                    .await
                    .map_err(|e| LinkError::new("bring up", "lo", e))
            })
        })
        .join()
        .unwrap_or_else(|_| {
            Err(LinkError::new(
                "create netns",
                path.display(),
                "thread panicked",
            ))
        });
        if made.is_err() {
            let _ = self.delete_netns(path);
        }
        made
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

    fn add_veth(&self, p: &VethPlan) -> Result<(), LinkError> {
        let ns =
            File::open(&p.netns).map_err(|e| LinkError::new("open netns", p.netns.display(), e))?;
        self.with(async |h| {
            h.link()
                .add(LinkVeth::new(&p.host, &p.peer).build())
                .execute()
                .await
                .map_err(|e| LinkError::new("create veth", &p.host, e))?;
            let bridge = must_index(h, &p.bridge).await?;
            let host = must_index(h, &p.host).await?;
            let peer = must_index(h, &p.peer).await?;
            h.link()
                .set(
                    LinkUnspec::new_with_index(host)
                        .controller(bridge)
                        .up()
                        .build(),
                )
                .execute()
                .await
                .map_err(|e| LinkError::new("attach veth to bridge", &p.host, e))?;
            h.link()
                .set(
                    LinkUnspec::new_with_index(peer)
                        .setns_by_fd(ns.as_raw_fd())
                        .build(),
                )
                .execute()
                .await
                .map_err(|e| LinkError::new("move veth into netns", &p.peer, e))
        })?;
        let p2 = p.clone();
        in_netns(&p.netns, async move |h| {
            let idx = must_index(h, &p2.peer).await?;
            h.link()
                .set(
                    LinkUnspec::new_with_index(idx)
                        .name(p2.ifname.clone())
                        .build(),
                )
                .execute()
                .await
                .map_err(|e| LinkError::new("rename veth to", &p2.ifname, e))?;
            h.address()
                .add(idx, IpAddr::V4(p2.address), p2.prefix_len)
                .execute()
                .await
                .map_err(|e| LinkError::new("add address to", &p2.ifname, e))?;
            h.link()
                .set(LinkUnspec::new_with_index(idx).up().build())
                .execute()
                .await
                .map_err(|e| LinkError::new("bring up", &p2.ifname, e))?;
            if let Some(gw) = p2.default_via {
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
            Ok(())
        })
    }
}
