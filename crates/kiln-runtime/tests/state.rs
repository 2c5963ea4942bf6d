//! The container runtime's durable state on the real kernel: filesystem
//! pause and resume, across a restart of the runtime and a crash in the
//! middle of a pause; snapshots as shared read-only layers, their
//! independence and deletion. (The checker binary stands in for the agent:
//! `sh <command>` runs a shell command inside.)

mod common;

use std::time::Duration;

use common::*;
use kiln_runtime::{Found, ResumeMode, Runtime, RuntimeError, StateMode};

async fn sh(ip: std::net::IpAddr, cmd: &str) -> String {
    let out = ask(ip, &format!("sh {cmd}")).await;
    // "exit=<code>\n<output>"
    out.split_once('\n')
        .map(|(_, o)| o.trim().to_owned())
        .unwrap_or_default()
}

fn snapshot_dirs(cfg_data: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(cfg_data.join("snapshots"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filesystem_pause_keeps_files_and_boots_anew_across_restarts() {
    if !is_root() {
        return;
    }
    let cfg = config(3);
    let tag = cfg.tag.clone();
    let t = TestRuntime::new(cfg.clone()).await;
    let rt = &t.rt;
    let h = rt.create(&spec("fsp-a")).await.unwrap();
    sh(h.ip, "echo kept > /root/f; echo gone > /tmp/m").await;
    assert_eq!(sh(h.ip, "cat /root/f /tmp/m").await, "kept\ngone");
    let cgroup_dirs = rt.cgroup_dirs("fsp-a").unwrap();
    assert!(!cgroup_dirs.is_empty());

    let p = rt.pause("fsp-a", StateMode::Filesystem).await.unwrap();
    assert!(p.durable);
    assert_eq!(p.mode, StateMode::Filesystem);
    assert_eq!(
        rt.list().await.unwrap(),
        vec![Found::Paused {
            id: "fsp-a".into(),
            mode: StateMode::Filesystem
        }]
    );
    // No process, cgroup or network of its own while paused.
    for d in &cgroup_dirs {
        assert!(!d.exists(), "{} is left while paused", d.display());
    }

    assert!(ask_timeout(h.ip, "ping", Duration::from_millis(300))
        .await
        .is_err());
    assert!(matches!(
        rt.pause("fsp-a", StateMode::Filesystem).await,
        Err(RuntimeError::NotFound(_))
    ));

    // The runtime (kilnd) stops and starts again: the paused one is found.
    rt.shutdown().await.unwrap();
    drop(t.abandon());
    let t = TestRuntime::new(cfg.clone()).await;
    let rt = &t.rt;
    assert!(rt.list().await.unwrap().contains(&Found::Paused {
        id: "fsp-a".into(),
        mode: StateMode::Filesystem
    }));
    let h = rt
        .resume(&spec("fsp-a"), ResumeMode::Restore)
        .await
        .unwrap();
    assert_eq!(sh(h.ip, "cat /root/f").await, "kept");
    assert_eq!(sh(h.ip, "cat /tmp/m 2>&1 | wc -l").await, "1");
    assert!(
        sh(h.ip, "ls /tmp").await.is_empty(),
        "a boot starts with an empty /tmp"
    );

    // A crash right after a pause began: recovery finishes it, disk kept.
    sh(h.ip, "echo second > /root/g").await;
    let state = cfg.data_dir.join("sandboxes/fsp-a/state.json");
    let json = std::fs::read_to_string(&state).unwrap();
    let crashed = json.replace("\"phase\": \"running\"", "\"phase\": \"pausing_fs\"");
    assert_ne!(json, crashed, "state.json names its phase: {json}");
    std::fs::write(&state, crashed).unwrap();
    // kilnd gone (its pools released first, so that no refill of this
    // in-process runtime races the next one); the sandbox's processes run on.
    rt.shutdown().await.unwrap();
    drop(t.abandon());
    let t = TestRuntime::new(cfg.clone()).await;
    let rt = &t.rt;
    assert!(rt.list().await.unwrap().contains(&Found::Paused {
        id: "fsp-a".into(),
        mode: StateMode::Filesystem
    }));
    let h = rt
        .resume(&spec("fsp-a"), ResumeMode::Restore)
        .await
        .unwrap();
    assert_eq!(sh(h.ip, "cat /root/f /root/g").await, "kept\nsecond");

    // A memory pause rebooted: memory (/tmp) goes, the disk stays.
    sh(h.ip, "echo mem > /tmp/m").await;
    rt.pause("fsp-a", StateMode::Memory).await.unwrap();
    let h = rt.resume(&spec("fsp-a"), ResumeMode::Reboot).await.unwrap();
    assert!(sh(h.ip, "ls /tmp").await.is_empty());
    assert_eq!(sh(h.ip, "cat /root/f").await, "kept");

    // Killing a paused one deletes it all.
    rt.pause("fsp-a", StateMode::Filesystem).await.unwrap();
    rt.kill("fsp-a").await.unwrap();
    assert!(rt.list().await.unwrap().is_empty());
    assert!(!cfg.data_dir.join("sandboxes/fsp-a").exists());
    t.finish().await;
    let after = host_count(&tag);
    assert_eq!(after.cgroups, 0, "{after:?}");
    assert_eq!(after.netns, 0, "{after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_are_shared_read_only_layers() {
    if !is_root() {
        return;
    }
    let cfg = config(4);
    let t = TestRuntime::new(cfg.clone()).await;
    let rt = &t.rt;
    let a = rt.create(&spec("snp-a")).await.unwrap();
    sh(
        a.ip,
        "echo 1 > /root/f; mkdir /root/d; echo x > /root/d/x; rm /etc/hostname",
    )
    .await;
    assert!(matches!(
        rt.snapshot("snp-a", "s1", StateMode::Memory).await,
        Err(RuntimeError::Unsupported { .. })
    ));
    let s1 = rt
        .snapshot("snp-a", "s1", StateMode::Filesystem)
        .await
        .unwrap();
    assert!(s1.size_bytes > 0 && s1.size_bytes < 64 << 20, "{s1:?}");
    assert_eq!(s1.content_hash.len(), 64);
    // The source goes on as it was.
    assert_eq!(sh(a.ip, "cat /root/f").await, "1");

    let b = rt.restore(&spec("snp-b"), "s1").await.unwrap();
    let c = rt.restore(&spec("snp-c"), "s1").await.unwrap();
    for h in [&b, &c] {
        assert_eq!(sh(h.ip, "cat /root/f /root/d/x").await, "1\nx");
        // A deletion in the layer stays deleted above it.
        assert_eq!(sh(h.ip, "ls /etc/hostname 2>/dev/null | wc -l").await, "0");
    }
    // Independent: each writes its own upper.
    sh(b.ip, "echo 2 > /root/f; rm /root/d/x").await;
    sh(a.ip, "echo 3 > /root/f").await;
    assert_eq!(sh(b.ip, "cat /root/f").await, "2");
    assert_eq!(sh(c.ip, "cat /root/f; ls /root/d").await, "1\nx");
    assert_eq!(sh(a.ip, "cat /root/f").await, "3");
    // The layer is read-only from inside too.
    assert!(sh(c.ip, "mount | grep -c ' / '").await != "0");

    // A snapshot of a sandbox made from a snapshot stacks on it.
    let _s2 = rt
        .snapshot("snp-b", "s2", StateMode::Filesystem)
        .await
        .unwrap();
    let d = rt.restore(&spec("snp-d"), "s2").await.unwrap();
    assert_eq!(sh(d.ip, "cat /root/f; ls /root/d | wc -l").await, "2\n0");
    // A paused sandbox's snapshot is of its kept disk.
    rt.pause("snp-c", StateMode::Filesystem).await.unwrap();
    rt.snapshot("snp-c", "s3", StateMode::Filesystem)
        .await
        .unwrap();
    let e = rt.restore(&spec("snp-e"), "s3").await.unwrap();
    assert_eq!(sh(e.ip, "cat /root/f").await, "1");

    // Deleting s1 keeps its files while sandboxes and s2, s3 stand on it.
    rt.delete_snapshot("s1").await.unwrap();
    let listed: Vec<String> = rt
        .list_snapshots()
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect();
    assert!(!listed.contains(&"s1".to_string()), "{listed:?}");
    assert!(matches!(
        rt.restore(&spec("snp-f"), "s1").await,
        Err(RuntimeError::SnapshotNotFound(_))
    ));
    assert!(snapshot_dirs(&cfg.data_dir).contains(&"s1".to_string()));
    assert_eq!(sh(b.ip, "cat /root/f").await, "2");
    // A resumed sandbox still stands on its layers.
    let c = rt
        .resume(&spec("snp-c"), ResumeMode::Restore)
        .await
        .unwrap();
    assert_eq!(sh(c.ip, "cat /root/f").await, "1");

    for id in ["snp-b", "snp-c", "snp-d", "snp-e"] {
        rt.kill(id).await.unwrap();
    }
    rt.delete_snapshot("s2").await.unwrap();
    rt.delete_snapshot("s3").await.unwrap();
    assert!(
        snapshot_dirs(&cfg.data_dir).is_empty(),
        "{:?}",
        snapshot_dirs(&cfg.data_dir)
    );
    assert!(rt.list_snapshots().await.unwrap().is_empty());
    t.finish().await;
}
