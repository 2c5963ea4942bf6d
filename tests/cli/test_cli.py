"""`kiln sandbox`, `kiln exec`, `kiln cp`, `kiln doctor`, `kiln template` and
the errors people see."""

import hashlib
import json
import os
import pathlib
import stat

from conftest import kiln_bin


def test_sandbox_lifecycle_with_json(kiln):
    r = kiln("--json", "sandbox", "create", "--timeout", "120", "-m", "owner=cli-test")
    assert r.returncode == 0, r.stderr
    created = json.loads(r.stdout)
    sid = created["sandboxID"]
    try:
        r = kiln("--json", "sandbox", "list")
        assert r.returncode == 0, r.stderr
        mine = [s for s in json.loads(r.stdout) if s["sandboxID"] == sid]
        assert mine and mine[0]["metadata"] == {"owner": "cli-test"}, r.stdout
        r = kiln("sandbox", "list")
        table = r.stdout.decode()
        assert table.splitlines()[0].split()[:3] == ["ID", "TEMPLATE", "STATE"], r
        assert sid in table, r
        r = kiln("--json", "sandbox", "info", sid)
        assert r.returncode == 0, r.stderr
        info = json.loads(r.stdout)
        assert info["state"] == "running", info
        assert "envdAccessToken" not in info
        r = kiln("--json", "sandbox", "timeout", sid, "900")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["sandboxID"] == sid
    finally:
        r = kiln("sandbox", "kill", sid)
    assert r.returncode == 0, r.stderr
    r = kiln("sandbox", "info", sid)
    assert r.returncode == 1, r
    assert b"was not found" in r.stderr, r


def test_pause_resume_and_exec_resumes(kiln, sandbox):
    kiln("exec", sandbox, "--", "echo kept > /home/user/state")
    r = kiln("sandbox", "pause", sandbox)
    assert r.returncode == 0, r.stderr
    paused = json.loads(kiln("--json", "sandbox", "list", "--state", "paused").stdout)
    assert sandbox in [s["sandboxID"] for s in paused]
    # exec resumes a paused sandbox, as the SDKs' connect does.
    r = kiln("exec", sandbox, "--", "cat /home/user/state")
    assert (r.returncode, r.stdout) == (0, b"kept\n"), r.stderr
    assert json.loads(kiln("--json", "sandbox", "info", sandbox).stdout)["state"] == "running"
    kiln("sandbox", "pause", sandbox)
    r = kiln("--json", "sandbox", "resume", sandbox)
    assert json.loads(r.stdout)["resumed"] is True
    r = kiln("--json", "sandbox", "resume", sandbox)
    assert json.loads(r.stdout)["resumed"] is False


def test_filesystem_pause_snapshots_and_fork(kiln, sandbox):
    kiln("exec", sandbox, "--", "echo kept > /home/user/state; echo m > /tmp/m")
    r = kiln("--json", "sandbox", "pause", "--filesystem", sandbox)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["pauseMode"] == "filesystem"
    assert json.loads(kiln("--json", "sandbox", "info", sandbox).stdout)["pauseMode"] == "filesystem"
    # exec resumes it: a new boot on the kept disk.
    r = kiln("exec", sandbox, "--", "cat /home/user/state; ls /tmp | wc -l")
    assert (r.returncode, r.stdout) == (0, b"kept\n0\n"), r

    r = kiln("snapshot", "create", sandbox, "--name", "cli-snap")
    assert r.returncode == 0, r.stderr
    snap = r.stdout.decode().strip()
    assert snap.endswith(":default"), snap
    r = kiln("snapshot", "list", "--sandbox", sandbox)
    assert snap in r.stdout.decode() and "cli-snap" in r.stdout.decode(), r
    r = kiln("--json", "sandbox", "create", "-t", snap, "--timeout", "120")
    assert r.returncode == 0, r.stderr
    child = json.loads(r.stdout)["sandboxID"]
    try:
        r = kiln("exec", child, "--", "cat /home/user/state")
        assert r.stdout == b"kept\n", r
    finally:
        kiln("sandbox", "kill", child)
    r = kiln("snapshot", "rm", snap)
    assert r.returncode == 0, r.stderr
    r = kiln("snapshot", "rm", snap)
    assert r.returncode == 1 and b"not found" in r.stderr, r

    r = kiln("sandbox", "fork", sandbox, "--count", "2", "--timeout", "60")
    assert r.returncode == 0, r.stderr
    copies = r.stdout.decode().split()
    assert len(copies) == 2 and sandbox not in copies, copies
    r = kiln("exec", copies[1], "--", "cat /home/user/state")
    assert r.stdout == b"kept\n", r
    r = kiln("sandbox", "kill", *copies)
    assert r.returncode == 0, r.stderr
    r = kiln("sandbox", "fork", sandbox, "--count", "101")
    assert r.returncode == 1 and b"count" in r.stderr, r


