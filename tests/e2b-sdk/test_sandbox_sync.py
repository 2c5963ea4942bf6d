"""Sandboxes through the sync Python SDK: commands, files, PTY, ports. Needs
the real agent and runtime."""

import hashlib
import os
import time

import httpx
import pytest
from e2b import (
    AuthenticationException,
    CommandExitException,
    FilesystemEventType,
    PtySize,
    SandboxException,
    Sandbox,
    TimeoutException,
)


def test_run_foreground(sandbox):
    r = sandbox.commands.run("echo hello; echo oops >&2")
    assert r.exit_code == 0
    assert r.stdout == "hello\n"
    assert r.stderr == "oops\n"


def test_run_background_and_wait(sandbox):
    h = sandbox.commands.run("sleep 0.3; echo done", background=True)
    assert h.pid > 0
    assert h.wait().stdout == "done\n"


def test_streaming_callbacks(sandbox):
    out, err = [], []
    sandbox.commands.run(
        "for i in 1 2 3; do echo $i; echo e$i >&2; sleep 0.05; done",
        on_stdout=out.append,
        on_stderr=err.append,
    )
    assert "".join(out) == "1\n2\n3\n"
    assert "".join(err) == "e1\ne2\ne3\n"


def test_envs_cwd_and_users(kilnd):
    sbx = Sandbox.create(envs={"SANDBOX_WIDE": "yes"})
    try:
        assert sbx.commands.run("echo $SANDBOX_WIDE").stdout == "yes\n"
        assert sbx.commands.run("echo $FOO", envs={"FOO": "bar"}).stdout == "bar\n"
        assert sbx.commands.run("pwd", cwd="/tmp").stdout == "/tmp\n"
        assert sbx.commands.run("pwd").stdout == "/home/user\n"
        assert sbx.commands.run("whoami").stdout == "user\n"
        assert sbx.commands.run("whoami", user="root").stdout == "root\n"
    finally:
        sbx.kill()


def test_command_timeout(sandbox):
    start = time.monotonic()
    with pytest.raises(TimeoutException):
        sandbox.commands.run("sleep 30", timeout=1)
    assert time.monotonic() - start < 25  # the 30 s sleep was cut short


def test_nonzero_exit_raises(sandbox):
    with pytest.raises(CommandExitException) as e:
        sandbox.commands.run("echo partial; exit 3")
    assert e.value.exit_code == 3
    assert e.value.stdout == "partial\n"


def test_stdin(sandbox):
    h = sandbox.commands.run("cat", background=True, stdin=True)
    sandbox.commands.send_stdin(h.pid, "abc\n")
    sandbox.commands.close_stdin(h.pid)
    assert h.wait().stdout == "abc\n"


def test_kill_process(sandbox):
    h = sandbox.commands.run("sleep 300", background=True)
    assert any(p.pid == h.pid for p in sandbox.commands.list())
    assert sandbox.commands.kill(h.pid) is True
    with pytest.raises(CommandExitException):
        h.wait()
    assert sandbox.commands.kill(h.pid) is False


def test_files(sandbox):
    f = sandbox.files
    f.make_dir("/home/user/d/sub")
    info = f.write("/home/user/d/a.txt", "alpha")
    assert info.path == "/home/user/d/a.txt"
    assert f.read("/home/user/d/a.txt") == "alpha"
    assert f.exists("/home/user/d/a.txt")
    names = sorted(e.name for e in f.list("/home/user/d"))
    assert names == ["a.txt", "sub"]
    f.rename("/home/user/d/a.txt", "/home/user/d/b.txt")
    assert not f.exists("/home/user/d/a.txt")
    assert f.read("/home/user/d/b.txt", format="bytes") == b"alpha"
    f.write_files([
        {"path": "/home/user/d/m1", "data": "one"},
        {"path": "/home/user/d/m2", "data": b"two"},
    ])
    assert f.read("/home/user/d/m1") == "one" and f.read("/home/user/d/m2") == "two"
    f.remove("/home/user/d/b.txt")
    assert not f.exists("/home/user/d/b.txt")
    # Python's stat, not coreutils': Debian 12's gVisor refuses the statx
    # flags coreutils passes (see docs/compatibility.md).
    owner = sandbox.commands.run(
        "python3 -c 'import os, pwd; print(pwd.getpwuid(os.stat(\"/home/user/d/m1\").st_uid).pw_name)'"
    ).stdout.strip()
    assert owner == "user"


