//! Making and destroying one sandbox namespace, the bridge and the firewall.

use std::path::Path;

use crate::cmd::{run, run_with_input, NetError};
use crate::hostnets::{self, Net};
use crate::{NetConfig, NetLease};

pub(crate) fn make_netns(cfg: &NetConfig, lease: &NetLease) -> Result<(), NetError> {
    // The sandbox side's MAC follows from its address, so a slot made again
    // after a destroy answers at the MAC the host's neighbour cache already
    // holds for that address. With a random MAC the host kept sending to the
    // old one until the stale entry was probed out (5 s and more), and the
    // new sandbox was unreachable meanwhile.
    // The host's neighbour entry for the sandbox is permanent: no ARP on the
    // way to a new sandbox, and permanent entries are not counted against
    // the neighbour table's thresholds. With learnt entries, creates failed
    // at about 500 sandboxes (gc_thresh2 is 512 by default): the host could
    // not add an entry for the next one and its /init timed out.
    let host = format!(
        "netns add {ns}\n\
         link add {veth} type veth peer name eth0 address {mac} netns {ns}\n\
         link set {veth} master {br}\n\
         link set dev {veth} type bridge_slave isolated on\n\
         link set {veth} up\n\
         neigh replace {ip} lladdr {mac} dev {br} nud permanent\n",
        ip = lease.ip,
        ns = lease.netns,
        veth = lease.veth,
        br = cfg.bridge(),
        mac = sandbox_mac(lease.ip),
    );
    run_with_input("ip", &["-batch", "-"], Some(&host))?;
    let inside = format!(
        "link set lo up\n\
         addr add {ip}/16 dev eth0\n\
         link set eth0 up\n\
         route add default via {gw}\n",
        ip = lease.ip,
        gw = cfg.gateway(),
    );
    run_with_input("ip", &["-n", &lease.netns, "-batch", "-"], Some(&inside))?;
    Ok(())
}

/// A locally administered unicast MAC made of the address: unique on the
/// bridge (whose sandboxes share one /16) and the same every time.
pub(crate) fn sandbox_mac(ip: std::net::Ipv4Addr) -> String {
    let [a, b, c, d] = ip.octets();
    format!("02:6b:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
}

pub(crate) fn destroy_netns(cfg: &NetConfig, lease: &NetLease) -> Result<(), NetError> {
    let br = cfg.bridge();
    if Path::new("/sys/class/net").join(&br).exists() {
        // Gone already if the slot was never finished: not an error.
        let _ = run("ip", &["neigh", "del", &lease.ip.to_string(), "dev", &br]);
    }
    // Delete the veth first: it goes at once, while a namespace's devices
    // are only reaped later by the kernel's cleanup work.
    if Path::new("/sys/class/net").join(&lease.veth).exists() {
        run("ip", &["link", "del", &lease.veth])?;
    }
    if lease.netns_path.exists() {
        run("ip", &["netns", "del", &lease.netns])?;
    }
    Ok(())
}

pub(crate) fn setup_bridge(cfg: &NetConfig) -> Result<(), NetError> {
    let br = cfg.bridge();
    // A bridge without an address of its own takes the lowest MAC of its
    // ports, so it changed whenever a sandbox's veth came or went. Sandboxes
    // kept sending to the gateway MAC they had learnt; once the port owning
    // it was gone those frames went nowhere, and a sandbox was unreachable
    // until its neighbour entry was probed out (seconds). A set address
    // stays put.
    let mac = sandbox_mac(cfg.gateway());
    if !Path::new("/sys/class/net").join(&br).exists() {
        let script = format!(
            "link add {br} address {mac} type bridge\n\
             addr add {gw}/16 dev {br}\n\
             link set {br} up\n",
            gw = cfg.gateway()
        );
        run_with_input("ip", &["-batch", "-"], Some(&script))?;
    } else {
        // Left by an earlier kilnd of the same tag (one that stopped with
        // sandboxes still running, or was killed). Its address may be another
        // subnet's: then the route to this run's sandboxes was missing and
        // their traffic took the host's default route instead of the bridge.
        let want = format!("{}/16", cfg.gateway());
        let out = run("ip", &["-4", "-o", "addr", "show", "dev", &br])?;
        let have = bridge_addresses(&out);
        if have != [want.as_str()] {
            tracing::warn!(bridge = %br, old = ?have, new = %want, "readdressing the bridge left by an earlier run");
            let script = format!(
                "addr flush dev {br}\n\
                 neigh flush dev {br} nud permanent\n\
                 addr add {want} dev {br}\n"
            );
            run_with_input("ip", &["-batch", "-"], Some(&script))?;
        }
        run("ip", &["link", "set", &br, "address", &mac, "up"])?;
    }
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(|source| NetError::Io {
        what: "enable IPv4 forwarding".into(),
        source,
    })
}

/// The IPv4 addresses (with prefix length) in `ip -4 -o addr show` output.
fn bridge_addresses(out: &str) -> Vec<&str> {
    out.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            f.find(|w| *w == "inet")?;
            f.next()
        })
        .collect()
}

pub(crate) fn setup_firewall(cfg: &NetConfig, host_nets: &[Net]) -> Result<(), NetError> {
    run_with_input("nft", &["-f", "-"], Some(&ruleset(cfg, host_nets)))?;
    Ok(())
}

