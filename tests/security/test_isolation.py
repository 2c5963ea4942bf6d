"""What a sandbox must not share with the host or with other sandboxes:
descriptors the host held, host paths in its mount table, the host's boot
id, kilnd's session, device nodes beyond its minimal /dev. Each is
checked from inside, as an attacker in the sandbox would look."""

import json
import os
import pathlib

from harness import ROOT, RUNTIME, run_py, sh, template_dir

# Lists, inside: this process's open descriptors (without the one listing
# them), and every descriptor of every process it may look at, as
# {pid: {fd: target}}.
FDS = """
import json, os
mine = []
for fd in os.listdir("/proc/self/fd"):
    try:
        os.fstat(int(fd))
        mine.append(int(fd))
    except OSError:
        pass  # the descriptor os.listdir used, closed by now
seen = {}
for p in os.listdir("/proc"):
    if not p.isdigit():
        continue
    try:
        seen[p] = {fd: os.readlink(f"/proc/{p}/fd/{fd}") for fd in os.listdir(f"/proc/{p}/fd")}
    except OSError:
        pass
print(json.dumps({"mine": sorted(mine), "seen": seen}))
"""


def test_no_host_descriptor_reaches_the_sandbox(kilnd, new_sandbox):
    """kilnd holds an inheritable pipe (conftest): no process inside may
    have it, and a command has exactly stdin, stdout and stderr."""
    sbx = new_sandbox()
    leaked = f"pipe:[{kilnd.leaked_pipe}]"
    sbx.commands.run("sleep 300", background=True, user="user")
    for user in ("root", "user"):
        code, out, err = run_py(sbx, FDS, user=user)
        assert code == 0, err
        got = json.loads(out)
        assert got["mine"] == [0, 1, 2], f"a command as {user} has descriptors {got['mine']}: {got['seen']}"
        holders = [p for p, fds in got["seen"].items() if leaked in fds.values()]
        assert not holders, f"processes {holders} inside hold kilnd's inherited pipe {leaked}"
    # A write from inside reaches nothing on the host.
    os.set_blocking(kilnd.leaked_pipe_reader, False)
    sh(sbx, "for f in /proc/self/fd/*; do echo pwned > $f; done 2>/dev/null; true")
    try:
        data = os.read(kilnd.leaked_pipe_reader, 4096)
    except BlockingIOError:
        data = b""
    assert b"pwned" not in data, "a write from inside the sandbox reached the host's pipe"


def host_paths(kilnd):
    """Host paths a sandbox's mount table must not name: the data dir, the
    template dir, the checkout (where the agent is built)."""
    return [str(kilnd.data), str(pathlib.Path(template_dir()).resolve()), str(ROOT)]


def test_mount_table_names_no_host_path(kilnd, new_sandbox):
    sbx = new_sandbox()
    code, out, _ = sh(sbx, "cat /proc/self/mountinfo")
    assert code == 0
    for line in out.splitlines():
        for p in host_paths(kilnd):
            assert p not in line, f"the sandbox's mount table shows the host path {p}: {line}"
        fields = line.split(" - ")
        source = fields[1].split()[1]
        assert not source.startswith("/dev/"), f"the sandbox's mount table shows a host device: {line}"
        root = line.split()[3]
        assert not root.startswith(("/var/", "/work/", "/home/", "/root/", "/tmp/", "/srv/")), \
            f"the sandbox's mount table shows a host path as a mount's root: {line}"
    # The agent (and any other bound file) comes from a neutral source.
    agent = [l for l in out.splitlines() if l.split()[4].endswith("/kiln-agent")]
    # gVisor names every file mount it serves through its gofer "none".
    neutral = "none" if RUNTIME == "gvisor" else "kiln"
    assert agent and all(l.split(" - ")[1].split()[1] == neutral for l in agent), agent


BOOT_ID = "/proc/sys/kernel/random/boot_id"


