//! 100 sandboxes created and killed leave nothing behind: mounts, network
//! namespaces, veths, cgroups, loop devices, processes. Its own test binary,
//! so that no other test's sandboxes run while it counts.

mod common;

use std::time::{Duration, Instant};

use common::*;
use kiln_runtime::Runtime;

fn loop_devices() -> usize {
    std::fs::read_dir("/sys/block")
        .unwrap()
        .flatten()
        .filter(|e| e.path().join("loop/backing_file").exists())
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_kill_100_leaves_nothing() {
    if !is_root() {
        return;
    }
    let tag = "t5";
    let before = (host_count(tag), loop_devices());
    let t = TestRuntime::new(config(5)).await;
    let rt = &t.rt;
    let mut lat = Vec::new();
    for i in 0..100 {
        let id = format!("leak-{i}");
        let start = Instant::now();
        let h = rt.create(&spec(&id)).await.unwrap();
        assert_eq!(ask(h.ip, "ping").await, "pong");
        lat.push(start.elapsed());
        if i % 10 == 0 {
            // Some sandboxes die with children and files around.
            ask(h.ip, "sh sleep 100 >/dev/null 2>&1 & dd if=/dev/zero of=/f bs=1M count=4 2>/dev/null; echo").await;
        }
        rt.kill(&id).await.unwrap();
    }
    t.finish().await;
    // No sandbox directory (upper layer, disk image, state) or pooled disk.
    let data = config(5).data_dir;
    for d in ["sandboxes", "disk-pool"] {
        let left: Vec<_> = std::fs::read_dir(data.join(d))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n != "skel")
                    .collect()
            })
            .unwrap_or_default();
        assert!(left.is_empty(), "left in {d}: {left:?}");
    }
    lat.sort();
    println!(
        "create -> agent answering (debug build): p50 {:?}, p99 {:?}",
        lat[49], lat[98]
    );
    // Loop devices and namespaces are torn down by the kernel right after
    // the last process goes; give it a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let after = (host_count(tag), loop_devices());
        if after == before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "left behind: before {before:?}, after {after:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
