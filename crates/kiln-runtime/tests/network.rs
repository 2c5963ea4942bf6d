//! Sandbox networking on the real kernel. Traffic only goes to loopback and
//! to namespaces this test makes: the "outside" host is a network namespace
//! joined to the host by a link on 198.18.<n>.0/24 (a benchmarking range),
//! serving at 198.19.<n>.2, one hop beyond it, reached through the host's
//! NAT. (Networks the host itself sits on, like the link, are denied to
//! sandboxes: the internet is beyond a router.)

mod common;

use std::process::{Child, Command};
use std::time::Duration;

use common::*;
use kiln_runtime::{EgressPolicy, Runtime};

/// A stand-in for the internet: a namespace with an HTTP server, joined to
/// the host by a veth pair. Removed on drop.
struct Outside {
    ns: String,
    veth: String,
    server: Child,
    addr: String,
}

impl Outside {
    fn new(n: u8) -> Self {
        let ns = format!("kiln-test-out{n}");
        let veth = format!("kto{n}");
        let host_ip = format!("198.18.{n}.1");
        let link_ip = format!("198.18.{n}.2");
        let out_ip = format!("198.19.{n}.2");
        let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        let _ = Command::new("ip").args(["link", "del", &veth]).status();
        let run = |args: &[&str]| {
            let st = Command::new("ip").args(args).status().unwrap();
            assert!(st.success(), "ip {args:?}");
        };
        run(&["netns", "add", &ns]);
        run(&[
            "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ]);
        run(&["addr", "add", &format!("{host_ip}/24"), "dev", &veth]);
        run(&["link", "set", &veth, "up"]);
        run(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{link_ip}/24"),
            "dev",
            "eth0",
        ]);
        run(&["-n", &ns, "link", "set", "eth0", "up"]);
        run(&["-n", &ns, "link", "set", "lo", "up"]);
        run(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{out_ip}/32"),
            "dev",
            "lo",
        ]);
        // Gone with the veth.
        run(&["route", "add", &format!("198.19.{n}.0/24"), "via", &link_ip]);
        let server = Command::new("ip")
            .args(["netns", "exec", &ns, "busybox", "httpd", "-f", "-p"])
            .arg(format!("{out_ip}:8080"))
            .args(["-h", "/"])
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        Self {
            ns,
            veth,
            server,
            addr: format!("{out_ip}:8080"),
        }
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = Command::new("ip")
            .args(["link", "del", &self.veth])
            .status();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_nat_and_isolation() {
    if !is_root() {
        return;
    }
    let outside = Outside::new(3);
    // A host service on every address and one on loopback.
    let any = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let any_port = any.local_addr().unwrap().port();
    let lo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let lo_port = lo.local_addr().unwrap().port();

    let cfg = config(3);
    let gateway = cfg.net.gateway();
    let bridge = cfg.net.bridge();
    let bridge_mac_path = format!("/sys/class/net/{bridge}/address");
    let t = TestRuntime::new(cfg).await;
    let rt = &t.rt;
    let bridge_mac = std::fs::read_to_string(&bridge_mac_path).unwrap();
    let a = rt.create(&spec("net-a")).await.unwrap();
    let b = rt.create(&spec("net-b")).await.unwrap();
    let mut off = spec("net-off");
    off.egress.internet = false;
    let c = rt.create(&off).await.unwrap();

    // The host reaches every sandbox, offline ones too.
    for h in [&a, &b, &c] {
        assert_eq!(ask(h.ip, "ping").await, "pong");
    }
    // Egress through NAT to the outside host.
    let r = ask(a.ip, &format!("connect {}", outside.addr)).await;
    assert_eq!(r, "ok", "online sandbox cannot reach the outside host");
    // Offline: no egress.
    let r = ask(c.ip, &format!("connect {}", outside.addr)).await;
    assert!(r.starts_with("err"), "offline sandbox reached outside: {r}");
    // Egress changes while the sandbox runs: on, then off again.
    rt.set_egress("net-off", &EgressPolicy::internet(true))
        .await
        .unwrap();
    let r = ask(c.ip, &format!("connect {}", outside.addr)).await;
    assert_eq!(r, "ok", "egress turned on, yet no connection: {r}");
    rt.set_egress("net-off", &EgressPolicy::internet(false))
        .await
        .unwrap();
    let r = ask(c.ip, &format!("connect {}", outside.addr)).await;
    assert!(
        r.starts_with("err"),
        "egress turned off, yet connected: {r}"
    );
    // Lists are not this runtime's: a clear refusal, not a silent no-op.
    let lists = EgressPolicy {
        internet: true,
        allow_out: vec!["192.0.2.0/24".into()],
        deny_out: vec![],
    };
    assert!(matches!(
        rt.set_egress("net-a", &lists).await,
        Err(kiln_runtime::RuntimeError::Unsupported { .. })
    ));
    // Host services: not through the bridge address, and the sandbox's
    // loopback is its own.
    for target in [
        format!("{gateway}:{any_port}"),
        format!("{gateway}:22"),
        format!("127.0.0.1:{lo_port}"),
        format!("127.0.0.1:{any_port}"),
    ] {
        let r = ask(a.ip, &format!("connect {target}")).await;
        assert!(r.starts_with("err"), "sandbox reached host {target}: {r}");
    }
    // Other sandboxes: unreachable, online or not.
    for other in [&b, &c] {
        let r = ask(a.ip, &format!("connect {}:49983", other.ip)).await;
        assert!(r.starts_with("err"), "a reached {}: {r}", other.ip);
    }
    let r = ask(c.ip, &format!("connect {}:49983", a.ip)).await;
    assert!(r.starts_with("err"), "c reached a: {r}");
    // The gateway's MAC stays put while sandboxes come and go (a bridge
    // takes its lowest port's MAC unless it has one of its own).
    let d = rt.create(&spec("net-d")).await.unwrap();
    assert_eq!(ask(d.ip, "ping").await, "pong");
    // The host's entry for a sandbox is permanent (no ARP, and not counted
    // against the neighbour table's thresholds).
    let neigh = |ip: std::net::IpAddr| {
        let out = Command::new("ip")
            .args(["neigh", "show", &ip.to_string(), "dev", &bridge])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(neigh(d.ip).contains("PERMANENT"), "{}", neigh(d.ip));
    rt.kill("net-d").await.unwrap();
    assert_eq!(
        std::fs::read_to_string(&bridge_mac_path).unwrap(),
        bridge_mac,
        "the bridge's MAC changed as ports came and went"
    );
    for h in [&a, &b, &c] {
        assert_eq!(ask(h.ip, "ping").await, "pong");
    }
    // Nothing reached the host's listener.
    assert!(
        tokio::time::timeout(Duration::from_millis(100), any.accept())
            .await
            .is_err(),
        "the host service got a connection from a sandbox"
    );
    t.finish().await;
    drop(outside);
}

/// A bridge of the same tag left by an earlier run on another subnet (a
/// kilnd that stopped with sandboxes running, or was killed) is readdressed:
/// this run's sandboxes are reached through it, not through the host's
/// default route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_bridge_of_another_subnet_is_readdressed() {
    if !is_root() {
        return;
    }
    let cfg = config(10);
    let bridge = cfg.net.bridge();
    let gateway = cfg.net.gateway();
    let run = |args: &[&str]| {
        let st = Command::new("ip").args(args).status().unwrap();
        assert!(st.success(), "ip {args:?}");
    };
    let _ = Command::new("ip").args(["link", "del", &bridge]).status();
    run(&["link", "add", &bridge, "type", "bridge"]);
    run(&["addr", "add", "10.219.0.1/16", "dev", &bridge]);
    run(&[
        "neigh",
        "replace",
        "10.219.0.9",
        "lladdr",
        "02:6b:0a:db:00:09",
        "dev",
        &bridge,
        "nud",
        "permanent",
    ]);
    run(&["link", "set", &bridge, "up"]);

    let t = TestRuntime::new(cfg).await;
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "dev", &bridge])
        .output()
        .unwrap();
    let addrs = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(addrs.contains(&format!("inet {gateway}/16 ")), "{addrs}");
    assert!(
        !addrs.contains("10.219."),
        "the old address stayed: {addrs}"
    );
    let out = Command::new("ip")
        .args(["neigh", "show", "10.219.0.9", "dev", &bridge])
        .output()
        .unwrap();
    assert!(out.stdout.is_empty(), "the old neighbour entry stayed");
    let a = t.rt.create(&spec("stale-a")).await.unwrap();
    assert_eq!(ask(a.ip, "ping").await, "pong");
    t.finish().await;
}
