//! The networks the host's own interfaces sit on. Sandboxes may reach none
//! of them (nor the host's addresses on them): whatever the host can reach
//! without a router (a LAN, a management or storage network, a network a
//! VPN or a container engine attached) is as private as the ranges in
//! [`crate::NetConfig::denied`], whatever its addresses look like.
//!
//! They go into the table's `hostnets` set, read at start and re-read every
//! [`REFRESH`] while the network exists (an interface brought up or
//! readdressed later is closed within that time).

use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use std::sync::Weak;
use std::time::Duration;

use crate::cmd::{run_with_input, NetError};
use crate::Network;

/// How often the host's interfaces are read again.
pub const REFRESH: Duration = Duration::from_secs(2);

/// A network as (first address, prefix length).
pub type Net = (Ipv4Addr, u8);

/// Every IPv4 network (and, on point-to-point links, address) of every
/// interface of the host, merged: none contains another.
pub fn host_networks() -> Vec<Net> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut nets = Vec::new();
    for a in addrs {
        let Some(ip) = a.address.as_ref().and_then(|s| s.as_sockaddr_in()) else {
            continue;
        };
        let ip = ip.ip();
        let prefix = a
            .netmask
            .as_ref()
            .and_then(|s| s.as_sockaddr_in())
            .map(|m| u32::from(m.ip()).leading_ones() as u8)
            .unwrap_or(32);
        nets.push(network_of(ip, prefix));
        nets.push((ip, 32));
        if let Some(peer) = a.destination.as_ref().and_then(|s| s.as_sockaddr_in()) {
            nets.push((peer.ip(), 32));
        }
    }
    merge(nets)
}

fn network_of(ip: Ipv4Addr, prefix: u8) -> Net {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    };
    (Ipv4Addr::from(u32::from(ip) & mask), prefix)
}

fn contains(outer: Net, inner: Net) -> bool {
    outer.1 <= inner.1 && network_of(inner.0, outer.1) == outer
}

/// Sorted, without duplicates and without networks inside another.
pub fn merge(mut nets: Vec<Net>) -> Vec<Net> {
    nets.sort_by_key(|n| (n.1, n.0));
    let mut out: Vec<Net> = Vec::new();
    for n in nets {
        if !out.iter().any(|o| contains(*o, n)) {
            out.push(n);
        }
    }
    out.sort();
    out
}

/// The set's elements in nftables syntax (empty for none).
pub fn elements(nets: &[Net]) -> String {
    nets.iter()
        .map(|(a, p)| format!("{a}/{p}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Replaces the set's content with `nets`, atomically.
pub(crate) fn load(table: &str, nets: &[Net]) -> Result<(), NetError> {
    let mut script = format!("flush set inet {table} hostnets\n");
    if !nets.is_empty() {
        script.push_str(&format!(
            "add element inet {table} hostnets {{ {} }}\n",
            elements(nets)
        ));
    }
    run_with_input("nft", &["-f", "-"], Some(&script)).map(|_| ())
}

/// Re-reads the host's networks every [`REFRESH`] until the network is shut
/// down or dropped, reloading the set when they changed.
pub(crate) fn watch(net: Weak<Network>, mut last: Vec<Net>) {
    let spawned = std::thread::Builder::new()
        .name("kiln-hostnets".into())
        .spawn(move || loop {
            std::thread::sleep(REFRESH);
            let Some(net) = net.upgrade() else {
                return;
            };
            if net.stopped.load(Ordering::Relaxed) {
                return;
            }
            let now = host_networks();
            if now == last {
                continue;
            }
            match load(&net.cfg.table(), &now) {
                Ok(()) => {
                    tracing::info!(networks = %elements(&now), "the host's networks changed: sandboxes are denied the new set");
                    last = now;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot update the sandboxes' deny set of host networks")
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start watching the host's networks; only those at start are denied");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Net {
        let (a, p) = s.split_once('/').unwrap();
        (a.parse().unwrap(), p.parse().unwrap())
    }

    #[test]
    fn merge_drops_contained_and_duplicate_networks() {
        let got = merge(vec![
            n("198.51.100.7/32"),
            n("198.51.100.0/24"),
            n("10.1.2.3/32"),
            n("10.0.0.0/8"),
            n("198.51.100.0/24"),
            n("203.0.113.9/32"),
        ]);
        assert_eq!(
            got,
            vec![n("10.0.0.0/8"), n("198.51.100.0/24"), n("203.0.113.9/32")]
        );
        assert_eq!(
            elements(&got),
            "10.0.0.0/8, 198.51.100.0/24, 203.0.113.9/32"
        );
    }

    #[test]
    fn network_of_masks_the_host_part() {
        assert_eq!(
            network_of("198.51.100.77".parse().unwrap(), 24),
            n("198.51.100.0/24")
        );
        assert_eq!(network_of("1.2.3.4".parse().unwrap(), 0), n("0.0.0.0/0"));
        assert!(contains(n("0.0.0.0/0"), n("8.8.8.8/32")));
        assert!(!contains(n("198.51.100.0/25"), n("198.51.100.200/32")));
    }

    #[test]
    fn the_host_has_its_loopback_network() {
        let nets = host_networks();
        assert!(
            nets.iter().any(|x| contains(*x, n("127.0.0.1/32"))),
            "{nets:?}"
        );
    }
}
