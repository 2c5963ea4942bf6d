"""Escape attempts from inside a sandbox of a real kilnd, as root inside:
each must be refused, and where it could have touched the host, the host
is checked too. The only outside address ever tried is 169.254.169.254
(a connect that must fail); everything else is this host's loopback, the
sandbox bridge, and other sandboxes."""

import hashlib
import json
import os
import pathlib
import secrets
import socket
import threading

import httpx
import pytest
from e2b import NotFoundException

from harness import RUNTIME, run_py, sh

# Runs inside: tries to connect to each (host, port); prints {target: result}.
CONNECT = """
import json, socket, sys
out = {}
for target in json.loads(sys.argv[1]):
    host, port = target.rsplit(":", 1)
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect((host, int(port)))
        out[target] = "connected"
    except OSError as e:
        out[target] = type(e).__name__
    finally:
        s.close()
print(json.dumps(out))
"""


def connect_from(sbx, targets):
    path = f"/tmp/connect-{secrets.token_hex(4)}.py"
    sbx.files.write(path, CONNECT, user="root")
    r = sbx.commands.run(f"python3 {path} '{json.dumps(targets)}'", user="root", timeout=60)
    return json.loads(r.stdout)


def own_ip_and_gateway(sbx):
    r = sbx.commands.run("ip -4 -o addr show eth0; ip route show default", user="root")
    lines = r.stdout.splitlines()
    ip = lines[0].split()[3].split("/")[0]
    gw = lines[1].split()[2]
    return ip, gw


@pytest.fixture(scope="module")
def sbx(kilnd):
    from e2b import Sandbox

    s = Sandbox.create(timeout=600, **kilnd.sdk_opts())
    yield s
    s.kill()


@pytest.fixture
def host_listener():
    """TCP servers on the host: one on 127.0.0.1, one on every address.
    Counts the connections they accept."""
    accepted = []
    socks = []
    for addr in ("127.0.0.1", "0.0.0.0"):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((addr, 0))
        s.listen(16)
        s.settimeout(0.2)
        socks.append(s)
    stop = threading.Event()

    def serve(s):
        while not stop.is_set():
            try:
                c, peer = s.accept()
                accepted.append(peer)
                c.close()
            except OSError:
                pass

    threads = [threading.Thread(target=serve, args=(s,), daemon=True) for s in socks]
    for t in threads:
        t.start()
    yield [s.getsockname()[1] for s in socks], accepted
    stop.set()
    for t in threads:
        t.join(timeout=2)
    for s in socks:
        s.close()


def test_mount_is_refused(sbx):
    for cmd in ("mount -t tmpfs none /mnt", "mount --bind /etc /mnt", "mount -o remount,rw /sys", "umount /proc"):
        code, _, err = sh(sbx, cmd)
        assert code != 0, f"{cmd} succeeded inside the sandbox"
    code, out, _ = sh(sbx, "grep -c ' /mnt ' /proc/self/mountinfo || true")
    assert out.strip() == "0"


def test_nested_user_namespaces_are_refused(kilnd, sbx):
    """On the container runtime every namespace a sandbox asks for would be
    the host kernel's: refused. gVisor's kernel implements user and network
    namespaces itself (and refuses mount namespaces): there the check is
    that one made inside is no namespace of the host's."""
    if RUNTIME == "gvisor":
        return nested_namespaces_stay_in_gvisor(kilnd, sbx)
    for cmd in ("unshare -U true", "unshare -Ur true", "unshare -Urm sh -c 'mount -t tmpfs none /mnt'",
                "unshare -Urn true", "unshare -m true", "unshare -n true"):
        code, _, _ = sh(sbx, cmd)
        assert code != 0, f"{cmd} succeeded inside the sandbox"
    # clone(CLONE_NEWUSER) directly, not only unshare(1).
    code, out, _ = run_py(sbx, """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
r = libc.unshare(0x10000000)  # CLONE_NEWUSER
print(r, ctypes.get_errno())
""")
    r, errno = map(int, out.split())
    assert r == -1 and errno != 0


NAMESPACES = ("user", "mnt", "net", "pid", "ipc", "uts", "cgroup")


