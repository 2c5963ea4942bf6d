"""Attacks from the host side, as an unprivileged host user (`nobody`, via
setpriv): reading kilnd's store, disks, snapshots and log; reaching a
sandbox's ports at its bridge address, around the proxy's traffic token.
And from inside a sandbox: reaching a network the host's own interfaces
sit on (here TEST-NET-2, 198.51.100.0/24, on a veth to a network namespace
this test makes: the host is its own "outside", no real address is tried).

The suite's kilnd runs on a data dir made 0755 under /tmp, as `mkdir -p
/var/lib/kiln` or an older Kiln left it (see conftest.py): kilnd must close
it at start."""

import json
import os
import pathlib
import secrets
import stat
import subprocess
import time

import httpx
import pytest

from harness import new_kilnd, sh

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]

# Run as nobody: tries to read each path; prints {path: "read" | error}.
READ = """
import json, sys
out = {}
for p in json.loads(sys.argv[1]):
    try:
        with open(p, "rb") as f:
            f.read(16)
        out[p] = "read"
    except OSError as e:
        out[p] = type(e).__name__
print(json.dumps(out))
"""

# Run as nobody or root: connects to host:port, sends a GET, prints the
# status line or the error.
GET = """
import socket, sys
s = socket.socket()
s.settimeout(3)
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
    s.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
    print(s.recv(100).split(b"\\r\\n")[0].decode())
except OSError as e:
    print(type(e).__name__)
"""


