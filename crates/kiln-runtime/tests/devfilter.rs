//! cgroup v2's device filter (host/devfilter.rs) on the real kernel: a
//! process in a cgroup with the filter opens the allowed devices and no
//! other, and can make no device node. Needs root and a cgroup2 mount (a
//! v2 host's /sys/fs/cgroup, or a hybrid host's /sys/fs/cgroup/unified).

#![allow(unsafe_code)]

use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;
use std::process::Command;

use kiln_runtime::host::devfilter;

fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mounts.lines().find_map(|l| {
        let fields: Vec<&str> = l.split_whitespace().collect();
        let sep = fields.iter().position(|f| *f == "-")?;
        (fields.get(sep + 1) == Some(&"cgroup2")).then(|| PathBuf::from(fields[4]))
    })
}

/// Runs `script` with sh inside `cgroup`; returns (success, stderr).
fn run_in(cgroup: &std::path::Path, script: &str) -> (bool, String) {
    let procs = cgroup.join("cgroup.procs");
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("echo $$ > {} && {script}", procs.display()))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_filtered_cgroup_opens_only_the_allowed_devices() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root");
        return;
    }
    let Some(root) = cgroup2_mount() else {
        eprintln!("skipped: no cgroup2 mount on this host");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let nodes = [("null", 1, 3), ("kmsg", 1, 11), ("full", 1, 7)];
    for (name, major, minor) in nodes {
        let path = std::ffi::CString::new(dir.path().join(name).to_str().unwrap()).unwrap();
        // SAFETY: mknod with a valid path.
        let rc = unsafe {
            libc::mknod(
                path.as_ptr(),
                libc::S_IFCHR | 0o666,
                libc::makedev(major, minor),
            )
        };
        assert_eq!(rc, 0, "mknod {name}: {}", std::io::Error::last_os_error());
        assert!(std::fs::metadata(dir.path().join(name))
            .unwrap()
            .file_type()
            .is_char_device());
    }
    let cgroup = root.join(format!("kiln-devfilter-test-{}", std::process::id()));
    std::fs::create_dir(&cgroup).unwrap();
    let result = std::panic::catch_unwind(|| {
        let d = dir.path().display();
        // Unfiltered, the test's nodes open (the host lets root open them).
        let (ok, err) = run_in(&cgroup, &format!("head -c0 {d}/kmsg"));
        if !ok {
            eprintln!("skipped: this host denies /dev/kmsg-like nodes already: {err}");
            return;
        }
        devfilter::attach(&cgroup).expect("attach the device filter");
        let (ok, err) = run_in(&cgroup, &format!("head -c1 {d}/null && head -c1 {d}/full"));
        assert!(ok, "an allowed device did not open: {err}");
        let (ok, err) = run_in(&cgroup, &format!("head -c0 {d}/kmsg"));
        assert!(!ok, "a device outside the list opened");
        assert!(err.contains("not permitted"), "{err}");
        let (ok, err) = run_in(&cgroup, &format!("mknod {d}/made c 1 1"));
        assert!(!ok, "a device node was made in a filtered cgroup");
        assert!(err.contains("not permitted"), "{err}");
    });
    let _ = std::fs::remove_dir(&cgroup);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