def host_namespaces(kilnd, sbx):
    """The host namespaces (by inode) the sandbox's host processes (its
    sentry, gofer and stub processes) are in."""
    from harness import cgroup_pids, gvisor_tag

    found = set()
    for pid in cgroup_pids(kilnd.tag, f"/kiln/{gvisor_tag(kilnd.tag)}/{sbx.sandbox_id}"):
        for ns in NAMESPACES:
            try:
                found.add(os.readlink(f"/proc/{pid}/ns/{ns}"))
            except OSError:
                pass
    return found


def nested_namespaces_stay_in_gvisor(kilnd, sbx):
    before = host_namespaces(kilnd, sbx)
    assert before, "no host process of the sandbox found"
    # Mount namespaces are refused; user and network ones are gVisor's.
    for cmd in ("unshare -m true", "unshare -Urm sh -c 'mount -t tmpfs none /mnt'", "unshare -n true"):
        code, _, _ = sh(sbx, cmd)
        assert code != 0, f"{cmd} succeeded inside the sandbox"
    holders = [
        "unshare -Ur sleep 30",
        "unshare -Urn sleep 30",
        "python3 -c 'import ctypes, time; ctypes.CDLL(None).unshare(0x10000000); time.sleep(30)'",
    ]
    for cmd in holders:
        sbx.commands.run(cmd, background=True, timeout=0)
    # Each holder is in a user namespace of its own inside.
    code, out, err = sh(sbx, "sleep 1; for p in $(pgrep -x sleep) $(pgrep -x python3); do "
                             "[ \"$(readlink /proc/$p/ns/user)\" != \"$(readlink /proc/self/ns/user)\" ] "
                             "&& echo nested; done | wc -l")
    assert out.strip() == "3", f"the namespace holders are not all in nested namespaces: {out} {err}"
    after = host_namespaces(kilnd, sbx)
    assert after <= before, f"namespaces made inside reached the host: {sorted(after - before)}"
    sh(sbx, "pkill -f 'sleep 30'; pkill -f 'import ctypes'; true")


PTRACE_INIT = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
r = libc.ptrace(16, 1, None, None)  # PTRACE_ATTACH to the init (the agent)
errno = ctypes.get_errno()
if r == 0:  # put it back running, or the sandbox hangs
    os.waitpid(1, 0x40000000)  # __WALL
    libc.ptrace(17, 1, None, None)  # PTRACE_DETACH
print(r, errno)
"""


def test_ptrace_of_other_processes_is_refused(sbx):
    # As the sandbox's user: the agent (root) and root's processes.
    sbx.commands.run("sleep 300", background=True, user="root")
    code, out, _ = run_py(sbx, PTRACE_INIT, user="user")
    r, errno = map(int, out.split())
    assert r == -1 and errno == 1, "the sandbox's user attached to its init"
    code, out, _ = run_py(sbx, """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
def comm(p):
    try:
        return open(f"/proc/{p}/comm").read().strip()
    except OSError:
        return ""
pids = [int(p) for p in os.listdir("/proc") if p.isdigit() and comm(p) == "sleep"]
print(libc.ptrace(16, pids[0], None, None), ctypes.get_errno())
""", user="user")
    r, errno = map(int, out.split())
    assert r == -1, "the sandbox's user attached to a root process"
    # Host processes are not there to trace: only the sandbox's own.
    code, out, _ = run_py(sbx, """
import json, os
comms = []
for p in os.listdir("/proc"):
    if p.isdigit():
        try:
            comms.append(open(f"/proc/{p}/comm").read().strip())
        except OSError:
            pass