def test_files_api_acts_with_the_users_permissions(sandbox):
    """Every files verb runs with the asking user's permissions, on every
    runtime: the agent (root) takes the user's ids for the operation and
    fails it if the kernel does not switch them (gVisor ignores setfsuid,
    with which every operation once ran as root there)."""
    f = sandbox.files
    passwd = f.read("/etc/passwd", user="root")
    attempts = {
        "write /etc/passwd": lambda: f.write("/etc/passwd", "pwned\n"),
        "write through ../": lambda: f.write("../../etc/passwd", "pwned\n"),
        "read /etc/shadow": lambda: f.read("/etc/shadow"),
        "list /root": lambda: f.list("/root"),
        "make_dir in /root": lambda: f.make_dir("/root/x"),
        "remove /etc/hostname": lambda: f.remove("/etc/hostname"),
        "rename /etc/hosts": lambda: f.rename("/etc/hosts", "/home/user/hosts"),
    }
    for what, attempt in attempts.items():
        # Refused: 403 on /files, Connect's permission_denied on RPCs.
        with pytest.raises((SandboxException, AuthenticationException)):
            attempt()
            pytest.fail(f"{what} succeeded as user")
    assert f.read("/etc/passwd", user="root") == passwd
    assert f.exists("/etc/hostname", user="root") and f.exists("/etc/hosts", user="root")
    # As root, the same verbs work, and what root makes is root's.
    assert f.read("/etc/shadow", user="root").startswith("root:")
    f.make_dir("/root/x", user="root")
    f.write("/root/x/f", "r", user="root")
    owners = sandbox.commands.run(
        "python3 -c 'import os; print(os.stat(\"/root/x/f\").st_uid, os.stat(\"/root/x\").st_uid)'",
        user="root",
    ).stdout.split()
    assert owners == ["0", "0"]


def test_watch_dir(sandbox):
    sandbox.files.make_dir("/home/user/w")
    w = sandbox.files.watch_dir("/home/user/w")
    try:
        sandbox.files.write("/home/user/w/new.txt", "x")
        events = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any(e.name == "new.txt" for e in events):
            events += w.get_new_events()
            time.sleep(0.1)
        assert any(e.name == "new.txt" and e.type in (FilesystemEventType.CREATE, FilesystemEventType.WRITE) for e in events), events
    finally:
        w.stop()


def test_100mb_round_trip(sandbox):
    data = os.urandom(100 * 1024 * 1024)
    digest = hashlib.sha256(data).hexdigest()
    sandbox.files.write("/tmp/big.bin", data)
    inside = sandbox.commands.run("sha256sum /tmp/big.bin", timeout=120).stdout.split()[0]
    assert inside == digest
    back = sandbox.files.read("/tmp/big.bin", format="bytes")
    assert len(back) == len(data)
    assert hashlib.sha256(back).hexdigest() == digest


def test_pty(sandbox):
    h = sandbox.pty.create(PtySize(rows=24, cols=80))
    sandbox.pty.resize(h.pid, PtySize(rows=30, cols=100))
    sandbox.pty.send_stdin(h.pid, b"echo pty-$((20+22)); stty size; exit\n")
    out = bytearray()
    h.wait(on_pty=out.extend)
    assert b"pty-42" in out
    assert b"30 100" in out


def test_get_host_reaches_a_server_in_the_sandbox(kilnd, sandbox):
    sandbox.files.write("/home/user/site/index.html", "hello from inside")
    sandbox.commands.run("cd /home/user/site && python3 -m http.server 8000", background=True)
    host = sandbox.get_host(8000)
    assert host.startswith(f"8000-{sandbox.sandbox_id}.")
    deadline = time.monotonic() + 15
    while True:
        r = httpx.get(f"{kilnd.url}/index.html", headers={"Host": host})
        if r.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert r.status_code == 200 and r.text == "hello from inside"
    r = httpx.get(
        f"{kilnd.url}/index.html",
        headers={"E2b-Sandbox-Id": sandbox.sandbox_id, "E2b-Sandbox-Port": "8000"},
    )
    assert r.text == "hello from inside"
    closed = httpx.get(kilnd.url, headers={"Host": sandbox.get_host(8001)})
    assert closed.status_code == 502 and "port is not open" in closed.json()["message"]


def test_connect_and_run_from_second_client(sandbox):
    sandbox.files.write("/tmp/marker", "m")
    other = Sandbox.connect(sandbox.sandbox_id)
    assert other.commands.run("cat /tmp/marker").stdout == "m"


def test_is_running_and_kill(kilnd):
    sbx = Sandbox.create()
    assert sbx.is_running()
    sbx.kill()
    assert not sbx.is_running()


def test_signed_file_urls_without_sandbox_headers(kilnd):
    sbx = Sandbox.create(secure=True)
    try:
        up = sbx.upload_url("/home/user/signed.txt", use_signature_expiration=60)
        r = httpx.post(up, files={"file": ("signed.txt", b"via signed url")})
        assert r.status_code == 200, r.text
        down = sbx.download_url("/home/user/signed.txt", use_signature_expiration=60)
        r = httpx.get(down)
        assert r.status_code == 200 and r.content == b"via signed url"
        bad = down.replace("signature=v1_", "signature=v1_x")
        assert httpx.get(bad).status_code == 401
    finally:
        sbx.kill()