/// The nftables ruleset of one network (one table, loaded atomically).
///
/// `output`: of the host's own traffic, only root's sockets (kilnd's) may
/// reach the sandboxes, over the bridge or to their subnet by any route.
/// Root-only rather than kilnd's cgroup: root can enter any cgroup or the
/// sandbox's namespaces anyway, while every other user (and every
/// container or user namespace whose ids map to other host uids) is kept
/// to the proxy and its access checks. Packets with no full socket (the
/// kernel's resets and ICMP errors) do not match `meta skuid` and pass.
pub(crate) fn ruleset(cfg: &NetConfig, host_nets: &[Net]) -> String {
    let table = cfg.table();
    let br = cfg.bridge();
    let subnet = format!("{}/16", cfg.subnet);
    let denied = cfg.denied.join(", ");
    let host_nets = if host_nets.is_empty() {
        String::new()
    } else {
        format!(" elements = {{ {} }};", hostnets::elements(host_nets))
    };
    let dns = if cfg.dns.is_empty() {
        String::new()
    } else {
        let set = cfg
            .dns
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "        iifname \"{br}\" ip daddr {{ {set} }} udp dport 53 accept\n        \
             iifname \"{br}\" ip daddr {{ {set} }} tcp dport 53 accept\n"
        )
    };
    // The first two lines make the load idempotent: create, then delete, then
    // define afresh, all in one atomic transaction.
    format!(
        r#"table inet {table} {{}}
delete table inet {table}
table inet {table} {{
    set offline {{ type ipv4_addr; }}
    set denied {{ type ipv4_addr; flags interval; elements = {{ {denied} }} }}
    set hostnets {{ type ipv4_addr; flags interval;{host_nets} }}
    chain input {{
        type filter hook input priority -10; policy accept;
        iifname "{br}" ct state established,related accept
        iifname "{br}" drop
    }}
    chain forward {{
        type filter hook forward priority -10; policy accept;
        oifname "{br}" ct state established,related accept
        oifname "{br}" drop
        iifname "{br}" meta nfproto ipv6 drop
        iifname "{br}" ip saddr @offline drop
{dns}        iifname "{br}" ip daddr @denied drop
        iifname "{br}" ip daddr @hostnets drop
        iifname "{br}" ip saddr {subnet} accept
        iifname "{br}" drop
    }}
    chain output {{
        type filter hook output priority -10; policy accept;
        oifname "{br}" meta skuid != 0 drop
        ip daddr {subnet} meta skuid != 0 drop
    }}
    chain postrouting {{
        type nat hook postrouting priority 100; policy accept;
        ip saddr {subnet} oifname != "{br}" masquerade
    }}
}}
"#
    )
}

pub(crate) fn list_netns(prefix: &str) -> Vec<String> {
    list_dir("/run/netns", prefix)
}

pub(crate) fn list_links(prefix: &str) -> Result<Vec<String>, NetError> {
    Ok(list_dir("/sys/class/net", prefix))
}

fn list_dir(dir: &str, prefix: &str) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridge_addresses_reads_ip_o_output() {
        let out = "7: kb-fa    inet 10.242.0.1/16 scope global kb-fa\\       valid_lft forever preferred_lft forever\n\
                   7: kb-fa    inet 10.9.0.1/16 scope global kb-fa\\       valid_lft forever preferred_lft forever\n";
        assert_eq!(bridge_addresses(out), ["10.242.0.1/16", "10.9.0.1/16"]);
        assert!(bridge_addresses("").is_empty());
    }

    #[test]
    fn sandbox_mac_is_stable_unicast_and_local() {
        let ip = std::net::Ipv4Addr::new(10, 88, 1, 7);
        assert_eq!(sandbox_mac(ip), "02:6b:0a:58:01:07");
        assert_eq!(sandbox_mac(ip), sandbox_mac(ip));
        assert_ne!(
            sandbox_mac(ip),
            sandbox_mac(std::net::Ipv4Addr::new(10, 88, 1, 8))
        );
    }

    #[test]
    fn ruleset_orders_offline_dns_denied() {
        let mut cfg = NetConfig::new("x1");
        cfg.dns = vec!["10.255.255.53".parse().unwrap()];
        let r = ruleset(&cfg, &[]);
        let pos = |s: &str| r.find(s).unwrap_or_else(|| panic!("{s} missing in\n{r}"));
        assert!(pos("@offline drop") < pos("udp dport 53 accept"));
        assert!(pos("tcp dport 53 accept") < pos("@denied drop"));
        assert!(pos("@denied drop") < pos("ip saddr 10.88.0.0/16 accept"));
        assert!(r.contains("iifname \"kb-x1\" ct state established,related accept"));
        assert!(r.contains("masquerade"));
        cfg.dns.clear();
        assert!(!ruleset(&cfg, &[]).contains("dport 53"));
        assert!(pos("@denied drop") < pos("@hostnets drop"));
        assert!(pos("@hostnets drop") < pos("ip saddr 10.88.0.0/16 accept"));
        assert!(r.contains("oifname \"kb-x1\" meta skuid != 0 drop"));
        let with = ruleset(&cfg, &[("198.51.100.0".parse().unwrap(), 24)]);
        assert!(
            with.contains(
                "set hostnets { type ipv4_addr; flags interval; elements = { 198.51.100.0/24 }; }"
            ),
            "{with}"
        );
    }
}