print(json.dumps(comms))
""")
    comms = json.loads(out)
    assert "kiln" not in comms and "kiln-spawn" not in comms, comms
    assert len(comms) < 20, comms
    code, out, _ = sh(sbx, f"cat /proc/{os.getpid()}/cmdline 2>/dev/null | tr '\\0' ' '")
    assert "pytest" not in out


def test_root_cannot_ptrace_the_agent(new_sandbox):
    own = new_sandbox()
    code, out, _ = run_py(own, PTRACE_INIT, user="root")
    r, errno = map(int, out.split())
    assert own.commands.run("echo alive").stdout == "alive\n"
    assert r == -1, "root inside the sandbox attached to its init (the agent)"


# Writes that gVisor takes into its own kernel (its netstack's forwarding
# switch): they succeed there and leave the host's value alone.
GVISOR_OWN_SYSCTLS = {"echo 0 > /proc/sys/net/ipv4/ip_forward"}


def test_proc_sys_and_sys_are_read_only(sbx):
    host_before = {p: pathlib.Path(p).read_text() for p in (
        "/proc/sys/kernel/hostname", "/proc/sys/vm/overcommit_memory", "/proc/sys/net/ipv4/ip_forward",
        "/proc/sys/kernel/core_pattern",
    )}
    for cmd in (
        "echo 3 > /proc/sys/vm/drop_caches",
        "echo 2 > /proc/sys/vm/overcommit_memory",
        "echo '|/tmp/x' > /proc/sys/kernel/core_pattern",
        "echo pwned > /proc/sys/kernel/hostname",
        "echo 0 > /proc/sys/net/ipv4/ip_forward",
        "echo b > /proc/sysrq-trigger",
        "echo 1 > /sys/kernel/mm/ksm/run",
        "echo 1 > /sys/class/net/lo/mtu",
        "echo 0 > /sys/fs/cgroup/cgroup.procs",
        "touch /sys/pwned",
    ):
        code, _, _ = sh(sbx, cmd)
        if RUNTIME == "gvisor" and cmd in GVISOR_OWN_SYSCTLS:
            continue  # gVisor's own kernel's setting; the host's is checked below
        assert code != 0, f"{cmd} succeeded inside the sandbox"
    for p, v in host_before.items():
        assert pathlib.Path(p).read_text() == v, f"the host's {p} changed"


def test_module_loading_is_refused(sbx):
    code, out, _ = run_py(sbx, """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
fd = os.open("/bin/true", os.O_RDONLY)
r1 = libc.syscall(313, fd, b"", 0); e1 = ctypes.get_errno()   # finit_module
buf = ctypes.create_string_buffer(64)
r2 = libc.syscall(175, buf, 64, b""); e2 = ctypes.get_errno()  # init_module
r3 = libc.syscall(176, b"ext4", 0); e3 = ctypes.get_errno()    # delete_module
print(r1, e1, r2, e2, r3, e3)
""")
    r1, e1, r2, e2, r3, e3 = map(int, out.split())
    assert (r1, r2, r3) == (-1, -1, -1)
    assert {e1, e2, e3} <= {1, 38}, (e1, e2, e3)  # EPERM or ENOSYS (seccomp)
    code, _, _ = sh(sbx, "echo /tmp/x > /proc/sys/kernel/modprobe")
    assert code != 0


def test_raw_and_packet_sockets_are_refused(sbx):
    code, out, _ = run_py(sbx, """
import socket
res = []
for fam, typ, proto in ((socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP),
                        (socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP),
                        (socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6),
                        (socket.AF_PACKET, socket.SOCK_RAW, 0x0300)):
    try:
        socket.socket(fam, typ, proto).close()
        res.append("opened")
    except OSError as e:
        res.append(type(e).__name__)
