//! Network namespaces pool, veth/NAT, egress firewall.
//!
//! Every sandbox gets its own network namespace (a named one, under
//! `/run/netns`, made with `ip netns add`) joined to a host bridge by a veth
//! pair. The bridge ports are *isolated* (`bridge link set … isolated on`), so
//! sandboxes cannot talk to each other at layer 2; an nftables table per
//! [`Network`] drops traffic from the bridge to the host itself (the host's
//! services are unreachable; replies to connections the host opened pass),
//! drops egress to denied ranges (private networks, link-local/metadata) and
//! to every network the host's own interfaces sit on ([`hostnets`], kept
//! current while kilnd runs), drops all egress of sandboxes that are
//! offline, and masquerades the rest. Towards the sandboxes, only root's
//! sockets on the host (kilnd's) may send: other host users cannot reach a
//! sandbox's ports at its bridge address, bypassing the proxy's access
//! checks, and nothing is forwarded to the bridge from elsewhere (other
//! namespaces, containers, the LAN) but replies.
//!
//! Namespaces are made ahead of time in a pool, off the create path: taking
//! one costs a mutex and, for an offline sandbox, one `nft` call.
//!
//! Host tools used: `ip` (iproute2) and `nft` (nftables).

mod cmd;
pub mod hostnets;
mod pool;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

pub use cmd::NetError;

/// How one network of sandboxes looks on the host.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Short tag (1–4 of `[a-z0-9]`) that prefixes every host object:
    /// bridge `kb-<tag>`, host veths `kv<tag>-<n>`, namespaces `kiln-<tag>-<n>`,
    /// nftables table `inet kiln_<tag>`. Two `Network`s with distinct tags
    /// coexist (tests use that).
    pub tag: String,
    /// The bridge's subnet, a private IPv4 /16 (the bridge gets `.0.1`).
    pub subnet: Ipv4Addr,
    /// Destinations sandboxes may never reach (CIDR strings).
    pub denied: Vec<String>,
    /// Ready namespaces kept in the pool.
    pub pool_size: usize,
    /// DNS servers sandboxes may query (port 53) even when their range is
    /// denied. Default: the host's own, from /etc/resolv.conf, except
    /// loopback ones (unreachable from a namespace anyway).
    pub dns: Vec<Ipv4Addr>,
}

impl NetConfig {
    /// Defaults: subnet 10.88.0.0/16, private ranges and link-local denied.
    pub fn new(tag: &str) -> Self {
        Self {
            tag: tag.to_owned(),
            subnet: Ipv4Addr::new(10, 88, 0, 0),
            denied: [
                "10.0.0.0/8",
                "172.16.0.0/12",
                "192.168.0.0/16",
                "169.254.0.0/16",
                "100.64.0.0/10",
                "127.0.0.0/8",
                "0.0.0.0/8",
                "224.0.0.0/4",
            ]
            .map(str::to_owned)
            .to_vec(),
            pool_size: 4,
            dns: host_nameservers(),
        }
    }

    pub fn bridge(&self) -> String {
        format!("kb-{}", self.tag)
    }

    pub fn table(&self) -> String {
        format!("kiln_{}", self.tag)
    }

    fn netns_prefix(&self) -> String {
        format!("kiln-{}-", self.tag)
    }

    fn veth_prefix(&self) -> String {
        format!("kv{}-", self.tag)
    }

    /// The bridge's own address, the sandboxes' gateway.
    pub fn gateway(&self) -> Ipv4Addr {
        let b = self.subnet.octets();
        Ipv4Addr::new(b[0], b[1], 0, 1)
    }

    /// Address of the sandbox side of slot `index`.
    pub fn address(&self, index: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.subnet) + 2 + index)
    }
}

/// Aborts every TCP connection the host's network namespace has with `ip`
/// (`ss -K`, the kernel's SOCK_DESTROY): each host-side socket is closed
/// with a reset, so the sandbox's end is reset too, at once, instead of
/// lingering open or in TIME_WAIT. Used before a sandbox's state is saved:
/// gVisor's netstack cannot save connections over its namespace's veth,
/// and the sandbox may come back at another address anyway. Blocking.
pub fn abort_connections(ip: Ipv4Addr) -> Result<(), NetError> {
    let ip = ip.to_string();
    cmd::run("ss", &["-K", "-t", "-n", "dst", &ip]).map(|_| ())
}

/// IPv4 nameservers of the host's /etc/resolv.conf, loopback ones left out.
pub fn host_nameservers() -> Vec<Ipv4Addr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<Ipv4Addr>().ok())
        .filter(|a| !a.is_loopback())
        .collect()
}

