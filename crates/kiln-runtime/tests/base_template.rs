//! The base template, built with mmdebstrap, run in the container runtime.
//! Building takes a minute or two the first time, so this runs only with
//! `KILN_TEST_BASE_TEMPLATE=1` (scripts/test.d/30-runtime.sh sets it) or
//! when the template is already cached. Cache: `$KILN_DATA_DIR`, default
//! /var/lib/kiln.

mod common;

use std::path::PathBuf;

use common::*;
use kiln_runtime::container::DEFAULT_UID_BASE;
use kiln_runtime::{Runtime, TemplateRef};

struct Print;

impl kiln_template::Progress for Print {
    fn phase(&self, message: &str) {
        println!("template: {message}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn base_template_works_in_a_sandbox() {
    if !is_root() {
        return;
    }
    let data = PathBuf::from(std::env::var("KILN_DATA_DIR").unwrap_or("/var/lib/kiln".into()));
    let recipe = kiln_template::Recipe::base(DEFAULT_UID_BASE);
    let cached = data
        .join("templates")
        .join(format!("base-{}", recipe.hash()))
        .is_dir();
    if !cached && std::env::var("KILN_TEST_BASE_TEMPLATE").as_deref() != Ok("1") {
        eprintln!("skipped: base template not built (set KILN_TEST_BASE_TEMPLATE=1 to build it)");
        return;
    }
    let tpl = tokio::task::spawn_blocking(move || {
        kiln_template::ensure_base(&data, DEFAULT_UID_BASE, &Print)
    })
    .await
    .unwrap()
    .expect("base template builds");

    let t = TestRuntime::new(config(7)).await;
    let rt = &t.rt;
    let mut s = spec("base-1");
    s.template = TemplateRef {
        id: tpl.id.clone(),
        rootfs: tpl.rootfs.clone(),
    };
    s.memory_mib = 512;
    s.disk_mib = 512;
    let h = rt.create(&s).await.expect("create from the base template");
    let sh = |cmd: &'static str| async move {
        let r = ask(h.ip, &format!("sh {cmd}")).await;
        println!("$ {cmd}\n{r}");
        r
    };
    let r = sh("runuser -u user -- sudo -n id -u").await;
    assert!(r.starts_with("exit=0\n0"), "sudo as user: {r}");
    let r = sh("runuser -u user -- sudo -n cat /proc/self/uid_map").await;
    // "0 <host uid> 65536": the sandbox's own range.
    assert!(
        r.split_whitespace()
            .nth(2)
            .and_then(|w| w.parse().ok())
            .is_some_and(kiln_runtime::host::uidrange::is_sandbox_uid),
        "root via sudo is mapped to the sandbox's unprivileged range: {r}"
    );
    let r = sh("id user").await;
    assert!(r.contains("uid=1000(user)"), "{r}");
    let r = sh("stat -c %U /home/user").await;
    assert!(r.contains("\nuser"), "{r}");
    for cmd in [
        "python --version",
        "pip --version",
        "node --version",
        "npm --version",
        "git --version",
        "curl --version",
        "tput -T xterm cols",
        "ps -e",
        "ip addr show eth0",
    ] {
        let r = sh(cmd).await;
        assert!(r.starts_with("exit=0"), "{cmd}: {r}");
    }
    let r = sh("python -m venv /tmp/v && /tmp/v/bin/python -c 'print(6*7)'").await;
    assert!(r.starts_with("exit=0\n42"), "{r}");
    let r = sh(
        "runuser -u user -- sh -c 'cd && echo hi > f && setfattr -n user.k -v v f && getfattr --only-values -n user.k f'",
    )
    .await;
    assert!(
        r.starts_with("exit=0\nv"),
        "user xattrs on the root fs: {r}"
    );
    let r = sh("LANG=C.UTF-8 python -c 'print(\"\\u00e9\")'").await;
    assert!(r.starts_with("exit=0\né"), "{r}");
    rt.kill("base-1").await.unwrap();
    t.finish().await;
}
