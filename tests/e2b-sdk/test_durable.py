"""Durable sandboxes through the unmodified e2b SDK: pause with memory and
keeping only the filesystem, snapshots that start any number of independent
sandboxes, fork, auto-resume, and pauses that survive a kill -9 of kilnd
and (filesystem ones) a simulated host reboot. Needs the real runtime."""

import os
import secrets
import signal
import time

import httpx
import pytest
from e2b import Sandbox

from conftest import free_port, free_subnet, kill_all, start_kilnd, stop_kilnd

RUNTIME = os.environ.get("KILN_E2E_RUNTIME", "container")
# The container runtime keeps memory only in its freezer (not across a host
# reboot) and no memory in snapshots: its forks boot on the copied disk.
# gvisor's snapshots and forks keep memory: the copies' processes run on.
MEMORY_SNAPSHOTS = RUNTIME != "container"
# gVisor (Debian's runsc, 2022-12-19) has no /proc/sys/kernel/random/boot_id
# at all: the sandbox's kernel is gVisor's own and shows nothing of the
# host's.
BOOT_ID = RUNTIME != "gvisor"
BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"


def api(kilnd, method, path, **kw):
    return httpx.request(method, f"{kilnd.url}{path}", headers={"X-API-KEY": kilnd.key}, timeout=60, **kw)


def info(kilnd, sid):
    r = api(kilnd, "GET", f"/sandboxes/{sid}")
    r.raise_for_status()
    return r.json()


def test_filesystem_pause_keeps_files_and_boots_anew(kilnd):
    sbx = Sandbox.create(timeout=300)
    try:
        sbx.files.write("/home/user/kept.txt", "on disk")
        sbx.commands.run("echo in-memory > /tmp/gone")
        sleeper = sbx.commands.run("sleep 1000", background=True)
        boot_id = sbx.files.read(BOOT_ID_PATH) if BOOT_ID else None
        assert sbx.pause(mode="filesystem")
        i = info(kilnd, sbx.sandbox_id)
        assert i["state"] == "paused" and i["pauseMode"] == "filesystem", i

        again = Sandbox.connect(sbx.sandbox_id)
        assert info(kilnd, sbx.sandbox_id)["state"] == "running"
        assert again.files.read("/home/user/kept.txt") == "on disk"
        assert not again.files.exists("/tmp/gone"), "memory (tmpfs) is not kept"
        assert all(p.pid != sleeper.pid or "sleep" not in p.cmd for p in again.commands.list())
        assert again.commands.run("echo up").stdout == "up\n"
        # A cold boot: the kernel's boot id of the sandbox changes.
        if BOOT_ID:
            assert again.files.read(BOOT_ID_PATH) != boot_id
    finally:
        sbx.kill()


def test_boot_id_is_each_sandboxes_own(kilnd):
    """/proc/sys/kernel/random/boot_id: the sandbox's own (not the host's,
    not another sandbox's), read-only, new at each cold start."""
    path = BOOT_ID_PATH
    host = open(path).read().strip()
    a, b = Sandbox.create(timeout=300), Sandbox.create(timeout=300)
    try:
        if not BOOT_ID:
            # Nothing to tell sandboxes apart by, and nothing of the host's.
            for s in (a, b):
                assert not s.files.exists(path)
                assert host not in s.commands.run(f"cat {path} 2>&1 || true").stdout
            return
        ida, idb = (s.files.read(path).strip() for s in (a, b))
        assert host not in (ida, idb), "a sandbox sees the host's boot id"
        assert ida != idb, "two sandboxes share a boot id"
        r = a.commands.run(f"echo 00000000-0000-4000-8000-000000000000 > {path} || echo refused", user="root")
        assert "refused" in r.stdout
        assert a.files.read(path).strip() == ida
        assert a.pause(mode="filesystem")
        again = Sandbox.connect(a.sandbox_id)
        assert again.files.read(path).strip() not in (ida, idb, host)
    finally:
        a.kill()
        b.kill()


