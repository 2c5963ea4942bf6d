"""process.Process through the real e2b SDK."""

import time

import pytest
from e2b import CommandExitException
from e2b.sandbox.commands.command_handle import PtySize


def test_200k_lines_complete_and_in_order(sbx):
    r = sbx.commands.run("seq 1 200000", timeout=120)
    lines = r.stdout.split("\n")
    assert lines[-1] == ""
    assert lines[:-1] == [str(i) for i in range(1, 200001)]


def test_interleaved_stdout_stderr_each_in_order(sbx):
    r = sbx.commands.run(
        "for i in $(seq 1 3000); do echo out$i; echo err$i >&2; done", timeout=60
    )
    assert r.stdout.split() == [f"out{i}" for i in range(1, 3001)]
    assert r.stderr.split() == [f"err{i}" for i in range(1, 3001)]


def test_exit_codes(sbx):
    assert sbx.commands.run("true").exit_code == 0
    with pytest.raises(CommandExitException) as e:
        sbx.commands.run("echo bye; exit 7")
    assert e.value.exit_code == 7
    assert e.value.stdout == "bye\n"


def test_login_environment_user_and_home(sbx, agent):
    r = sbx.commands.run('echo "$USER|$HOME|$SHELL|$(pwd)|$(id -u)"')
    assert r.stdout.strip() == f"user|{agent.home}|/bin/bash|{agent.home}|1000"
    assert "/usr/bin" in sbx.commands.run("echo $PATH").stdout
    assert "KILN_" not in sbx.commands.run("env").stdout


def test_root_user(sbx):
    r = sbx.commands.run('id -u; echo "$HOME"', user="root")
    assert r.stdout.split() == ["0", "/root"]


def test_envs_and_cwd(sbx):
    r = sbx.commands.run('echo "$FOO $BAR"; pwd', envs={"FOO": "a b", "BAR": "2"}, cwd="/tmp")
    assert r.stdout == "a b 2\n/tmp\n"


def test_missing_cwd_is_an_error(sbx):
    with pytest.raises(Exception) as e:
        sbx.commands.run("true", cwd="/definitely/not/here")
    assert "not/here" in str(e.value)


def test_stdin_round_trip(sbx):
    h = sbx.commands.run("cat; echo done", background=True, stdin=True)
    sbx.commands.send_stdin(h.pid, "hello ")
    sbx.commands.send_stdin(h.pid, b"world\n")
    sbx.commands.close_stdin(h.pid)
    r = h.wait()
    assert r.stdout == "hello world\ndone\n"


def test_background_process_reattached_after_stream_dropped(sbx):
    h = sbx.commands.run(
        "for i in $(seq 1 15); do echo line$i; sleep 0.1; done", background=True
    )
    pid = h.pid
    h.disconnect()
    assert pid in [p.pid for p in sbx.commands.list()]
    h2 = sbx.commands.connect(pid)
    r = h2.wait()
    assert r.exit_code == 0
    got = r.stdout.split()
    assert got, "no output after reattaching"
    # whatever arrived after the reconnect is a contiguous, ordered tail
    first = int(got[0][4:])
    assert got == [f"line{i}" for i in range(first, 16)]
    assert pid not in [p.pid for p in sbx.commands.list()]


def test_connect_by_tag_and_list_shows_config(sbx):
    h = sbx.commands.run("sleep 30", background=True)
    try:
        procs = {p.pid: p for p in sbx.commands.list()}
        assert procs[h.pid].cmd == "/bin/bash"
        assert procs[h.pid].args[-1] == "sleep 30"
    finally:
        assert sbx.commands.kill(h.pid)


def test_send_signal_kills(sbx):
    h = sbx.commands.run("sleep 60", background=True)
    t0 = time.monotonic()
    assert sbx.commands.kill(h.pid) is True
    with pytest.raises(CommandExitException) as e:
        h.wait()
    assert time.monotonic() - t0 < 10
    assert e.value.exit_code != 0
    assert h.pid not in [p.pid for p in sbx.commands.list()]
    assert sbx.commands.kill(h.pid) is False  # gone: not_found


def test_command_timeout_kills(sbx):
    t0 = time.monotonic()
    with pytest.raises(Exception):
        sbx.commands.run("sleep 30", timeout=1)
    assert time.monotonic() - t0 < 10


def _read_until(chunks, needle, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if needle in b"".join(chunks):
            return True
        time.sleep(0.05)
    return False


def test_pty_resize_and_interactive_bash(sbx):
    import threading

    chunks = []
    result = {}
    h = sbx.pty.create(PtySize(rows=24, cols=80), timeout=60)

    def wait():
        try:
            h.wait(on_pty=lambda d: chunks.append(d))
            result["code"] = 0
        except CommandExitException as e:
            result["code"] = e.exit_code

    t = threading.Thread(target=wait, daemon=True)
    t.start()
    try:
        sbx.pty.send_stdin(h.pid, b"stty size\n")
        assert _read_until(chunks, b"24 80"), b"".join(chunks)
        sbx.pty.resize(h.pid, PtySize(rows=30, cols=100))
        sbx.pty.send_stdin(h.pid, b"stty size\n")
        assert _read_until(chunks, b"30 100"), b"".join(chunks)
        sbx.pty.send_stdin(h.pid, b"echo $((6*7))x\n")
        assert _read_until(chunks, b"42x"), b"".join(chunks)
        sbx.pty.send_stdin(h.pid, b"exit 3\n")
        t.join(timeout=10)
        assert not t.is_alive()
        assert result["code"] == 3
    finally:
        sbx.pty.kill(h.pid)