def test_pause_and_connect_resumes(kilnd):
    sbx = Sandbox.create(timeout=120)
    try:
        sbx.files.write("/home/user/p.txt", "before pause")
        sleeper = sbx.commands.run("sleep 1000", background=True)
        assert sbx.pause() is True
        assert sbx.pause() is False  # already paused: 409
        assert not sbx.is_running()
        info = Sandbox.get_info(sbx.sandbox_id)
        assert info.state.value == "paused"
        resumed = Sandbox.connect(sbx.sandbox_id, timeout=120)
        assert resumed.is_running()
        assert resumed.files.read("/home/user/p.txt") == "before pause"
        assert any(p.pid == sleeper.pid for p in resumed.commands.list())
    finally:
        sbx.kill()


@pytest.mark.parametrize("paused", [False, True], ids=["running", "paused"])
def test_kill_ends_open_streams(kilnd, paused):
    """Killing a sandbox, running or paused, ends every stream a client holds
    open into it: a command's output stream and a server's response body,
    each cut with an error rather than left waiting."""
    import threading

    sbx = Sandbox.create(timeout=120)
    server = (
        "import http.server, time\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        "        self.send_response(200)\n"
        "        self.send_header('Content-Type', 'text/plain')\n"
        "        self.send_header('Content-Length', str(10**12))\n"
        "        self.end_headers()\n"
        "        while True:\n"
        "            self.wfile.write(b'tick\\n'); self.wfile.flush(); time.sleep(0.2)\n"
        "http.server.ThreadingHTTPServer(('0.0.0.0', 8000), H).serve_forever()\n"
    )
    sbx.files.write("/home/user/ticker.py", server)
    sbx.commands.run("python3 /home/user/ticker.py", background=True)
    command = sbx.commands.run("while true; do echo out; sleep 0.2; done", background=True, timeout=0)

    outcome = {}

    def wait_command():
        try:
            command.wait()
            outcome["command"] = "returned"
        except Exception as e:  # the SDK's error for a cut stream
            outcome["command"] = f"raised {type(e).__name__}"

    def read_server():
        headers = {"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": "8000"}
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                with httpx.stream("GET", kilnd.url, headers=headers, timeout=None) as r:
                    if r.status_code != 200:
                        time.sleep(0.2)
                        continue
                    outcome["server_started"] = True
                    for _ in r.iter_bytes():
                        pass
                outcome["server"] = "ended"
            except httpx.HTTPError as e:
                outcome["server"] = f"raised {type(e).__name__}"
            return

    threads = [threading.Thread(target=f, daemon=True) for f in (wait_command, read_server)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 15
    while "server_started" not in outcome and time.monotonic() < deadline:
        time.sleep(0.1)
    assert outcome.get("server_started"), "the server in the sandbox never answered"
    if paused:
        assert sbx.pause() is True
    killed_at = time.monotonic()
    assert Sandbox.kill(sbx.sandbox_id)
    for t in threads:
        t.join(timeout=20)
    took = time.monotonic() - killed_at
    assert not any(t.is_alive() for t in threads), f"a stream still hangs after the kill: {outcome}"
    assert outcome["command"].startswith("raised"), outcome
    # Cut, not ended cleanly: the client can tell the sandbox went away.
    assert outcome["server"].startswith("raised"), outcome
    assert took < 10, f"streams ended {took:.1f} s after the kill"


@pytest.mark.skipif(
    os.environ.get("KILN_E2E_RUNTIME", "container") not in ("container", "gvisor"),
    reason="the pools of booted base sandboxes are the container and gVisor runtimes' "
    "(KILN_READY_POOL, KILN_GVISOR_WARM_POOL)",
)
def test_creates_are_served_from_the_warm_pool(kilnd):
    """A create takes a sandbox booted ahead of time (on gVisor runsc's
    start, on the container runtime its mounts and the agent's start are off
    its path) and makes it the caller's: its env, metadata and a new token;
    the pool's token opens nothing."""
    deadline = time.monotonic() + 90
    while True:
        sbx = Sandbox.create(timeout=120, envs={"WARM_CASE": "yes"}, metadata={"case": "warm"})
        handed = f"sandbox={sbx.sandbox_id}" in "\n".join(
            line for line in kilnd.log.read_text(errors="replace").splitlines() if "warm sandbox handed over" in line
        )
        if handed:
            break
        sbx.kill()
        assert time.monotonic() < deadline, "no create was served from the warm pool in 90 s"
        time.sleep(2)  # the pool refills in the background
    try:
        assert sbx.commands.run("echo $WARM_CASE").stdout == "yes\n"
        assert sbx.get_info().metadata == {"case": "warm"}
        # The sandbox is the caller's alone from here: no other process ran.
        assert sbx.commands.run("id -un").stdout == "user\n"
    finally:
        sbx.kill()