def test_memory_pause_keeps_processes(kilnd):
    sbx = Sandbox.create(timeout=300)
    try:
        sleeper = sbx.commands.run("sleep 1000", background=True)
        sbx.commands.run("echo still > /tmp/m")
        assert sbx.pause()
        assert info(kilnd, sbx.sandbox_id)["pauseMode"] == "full"
        assert sbx.pause() is False, "pausing a paused sandbox answers 409, which the SDK reports as False"
        again = Sandbox.connect(sbx.sandbox_id)
        assert any(p.pid == sleeper.pid for p in again.commands.list())
        assert again.files.read("/tmp/m") == "still\n"
        # on_resume=reboot drops memory, keeps the disk.
        again.files.write("/home/user/f", "kept")
        assert again.pause()
        rebooted = Sandbox.connect(sbx.sandbox_id, on_resume="reboot")
        assert not rebooted.files.exists("/tmp/m")
        assert rebooted.files.read("/home/user/f") == "kept"
    finally:
        sbx.kill()


HOLD_LOOPBACK = """
import socket, time
a = socket.socket()
a.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
a.bind(("127.0.0.1", 7000))
a.listen()
b = socket.create_connection(("127.0.0.1", 7000))
c, _ = a.accept()
print("held", flush=True)
time.sleep(600)
"""


def test_a_connection_inside_and_a_memory_pause(kilnd):
    """The container runtime's memory pause (its freezer) keeps every
    socket. Debian's runsc cannot save a TCP connection the sandbox holds
    (here over its loopback; the code interpreter's kernel has such), and
    a save it refuses ends the sandbox's processes: on gVisor the pause is
    refused first (409 naming the connection) and the sandbox runs on
    untouched; once the connection is closed, it pauses with its memory."""
    sbx = Sandbox.create(timeout=300)
    try:
        sbx.files.write("/tmp/hold.py", HOLD_LOOPBACK)
        holder = sbx.commands.run("python3 /tmp/hold.py", background=True)
        deadline = time.monotonic() + 10
        while ":1B58 0100007F" not in sbx.commands.run("cat /proc/net/tcp").stdout and time.monotonic() < deadline:
            time.sleep(0.2)
        r = api(kilnd, "POST", f"/sandboxes/{sbx.sandbox_id}/pause")
        if RUNTIME == "gvisor":
            assert r.status_code == 409, r.text
            assert "127.0.0.1:7000" in r.json()["message"], r.text
            assert info(kilnd, sbx.sandbox_id)["state"] == "running"
            assert any(p.pid == holder.pid for p in sbx.commands.list()), "the holder did not run on"
            holder.kill()
            sleeper = sbx.commands.run("sleep 600", background=True)
            r = api(kilnd, "POST", f"/sandboxes/{sbx.sandbox_id}/pause")
            assert r.status_code == 204, r.text
            again = Sandbox.connect(sbx.sandbox_id)
            assert any(p.pid == sleeper.pid for p in again.commands.list()), "the memory was not kept"
        else:
            assert r.status_code == 204, r.text
            again = Sandbox.connect(sbx.sandbox_id)
            assert any(p.pid == holder.pid for p in again.commands.list())
    finally:
        sbx.kill()


def test_two_sandboxes_from_one_snapshot_are_independent(kilnd):
    src = Sandbox.create(timeout=300)
    made = []
    try:
        src.files.write("/home/user/state.txt", "v1")
        sleeper = src.commands.run("sleep 1000", background=True)
        snap = src.create_snapshot(name=f"snap-{secrets.token_hex(3)}")
        assert snap.snapshot_id.endswith(":default")
        src.files.write("/home/user/state.txt", "source moved on")
        for _ in range(2):
            made.append(Sandbox.create(snap.snapshot_id, timeout=300))
        a, b = made
        for s in made:
            # With memory, the source's processes run on in each.
            assert (sleeper.pid in [p.pid for p in s.commands.list()]) == MEMORY_SNAPSHOTS
        assert a.files.read("/home/user/state.txt") == "v1"
        a.files.write("/home/user/state.txt", "a")
        b.files.write("/home/user/b-only", "b")
        assert b.files.read("/home/user/state.txt") == "v1"
        assert not a.files.exists("/home/user/b-only")
        assert src.files.read("/home/user/state.txt") == "source moved on"
        listed = Sandbox.list_snapshots(sandbox_id=src.sandbox_id).next_items()
        assert [s.snapshot_id for s in listed] == [snap.snapshot_id]
        assert Sandbox.delete_snapshot(snap.snapshot_id)
        assert not Sandbox.delete_snapshot(snap.snapshot_id)
        # Sandboxes made from it live on; new ones cannot be made.
        assert a.files.read("/home/user/state.txt") == "a"
        with pytest.raises(Exception) as e:
            Sandbox.create(snap.snapshot_id)
        assert "not found" in str(e.value).lower()
    finally:
        for s in made + [src]:
            s.kill()