print(" ".join(res))
""")
    assert "opened" not in out.split(), out


def test_host_services_and_metadata_unreachable(kilnd, sbx, host_listener):
    (lo_port, any_port), accepted = host_listener
    ip, gw = own_ip_and_gateway(sbx)
    targets = [
        f"127.0.0.1:{lo_port}",  # the sandbox's own loopback: not the host's
        f"{gw}:{lo_port}",
        f"{gw}:{any_port}",  # a host service on every address, via the bridge
        f"{gw}:{kilnd.port}",  # kilnd's API
        f"127.0.0.1:{kilnd.port}",
        f"{gw}:22",
        "169.254.169.254:80",  # cloud metadata (the only outside address tried)
        f"{ip}:49983",  # control: the sandbox's own agent answers
    ]
    res = connect_from(sbx, targets)
    assert res.pop(f"{ip}:49983") == "connected", "control connect to the sandbox's own agent failed"
    reached = {t: r for t, r in res.items() if r == "connected"}
    assert not reached, f"reached from inside the sandbox: {reached}"
    assert not accepted, f"the host's test service accepted connections from {accepted}"
    # kilnd still answers the host.
    assert httpx.get(f"{kilnd.url}/health").status_code == 200


def test_other_sandbox_unreachable(kilnd, sbx, new_sandbox):
    other = new_sandbox()
    other.commands.run("python3 -m http.server 8080 --bind 0.0.0.0", background=True, user="root")
    other_ip, _ = own_ip_and_gateway(other)
    # Control: the server answers inside its own sandbox.
    ok = connect_from(other, [f"{other_ip}:8080", f"{other_ip}:49983"])
    for _ in range(20):
        if ok[f"{other_ip}:8080"] == "connected":
            break
        ok = connect_from(other, [f"{other_ip}:8080", f"{other_ip}:49983"])
    assert set(ok.values()) == {"connected"}, ok
    res = connect_from(sbx, [f"{other_ip}:8080", f"{other_ip}:49983"])
    assert "connected" not in res.values(), f"one sandbox reached another: {res}"
    ping, _, _ = sh(sbx, f"ping -c 1 -W 1 {other_ip}")
    assert ping != 0, "one sandbox pinged another"


def test_files_api_dotdot_stays_inside(kilnd, sbx):
    host_passwd = hashlib.sha256(pathlib.Path("/etc/passwd").read_bytes()).hexdigest()
    marker = f"kiln-sec-{secrets.token_hex(6)}"
    for path in ("../../etc/passwd", "/home/user/../../../../../etc/passwd", "/../../../etc/passwd"):
        try:
            sbx.files.write(path, f"pwned:{marker}\n")
        except Exception:
            pass  # refusing is fine too
    assert hashlib.sha256(pathlib.Path("/etc/passwd").read_bytes()).hexdigest() == host_passwd
    for path in (f"../../tmp/{marker}", f"/../../../tmp/{marker}"):
        try:
            sbx.files.write(path, "x")
        except Exception:
            pass
    assert not pathlib.Path(f"/tmp/{marker}").exists(), "a files API write landed on the host"
    # Whatever was written landed in the sandbox.
    code, out, _ = sh(sbx, f"grep -c {marker} /etc/passwd || true")
    assert int(out) >= 0
    # Reading ../ paths reads the sandbox's files, not the host's.
    host_shadow = pathlib.Path("/etc/shadow").read_text()
    got = sbx.files.read("../../../../etc/shadow", user="root")
    assert got != host_shadow
    assert got == sbx.commands.run("cat /etc/shadow", user="root").stdout
    # The raw proxy path, without the SDK's normalising.
    token = httpx.get(f"{kilnd.url}/sandboxes/{sbx.sandbox_id}", headers=kilnd.headers).json()["envdAccessToken"]
    sh(sbx, f"echo {marker} > /etc/kiln-probe")
    hdrs = {"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": "49983", "X-Access-Token": token}
    r = httpx.get(f"{kilnd.url}/files", params={"path": "/../../../../../etc/kiln-probe", "username": "root"}, headers=hdrs)
    assert r.status_code == 200 and r.text == f"{marker}\n"
    r = httpx.get(f"{kilnd.url}/files", params={"path": "/../../../../../etc/shadow", "username": "root"}, headers=hdrs)
    assert r.status_code == 200 and r.text != host_shadow and r.text == got


def test_files_api_symlinks_resolve_inside(sbx, tmp_path):
    secret = f"host-secret-{secrets.token_hex(8)}"
    host_file = pathlib.Path(f"/tmp/kiln-sec-{secrets.token_hex(6)}")
    host_file.write_text(secret)
    try:
        # A link to a host path that the sandbox also has: its own file is read.
        sh(sbx, f"echo sandbox-content > {host_file}; ln -sf {host_file} /home/user/link1; chown -h user /home/user/link1")
        assert sbx.files.read("/home/user/link1") == "sandbox-content\n"
        # A link to a host path the sandbox does not have: not found, never the host's.
        only_host = tmp_path / "only-on-host.txt"
        only_host.write_text(secret)
        sh(sbx, f"ln -sf {only_host} /home/user/link2")
        with pytest.raises(NotFoundException):
            sbx.files.read("/home/user/link2")
        # Writing through a link to a host path creates the sandbox's file.
        target = pathlib.Path(f"/tmp/kiln-sec-w-{secrets.token_hex(6)}")
        sh(sbx, f"ln -sf {target} /home/user/link3")
        try:
            sbx.files.write("/home/user/link3", "through the link", user="root")
        except Exception:
            pass
        assert not target.exists(), "a write through a symlink landed on the host"
        # A link to /proc/1/root of the sandbox is still the sandbox.
        sh(sbx, "ln -sf /proc/1/root/etc/hostname /home/user/link4")
        try:
            got = sbx.files.read("/home/user/link4", user="root")
            assert got.strip() != pathlib.Path("/etc/hostname").read_text().strip()
        except Exception:
            pass
        assert host_file.read_text() == secret
    finally:
        host_file.unlink(missing_ok=True)