def test_boot_id_is_the_sandboxes_own(kilnd, new_sandbox):
    host = pathlib.Path(BOOT_ID).read_text().strip()
    a, b = new_sandbox(), new_sandbox()
    if RUNTIME == "gvisor":
        # Debian's runsc has no boot id at all (docs/compatibility.md):
        # nothing of the host's shows there either.
        for s in (a, b):
            _, out, _ = sh(s, f"cat {BOOT_ID}")
            assert host not in out, "a sandbox sees the host's boot id"
        return
    ids = [s.commands.run(f"cat {BOOT_ID}").stdout.strip() for s in (a, b)]
    assert host not in ids, "a sandbox sees the host's boot id"
    assert ids[0] != ids[1], "two sandboxes share a boot id"
    assert len(ids[0]) == 36 and ids[0].count("-") == 4, ids[0]
    code, _, _ = sh(a, f"echo 00000000-0000-4000-8000-000000000000 > {BOOT_ID}")
    assert code != 0, "root inside rewrote its boot id"
    assert a.commands.run(f"cat {BOOT_ID}").stdout.strip() == ids[0]


def test_agent_has_a_session_of_its_own(new_sandbox):
    """The agent (pid 1 inside) leads its own session, with no controlling
    terminal: kilnd's terminal, if it has one, is out of reach (TIOCSTI)."""
    sbx = new_sandbox()
    code, out, err = run_py(sbx, """
import os
stat = open("/proc/1/stat").read()
fields = stat[stat.rfind(")") + 2:].split()
print(os.getsid(1), fields[4])  # session, tty_nr
""")
    assert code == 0, err
    sid, tty = out.split()
    assert sid == "1", f"the agent's session leader is outside the sandbox (getsid(1) = {sid})"
    assert tty == "0", f"the agent has a controlling terminal ({tty})"
    code, _, _ = sh(sbx, "exec 3<>/dev/tty", user="root")
    assert code != 0, "a command inside opened a controlling terminal it was not given"


def test_devices_are_limited_to_the_minimal_dev(kilnd, new_sandbox, marker):
    """Cgroup v1: the sandbox's devices cgroup lets it open only the
    character devices of its /dev (a device node in a template is dead). On
    gVisor the cgroup holds the sandbox's kernel (the sentry) and its gofer,
    which open no host device once booted; the sandbox's /dev is its
    kernel's own, where a device node made inside reaches nothing."""
    if not pathlib.Path("/sys/fs/cgroup/devices/cgroup.procs").exists():
        import pytest

        pytest.skip("cgroup v2 host: the device filter (a BPF program) is not implemented")
    from harness import gvisor_tag, sandbox_pids, tag_sentries

    sbx = new_sandbox()
    if RUNTIME == "gvisor":
        pids = tag_sentries(kilnd.tag, sbx.sandbox_id)
        assert len(pids) == 1, f"the sandbox's sentry is not found on the host: {pids}"
    else:
        sbx.commands.run(f"exec -a {marker} sleep 300", background=True)
        import time

        for _ in range(50):
            pids = sandbox_pids(marker)
            if pids:
                break
            time.sleep(0.1)
        assert pids, "the sandbox's sleep is not visible on the host"
    path = next(l.split(":", 2)[2] for l in pathlib.Path(f"/proc/{pids[0]}/cgroup").read_text().splitlines()
                if "devices" in l.split(":")[1].split(","))
    own = f"/kiln/{gvisor_tag(kilnd.tag)}/{sbx.sandbox_id}" if RUNTIME == "gvisor" else f"/kiln/{kilnd.tag}/"
    assert path.startswith(own), f"the sandbox is not in a devices cgroup of its own: {path}"
    rules = set(pathlib.Path(f"/sys/fs/cgroup/devices{path}/devices.list").read_text().split("\n")) - {""}
    assert rules == {"c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm", "c 1:9 rwm", "c 5:0 rwm",
                     "c 5:2 rwm", "c 136:* rwm"}, rules
    # From inside: its own devices work.
    code, out, err = sh(sbx, "head -c 4 /dev/urandom | wc -c; echo x > /dev/null && echo ok; "
                             "grep ' / / ' /proc/self/mountinfo")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[:2] == ["4", "ok"], out
    if RUNTIME == "gvisor":
        # A node for the host's memory (1:1) and first disk (8:0), made by
        # root inside (CAP_MKNOD), opens nothing.
        code, out, err = sh(sbx, "mknod /tmp/mem c 1 1 && mknod /tmp/sda b 8 0 && "
                                 "for d in /tmp/mem /tmp/sda; do head -c 1 $d >/dev/null 2>&1 && echo $d opened; done; "
                                 "echo done")
        assert code == 0, err
        assert out == "done\n", f"a device node made inside opened: {out}"
    else:
        assert "nodev" in lines[2].split()[5], f"the root filesystem allows device nodes: {lines[2]}"