def counted(sbx):
    """The counter's value in /tmp/n (the shell truncates the file before it
    writes the next value: an empty read is read again)."""
    for _ in range(50):
        text = sbx.files.read("/tmp/n").strip()
        if text:
            return int(text)
        time.sleep(0.01)
    raise AssertionError("/tmp/n stayed empty: the counter does not run")


def test_fork_three_copies(kilnd):
    src = Sandbox.create(timeout=300)
    forks = []
    try:
        src.files.write("/home/user/f", "from the source")
        src.commands.run("echo mem > /tmp/m")
        # A process with a value only in its memory: a counter in a shell.
        counter = src.commands.run(
            "n=0; while :; do n=$((n+1)); echo $n > /tmp/n; sleep 0.05; done", background=True
        )
        time.sleep(0.3)
        forks = src.fork(count=3, timeout=120)
        assert len(forks) == 3
        assert all(isinstance(f, Sandbox) for f in forks), forks
        assert len({f.sandbox_id for f in forks} | {src.sandbox_id}) == 4
        for i, f in enumerate(forks):
            assert f.files.read("/home/user/f") == "from the source"
            f.files.write("/home/user/f", f"fork {i}")
            assert f.files.exists("/tmp/m") == MEMORY_SNAPSHOTS
            pids = [p.pid for p in f.commands.list()]
            assert (counter.pid in pids) == MEMORY_SNAPSHOTS, pids
        if MEMORY_SNAPSHOTS:
            # Each copy's counter runs on in that copy, from the value it
            # had in the source's memory.
            first = [counted(f) for f in forks]
            time.sleep(0.5)
            later = [counted(f) for f in forks]
            assert all(b > a for a, b in zip(first, later)), (first, later)
            # Each copy's agent has its own token; the source's opens none.
            for f in forks:
                assert f._envd_access_token != src._envd_access_token
                r = httpx.get(
                    f"{kilnd.url}/files",
                    params={"path": "/home/user/f"},
                    headers={
                        "E2b-Sandbox-Id": f.sandbox_id,
                        "E2b-Sandbox-Port": "49983",
                        "X-Access-Token": src._envd_access_token,
                    },
                )
                assert r.status_code == 401, r.text
        assert [f.files.read("/home/user/f") for f in forks] == ["fork 0", "fork 1", "fork 2"]
        assert src.files.read("/home/user/f") == "from the source"
        assert src.commands.run("echo running").stdout == "running\n"
        assert counter.pid in [p.pid for p in src.commands.list()]
        # The fork's snapshot is not left listed.
        assert Sandbox.list_snapshots(sandbox_id=src.sandbox_id).next_items() == []
    finally:
        for s in forks + [src]:
            if isinstance(s, Sandbox):
                s.kill()


def test_bad_input_answers_409_404_400(kilnd):
    sbx = Sandbox.create(timeout=120)
    try:
        r = api(kilnd, "POST", f"/sandboxes/{sbx.sandbox_id}/resume")
        assert r.status_code == 409, r.text
        r = api(kilnd, "POST", "/v2/sandboxes", json={"templateID": "snapnosuchthing:default"})
        assert r.status_code == 404, r.text
        r = api(kilnd, "POST", f"/sandboxes/{sbx.sandbox_id}/fork", json={"count": 101})
        assert r.status_code == 400, r.text
        r = api(kilnd, "POST", f"/sandboxes/{sbx.sandbox_id}/snapshots", json={"name": "no/slash"})
        assert r.status_code == 400, r.text
        r = api(kilnd, "DELETE", "/templates/snapnosuchthing")
        assert r.status_code == 404, r.text
    finally:
        sbx.kill()


def test_traffic_resumes_an_auto_resume_sandbox(kilnd):
    sbx = Sandbox.create(timeout=300, lifecycle={"on_timeout": "pause", "auto_resume": True})
    try:
        sbx.files.write("/home/user/f", "here")
        assert sbx.pause()
        assert info(kilnd, sbx.sandbox_id)["state"] == "paused"
        # The SDK's next call reaches the proxy, which resumes it.
        assert sbx.files.read("/home/user/f") == "here"
        assert info(kilnd, sbx.sandbox_id)["state"] == "running"
    finally:
        sbx.kill()