def test_exec_passes_exit_codes_and_separates_streams(kiln, sandbox):
    r = kiln("exec", sandbox, "--", "echo out; echo err >&2")
    assert (r.returncode, r.stdout, r.stderr) == (0, b"out\n", b"err\n")
    assert kiln("exec", sandbox, "--", "exit 1").returncode == 1
    assert kiln("exec", sandbox, "--", "kill -9 $$").returncode == 137
    assert kiln("exec", sandbox, "--", "exit 42").returncode == 42
    # Several words are quoted, one is given to bash as it is.
    r = kiln("exec", sandbox, "--", "printf", "%s|", "a b", "it's")
    assert r.stdout == b"a b|it's|"
    r = kiln("exec", "-w", "/tmp", "-e", "X=1", sandbox, "--", "echo $X $PWD")
    assert r.stdout == b"1 /tmp\n"
    r = kiln("exec", "-u", "root", sandbox, "--", "id -u")
    assert r.stdout == b"0\n"


def test_exec_signals_and_pipes(kilnd, sandbox):
    import signal
    import subprocess
    import time

    # Ctrl-C (SIGINT) stops the remote command too, and kiln exits 143.
    p = subprocess.Popen([kiln_bin(), "exec", sandbox, "--", "echo started; sleep 600"],
                         env=kilnd.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout.readline() == b"started\n"
    p.send_signal(signal.SIGINT)
    assert p.wait(timeout=20) == 143
    r = subprocess.run([kiln_bin(), "exec", sandbox, "--", "pgrep -x sleep || echo none"],
                       env=kilnd.env(), capture_output=True)
    assert r.stdout == b"none\n"
    # A reader that goes away: exit 141 (SIGPIPE), promptly.
    t = time.monotonic()
    r = subprocess.run(f"{kiln_bin()} exec {sandbox} -- 'yes' | head -c 5; echo \" ${{PIPESTATUS[0]}}\"",
                       shell=True, executable="/bin/bash", env=kilnd.env(), capture_output=True, timeout=60)
    assert r.stdout == b"y\ny\ny 141\n" and time.monotonic() - t < 30
    # --timeout: the agent kills the command.
    r = subprocess.run([kiln_bin(), "exec", "--timeout", "1", sandbox, "--", "sleep 30"],
                       env=kilnd.env(), capture_output=True, timeout=60)
    assert r.returncode == 137, r


def test_exec_stdin(kiln, sandbox):
    r = kiln("exec", "-i", sandbox, "--", "wc -c", input=b"x" * 100000)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == b"100000"


def test_clear_errors(kiln, kilnd, sandbox):
    # Server not running: says how to start it.
    r = kiln("sandbox", "list", env=kilnd.env(KILN_API_URL="http://127.0.0.1:9"))
    assert r.returncode == 1
    assert b"kiln up" in r.stderr and b"panicked" not in r.stderr
    # No key anywhere.
    env = kilnd.env()
    del env["KILN_API_KEY"]
    r = kiln("sandbox", "list", env=env)
    assert r.returncode == 1 and b"KILN_API_KEY" in r.stderr
    # E2B_* names are the fallback.
    env.update(E2B_API_KEY=kilnd.key, E2B_API_URL=kilnd.url)
    del env["KILN_API_URL"]
    assert kiln("sandbox", "list", env=env).returncode == 0
    # A wrong key.
    r = kiln("sandbox", "list", "--api-key", "e2b_" + "0" * 40)
    assert r.returncode == 1 and b"rejected the API key" in r.stderr
    # Unknown sandbox, bad id, bad flags.
    for args in (["exec", "nosuchsandbox", "--", "true"], ["exec", "../x", "--", "true"],
                 ["sandbox", "create", "-m", "novalue"], ["cp", "/tmp", "/tmp"],
                 ["cp", f"{sandbox}:/nonexistent", "/tmp/x"], ["sandbox", "timeout", sandbox, "0"]):
        r = kiln(*args)
        assert r.returncode != 0, args
        assert r.stderr.startswith(b"error: ") and b"panicked" not in r.stderr, (args, r.stderr)
    # A config file works too.
    cfg = kilnd.data_dir / "client.toml"
    cfg.write_text(f'api_url = "{kilnd.url}"\napi_key = "{kilnd.key}"\n')
    env = {k: v for k, v in kilnd.env().items() if k not in ("KILN_API_URL", "KILN_API_KEY")}
    env["KILN_CLIENT_CONFIG"] = str(cfg)
    assert kiln("sandbox", "list", env=env).returncode == 0


def tree_digest(root: pathlib.Path) -> dict:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            p = pathlib.Path(dirpath, d)
            out[str(p.relative_to(root))] = ("dir", stat.S_IMODE(p.stat().st_mode))
        for f in filenames:
            p = pathlib.Path(dirpath, f)
            out[str(p.relative_to(root))] = (
                hashlib.sha256(p.read_bytes()).hexdigest(),
                stat.S_IMODE(p.stat().st_mode),
            )
    return out


def test_cp_directory_round_trip_is_byte_identical(kiln, sandbox, tmp_path):
    src = tmp_path / "tree"
    (src / "a" / "b" / "c").mkdir(parents=True)
    (src / "empty").mkdir()
    (src / "big.bin").write_bytes(os.urandom(12 << 20))
    (src / "a" / "text.txt").write_text("héllo\nwörld\n")
    (src / "a" / "zero").write_bytes(b"")
    (src / "a" / "b" / "c" / "deep.bin").write_bytes(bytes(range(256)) * 100)
    (src / "a" / "with space & quote's.txt").write_text("x")
    run = src / "a" / "b" / "run.sh"
    run.write_text("#!/bin/sh\necho ran\n")
    run.chmod(0o755)
    r = kiln("cp", str(src), f"{sandbox}:/home/user/")
    assert r.returncode == 0, r.stderr
    r = kiln("exec", sandbox, "--", "/home/user/tree/a/b/run.sh")
    assert r.stdout == b"ran\n"
    r = kiln("exec", sandbox, "--", "sha256sum /home/user/tree/big.bin")
    assert r.stdout.split()[0].decode() == hashlib.sha256((src / "big.bin").read_bytes()).hexdigest()
    back = tmp_path / "back"
    back.mkdir()
    r = kiln("cp", f"{sandbox}:/home/user/tree", str(back))
    assert r.returncode == 0, r.stderr
    assert tree_digest(back / "tree") == tree_digest(src)
    # Single files, both ways, to an explicit name.
    r = kiln("--json", "cp", str(src / "a" / "text.txt"), f"{sandbox}:/tmp/renamed.txt")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"files": 1, "directories": 0, "bytes": len((src / "a" / "text.txt").read_bytes()),
                                    "destination": f"{sandbox}:/tmp/renamed.txt"}
    r = kiln("cp", f"{sandbox}:/tmp/renamed.txt", str(tmp_path / "one.txt"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "one.txt").read_bytes() == (src / "a" / "text.txt").read_bytes()


def test_doctor(kiln):
    r = kiln("--json", "doctor")
    checks = json.loads(r.stdout)
    names = {c["name"] for c in checks}
    assert {"root", "cgroup", "kvm", "packages", "server", "api key"} <= names
    by = {c["name"]: c for c in checks}
    assert by["server"]["level"] == "ok" and by["api key"]["level"] == "ok"
    assert r.returncode == (1 if any(c["level"] == "fail" for c in checks) else 0)
    for c in checks:
        if c["level"] != "ok" and c["name"] != "server":
            assert c.get("fix"), c


def test_template_list(kiln):
    r = kiln("--json", "template", "list")
    assert r.returncode == 0, r.stderr
    assert any("base" in t["aliases"] for t in json.loads(r.stdout))
    r = kiln("template", "build", "no-such-template")
    assert r.returncode == 1 and b"only the `base` template" in r.stderr


def test_help_lists_every_verb():
    import subprocess

    out = subprocess.run([kiln_bin(), "--help"], capture_output=True, text=True).stdout
    for verb in ("up", "doctor", "sandbox", "snapshot", "exec", "shell", "cp", "template", "keys", "mcp"):
        assert f"\n  {verb} " in out, verb