def as_nobody(code: str, *args: str) -> str:
    r = subprocess.run(NOBODY + ["/usr/bin/python3", "-c", code, *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def private_files(data: pathlib.Path):
    """Every file below the data dir but the templates' (which sandboxes see)."""
    out = []
    for root, dirs, files in os.walk(data):
        if pathlib.Path(root) == data and "templates" in dirs:
            dirs.remove("templates")
        out += [pathlib.Path(root, f) for f in files]
    return out


def test_data_dir_is_closed_to_other_host_users(kilnd, new_sandbox, marker):
    sbx = new_sandbox()
    sbx.files.write("/root/secret.txt", marker, user="root")
    snap = sbx.create_snapshot(name=f"perm-{secrets.token_hex(3)}")
    try:
        files = private_files(kilnd.data)
        names = {f.name for f in files}
        assert "kiln.db" in names and "kilnd.log" in names, names
        disks = [f for f in files if f.suffix == ".img" and "disk-pool" not in f.parts]
        snaps = [f for f in files if "snapshots" in f.parts]
        assert disks and snaps, f"no disk image or snapshot file found in {sorted(map(str, files))[:40]}"
        targets = [str(kilnd.data / "kiln.db"), str(kilnd.data / "kilnd.log")]
        targets += [str(f) for f in files if f.name.startswith("kiln.db-")]
        targets += [str(f) for f in disks[:5] + snaps[:5]]
        got = json.loads(as_nobody(READ, json.dumps(targets)))
        readable = [p for p, r in got.items() if r == "read"]
        assert not readable, f"an unprivileged host user reads {readable}"
        # Nor can it list what is there.
        assert as_nobody("import os, sys\ntry:\n os.listdir(sys.argv[1]); print('listed')\nexcept OSError as e: print(type(e).__name__)",
                         str(kilnd.data)) == "PermissionError"
        # And the modes themselves: data dir 0700, every file 0600, all root's.
        st = kilnd.data.stat()
        assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == 0, oct(st.st_mode)
        loose = []
        for f in files:
            try:
                m = f.lstat()
            except FileNotFoundError:
                continue
            # sandbox-bin holds copies of the agent and the interpreter that
            # sandboxes execute (as their own uids, so 0755): public builds,
            # no secret, behind the 0700 data dir like everything else.
            if "sandbox-bin" in f.parts:
                continue
            if stat.S_ISREG(m.st_mode) and (m.st_mode & 0o077 or m.st_uid != 0):
                loose.append(f"{f} {oct(stat.S_IMODE(m.st_mode))} uid {m.st_uid}")
        assert not loose, f"files open to others: {loose[:10]}"
    finally:
        httpx.delete(f"{kilnd.url}/templates/{snap.snapshot_id.split(':')[0]}", headers=kilnd.headers, timeout=60)


@pytest.mark.parametrize("mode", [0o777, 0o775])
def test_kilnd_refuses_a_writable_data_dir(tmp_path, mode):
    data = tmp_path / "open"
    data.mkdir()
    os.chmod(data, mode)
    k = new_kilnd(data, "secw", "10.241.0.0", KILN_WARM_POOL="0", KILN_CODE_INTERPRETER="false")
    try:
        with pytest.raises(Exception) as e:
            k.start(timeout=60)
        assert "writable" in str(e.value), str(e.value)
        assert not (data / "kiln.db").exists(), "kilnd opened the store in a writable data dir"
    finally:
        # A kilnd that did start (the bug) must not outlive the test.
        k.stop()


SERVE = "nohup python3 -m http.server {port} --bind 0.0.0.0 >/tmp/http.log 2>&1 &"


def wait_serving(sbx, port):
    for _ in range(50):
        code, out, _ = sh(sbx, f"python3 -c \"import socket; socket.create_connection(('127.0.0.1', {port}), 1)\" && echo up")
        if "up" in out:
            return
        time.sleep(0.2)
    raise AssertionError("the sandbox's server did not start")


def test_host_users_cannot_bypass_the_traffic_token(kilnd, new_sandbox):
    sbx = new_sandbox(allow_internet_access=True, network={"allow_public_traffic": False})
    port = 8123
    sh(sbx, SERVE.format(port=port))
    wait_serving(sbx, port)
    ip = sh(sbx, "ip -4 -o addr show eth0")[1].split()[3].split("/")[0]
    token = sbx.traffic_access_token
    assert token, "a sandbox with allow_public_traffic=False has a traffic token"
    proxied = {"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": str(port)}
    # Through the proxy: refused without the token, served with it.
    assert httpx.get(kilnd.url, headers=proxied, timeout=30).status_code == 403
    ok = httpx.get(kilnd.url, headers={**proxied, "e2b-traffic-access-token": token}, timeout=30)
    assert ok.status_code == 200, ok.text
    # Directly at the bridge address: root on the host (kilnd's user) gets
    # there, any other user does not.
    root = subprocess.run(["python3", "-c", GET, ip, str(port)], capture_output=True, text=True, timeout=30)
    assert root.stdout.startswith("HTTP/1.0 200"), root.stdout + root.stderr
    nobody = as_nobody(GET, ip, str(port))
    assert not nobody.startswith("HTTP"), f"an unprivileged host user reached {ip}:{port} directly: {nobody}"
    # Nor the agent's port (its own token checks aside).
    nobody = as_nobody(GET, ip, "49983")
    assert not nobody.startswith("HTTP"), f"an unprivileged host user reached the agent at {ip}: {nobody}"


OUTSIDE_NS = "ksec-out"
HOST_VETH, OUT_VETH = "ksec-h", "ksec-o"


@pytest.fixture
def host_network():
    """A network the host sits on: veth ksec-h (198.51.100.1/24) in the host
    namespace, its peer (198.51.100.2) in namespace ksec-out, serving HTTP
    on port 8080. Removed afterwards."""

    def ip(*args, check=True):
        return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)

    ip("netns", "del", OUTSIDE_NS, check=False)
    ip("link", "del", HOST_VETH, check=False)
    server = None
    try:
        ip("netns", "add", OUTSIDE_NS)
        ip("link", "add", HOST_VETH, "type", "veth", "peer", "name", OUT_VETH, "netns", OUTSIDE_NS)
        ip("addr", "add", "198.51.100.1/24", "dev", HOST_VETH)
        ip("link", "set", HOST_VETH, "up")
        ip("-n", OUTSIDE_NS, "addr", "add", "198.51.100.2/24", "dev", OUT_VETH)
        ip("-n", OUTSIDE_NS, "link", "set", OUT_VETH, "up")
        ip("-n", OUTSIDE_NS, "link", "set", "lo", "up")
        ip("-n", OUTSIDE_NS, "route", "add", "default", "via", "198.51.100.1")
        server = subprocess.Popen(
            ["ip", "netns", "exec", OUTSIDE_NS, "python3", "-m", "http.server", "8080", "--bind", "198.51.100.2"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(50):
            r = subprocess.run(["python3", "-c", GET, "198.51.100.2", "8080"], capture_output=True, text=True)
            if r.stdout.startswith("HTTP"):
                break
            time.sleep(0.1)
        else:
            raise AssertionError("the outside server did not start")
        yield "198.51.100.2"
    finally:
        if server is not None:
            server.kill()
            server.wait()
        ip("link", "del", HOST_VETH, check=False)
        ip("netns", "del", OUTSIDE_NS, check=False)


def test_sandbox_cannot_reach_the_hosts_own_networks(kilnd, new_sandbox, host_network):
    # The host (root) reaches it: the network is real and served.
    r = subprocess.run(["python3", "-c", GET, host_network, "8080"], capture_output=True, text=True, timeout=30)
    assert r.stdout.startswith("HTTP/1.0 200"), r.stdout
    # kilnd notices the new network within its refresh period.
    table = f"kiln_{kilnd.tag}"
    deadline = time.monotonic() + 15
    while True:
        s = subprocess.run(["nft", "list", "set", "inet", table, "hostnets"], capture_output=True, text=True).stdout
        if "198.51.100.0/24" in s or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    sbx = new_sandbox(allow_internet_access=True)
    sbx.files.write("/tmp/get.py", GET, user="root")
    code, out, err = sh(sbx, f"python3 /tmp/get.py {host_network} 8080")
    assert not out.startswith("HTTP"), f"a sandbox reached {host_network}:8080 on the host's own network: {out}"
    code, out, err = sh(sbx, "python3 /tmp/get.py 198.51.100.1 8080")
    assert not out.startswith("HTTP"), out
    assert "198.51.100.0/24" in s, f"the host's network is not in the deny set:\n{s}"