def power_off_sandboxes(tag):
    """What a host reboot does to the tag's sandboxes: every process dies,
    frozen ones too (thawed first: a frozen task cannot die)."""
    pids = set()
    for root, _dirs, files in os.walk("/sys/fs/cgroup"):
        # The gVisor runtime's cgroups carry the tag with a `g`.
        if f"/kiln/{tag}/" not in root + "/" and f"/kiln/{tag[:3]}g/" not in root + "/":
            continue
        for knob, thawed in (("freezer.state", "THAWED"), ("cgroup.freeze", "0")):
            if knob in files:
                try:
                    open(os.path.join(root, knob), "w").write(thawed)
                except OSError:
                    pass
        if "cgroup.procs" in files:
            try:
                pids |= {int(p) for p in open(os.path.join(root, "cgroup.procs")).read().split()}
            except OSError:
                pass
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_pauses_survive_kill9_of_kilnd_and_a_simulated_reboot(tmp_path, kilnd):
    port = free_port()
    key = "e2b_" + secrets.token_hex(20)
    url = f"http://127.0.0.1:{port}"
    tag = "e2p"
    # No warm code-interpreter sandboxes: kill -9 would cut one off half made.
    subnet = free_subnet()
    # The same subnets at every start, as a user's kilnd keeps its config:
    # sandboxes that run on across a kill -9 (the gVisor warm pool's) keep
    # their addresses.
    extra = dict(
        KILN_RUNTIME_TAG=tag,
        KILN_SUBNET=subnet,
        KILN_GVISOR_SUBNET=free_subnet(avoid=(subnet,)),
        KILN_INTERPRETER_WARM_POOL="0",
    )
    opts = dict(api_key=key, api_url=url, sandbox_url=url)
    headers = {"X-API-KEY": key}
    proc = start_kilnd(tmp_path, port, key, **extra)
    try:
        mem = Sandbox.create(timeout=600, **opts)
        sleeper = mem.commands.run("sleep 1000", background=True)
        mem.commands.run("python3 -c 'import os; open(\"/tmp/v\",\"w\").write(str(os.getpid()))'")
        disk = Sandbox.create(timeout=600, **opts)
        disk.files.write("/home/user/f", "survives reboots")
        assert mem.pause(**opts)
        assert disk.pause(mode="filesystem", **opts)

        # kill -9 of kilnd, then a start on the same data dir.
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        proc = start_kilnd(tmp_path, port, key, **extra)
        listed = httpx.get(f"{url}/v2/sandboxes", params={"state": "paused"}, headers=headers).json()
        assert {s["sandboxID"] for s in listed} == {mem.sandbox_id, disk.sandbox_id}
        back = Sandbox.connect(mem.sandbox_id, **opts)
        assert any(p.pid == sleeper.pid for p in back.commands.list()), "same process, same pid"
        assert back.files.read("/tmp/v").strip().isdigit()
        assert Sandbox.connect(disk.sandbox_id, **opts).files.read("/home/user/f") == "survives reboots"

        # A simulated host reboot: kilnd and every sandbox process die.
        assert back.pause(**opts)
        assert Sandbox.connect(disk.sandbox_id, **opts).pause(mode="filesystem", **opts)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        power_off_sandboxes(tag)
        time.sleep(0.5)
        proc = start_kilnd(tmp_path, port, key, **extra)
        listed = httpx.get(f"{url}/v2/sandboxes", params={"state": "paused"}, headers=headers).json()
        ids = {s["sandboxID"] for s in listed}
        assert disk.sandbox_id in ids
        if RUNTIME == "container":
            # Its memory pause lived in the host's memory: lost, and said so.
            assert mem.sandbox_id not in ids
            r = httpx.get(f"{url}/sandboxes/{mem.sandbox_id}", headers=headers)
            assert r.status_code == 404
        else:
            # Its memory pause is a checkpoint on disk: back, same process.
            assert mem.sandbox_id in ids
            again = Sandbox.connect(mem.sandbox_id, **opts)
            assert any(p.pid == sleeper.pid for p in again.commands.list()), "same process after a reboot"
        assert Sandbox.connect(disk.sandbox_id, **opts).files.read("/home/user/f") == "survives reboots"
    finally:
        kill_all(url, key)
        stop_kilnd(proc, tmp_path / "kilnd.log")