/// A namespace handed to one sandbox. Give it back with [`Network::release`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetLease {
    pub index: u32,
    /// Name under /run/netns.
    pub netns: String,
    /// The namespace file to `setns` into.
    pub netns_path: PathBuf,
    /// Host end of the veth pair.
    pub veth: String,
    /// The sandbox's address (its `eth0`), reachable from the host.
    pub ip: Ipv4Addr,
    pub internet: bool,
}

/// The host side of all sandbox networking for one tag.
pub struct Network {
    cfg: NetConfig,
    state: Mutex<State>,
    /// Set by [`Network::shutdown`]: the host-network watcher stops.
    stopped: AtomicBool,
}

#[derive(Default)]
struct State {
    pool: Vec<NetLease>,
    used: BTreeSet<u32>,
    next: u32,
}

const MAX_SLOTS: u32 = 65_000;

impl Network {
    /// Sets up the bridge and the firewall, removes every namespace and veth
    /// of this tag except those in `keep` (leases of sandboxes that survived a
    /// restart of the server), and fills the pool. Blocking.
    pub fn setup(cfg: NetConfig, keep: &[NetLease]) -> Result<Arc<Self>, NetError> {
        if cfg.tag.is_empty()
            || cfg.tag.len() > 4
            || !cfg
                .tag
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return Err(NetError::Config(format!(
                "network tag {:?} must be 1-4 of [a-z0-9]",
                cfg.tag
            )));
        }
        let mask = u32::MAX << 16;
        if let Some(l) = keep
            .iter()
            .find(|l| u32::from(l.ip) & mask != u32::from(cfg.subnet) & mask)
        {
            return Err(NetError::Config(format!(
                "sandboxes of the previous run use addresses outside the subnet {}/16 \
                 (one has {}): start with the subnet they were made in, and kill them there to change it",
                cfg.subnet, l.ip
            )));
        }
        let net = Arc::new(Self {
            cfg,
            state: Mutex::new(State::default()),
            stopped: AtomicBool::new(false),
        });
        net.remove_leftovers(keep)?;
        let host_nets = hostnets::host_networks();
        net.setup_host(&host_nets)?;
        hostnets::watch(Arc::downgrade(&net), host_nets);
        {
            let mut st = net.state.lock().unwrap();
            for lease in keep {
                st.used.insert(lease.index);
            }
        }
        let offline: Vec<_> = keep.iter().filter(|l| !l.internet).collect();
        for lease in offline {
            net.set_offline(lease, true)?;
        }
        net.refill()?;
        Ok(net)
    }

    pub fn config(&self) -> &NetConfig {
        &self.cfg
    }

    /// A ready namespace. Makes one if the pool is empty (slow path, blocking).
    pub fn take(&self, internet: bool) -> Result<NetLease, NetError> {
        let pooled = self.state.lock().unwrap().pool.pop();
        let mut lease = match pooled {
            Some(l) => l,
            None => {
                let index = self.allocate()?;
                self.make(index)?
            }
        };
        lease.internet = internet;
        if !internet {
            if let Err(e) = self.set_offline(&lease, true) {
                let _ = self.destroy(&lease);
                return Err(e);
            }
        }
        Ok(lease)
    }

    /// Destroys the namespace and its veth pair. Blocking; idempotent.
    pub fn release(&self, lease: &NetLease) -> Result<(), NetError> {
        if !lease.internet {
            self.set_offline(lease, false)?;
        }
        self.destroy(lease)
    }

    /// Gives back the namespace of a sandbox whose processes are all gone:
    /// it goes back to the pool (up to twice `pool_size`), else is
    /// destroyed. Safe to reuse because the sandbox could not change it:
    /// the namespace belongs to the host's user namespace, so root inside
    /// has no network capabilities there (addresses, routes, firewall and
    /// sysctls are as the pool made them). Blocking.
    pub fn recycle(&self, lease: &NetLease) -> Result<(), NetError> {
        if !lease.internet {
            self.set_offline(lease, false)?;
        }
        let mut st = self.state.lock().unwrap();
        if st.pool.len() < self.cfg.pool_size * 2 && lease.netns_path.exists() {
            let mut lease = lease.clone();
            lease.internet = true;
            st.pool.push(lease);
            return Ok(());
        }
        drop(st);
        self.destroy(lease)
    }

    /// Tops the pool up to `pool_size`. Blocking; call it off the create path.
    pub fn refill(&self) -> Result<(), NetError> {
        loop {
            let index = {
                let st = self.state.lock().unwrap();
                if st.pool.len() >= self.cfg.pool_size {
                    return Ok(());
                }
                drop(st);
                self.allocate()?
            };
            let lease = self.make(index)?;
            self.state.lock().unwrap().pool.push(lease);
        }
    }

    /// Removes the pool, the bridge and the firewall. Leases still out are
    /// the caller's to release first. Blocking.
    pub fn shutdown(&self) -> Result<(), NetError> {
        self.stopped.store(true, Ordering::Relaxed);
        let pool = std::mem::take(&mut self.state.lock().unwrap().pool);
        for lease in &pool {
            self.destroy(lease)?;
        }
        let still_used = !self.state.lock().unwrap().used.is_empty();
        if still_used {
            // Sandboxes outlive this process: keep what they need.
            return Ok(());
        }
        let _ = cmd::run("ip", &["link", "del", &self.cfg.bridge()]);
        let _ = cmd::run("nft", &["delete", "table", "inet", &self.cfg.table()]);
        Ok(())
    }

    fn allocate(&self) -> Result<u32, NetError> {
        let mut st = self.state.lock().unwrap();
        for _ in 0..MAX_SLOTS {
            let i = st.next;
            st.next = (st.next + 1) % MAX_SLOTS;
            if st.used.insert(i) {
                return Ok(i);
            }
        }
        Err(NetError::Exhausted)
    }

    fn lease_for(&self, index: u32) -> NetLease {
        let netns = format!("{}{index}", self.cfg.netns_prefix());
        NetLease {
            index,
            netns_path: PathBuf::from("/run/netns").join(&netns),
            netns,
            veth: format!("{}{index}", self.cfg.veth_prefix()),
            ip: self.cfg.address(index),
            internet: true,
        }
    }

    fn make(&self, index: u32) -> Result<NetLease, NetError> {
        let lease = self.lease_for(index);
        let r = pool::make_netns(&self.cfg, &lease);
        if let Err(e) = r {
            let _ = self.destroy(&lease);
            return Err(e);
        }
        Ok(lease)
    }

    fn destroy(&self, lease: &NetLease) -> Result<(), NetError> {
        pool::destroy_netns(&self.cfg, lease)?;
        self.state.lock().unwrap().used.remove(&lease.index);
        Ok(())
    }

    /// Gives a namespace's `eth0` its address and default route again
    /// (idempotent). A user-space network stack that takes the namespace's
    /// interface over (runsc's netstack) removes the address from the
    /// kernel's view and leaves the namespace without it: a start in a
    /// namespace such a stack used before calls this first. Blocking.
    pub fn readdress(&self, lease: &NetLease) -> Result<(), NetError> {
        let inside = format!(
            "link set lo up\n\
             addr replace {ip}/16 dev eth0\n\
             link set eth0 up\n\
             route replace default via {gw}\n",
            ip = lease.ip,
            gw = self.cfg.gateway(),
        );
        cmd::run_with_input("ip", &["-n", &lease.netns, "-batch", "-"], Some(&inside)).map(|_| ())
    }

    /// Cuts (or restores) the egress of a lease's sandbox.
    pub fn set_offline(&self, lease: &NetLease, offline: bool) -> Result<(), NetError> {
        let verb = if offline { "add" } else { "delete" };
        let r = cmd::run(
            "nft",
            &[
                verb,
                "element",
                "inet",
                &self.cfg.table(),
                "offline",
                &format!("{{ {} }}", lease.ip),
            ],
        );
        match r {
            Err(_) if !offline => Ok(()), // already gone
            r => r.map(|_| ()),
        }
    }

    fn setup_host(&self, host_nets: &[hostnets::Net]) -> Result<(), NetError> {
        pool::setup_bridge(&self.cfg)?;
        pool::setup_firewall(&self.cfg, host_nets)
    }

    fn remove_leftovers(&self, keep: &[NetLease]) -> Result<(), NetError> {
        let keep_ns: BTreeSet<&str> = keep.iter().map(|l| l.netns.as_str()).collect();
        let keep_veth: BTreeSet<&str> = keep.iter().map(|l| l.veth.as_str()).collect();
        for ns in pool::list_netns(&self.cfg.netns_prefix()) {
            if !keep_ns.contains(ns.as_str()) {
                tracing::debug!(netns = %ns, "removing leftover network namespace");
                let _ = cmd::run("ip", &["netns", "del", &ns]);
            }
        }
        for veth in pool::list_links(&self.cfg.veth_prefix())? {
            if !keep_veth.contains(veth.as_str()) {
                tracing::debug!(veth = %veth, "removing leftover veth");
                let _ = cmd::run("ip", &["link", "del", &veth]);
            }
        }
        Ok(())
    }
}

/// Names of network namespaces and links with a prefix, for leak checks.
pub fn count_host_objects(prefix_ns: &str, prefix_link: &str) -> (usize, usize) {
    let ns = pool::list_netns(prefix_ns).len();
    let links = pool::list_links(prefix_link).map(|l| l.len()).unwrap_or(0);
    (ns, links)
}
