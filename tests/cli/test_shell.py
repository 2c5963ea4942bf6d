"""`kiln shell` driven through tmux as a person would: type, see the output,
resize the pane, exit, and find the local terminal sane again."""

import re
import shutil
import subprocess
import time
import uuid

import pytest

from conftest import kiln_bin

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (Debian package tmux)")


class Tmux:
    def __init__(self, env: dict):
        self.sock = f"kiln-cli-test-{uuid.uuid4().hex[:8]}"
        self.env = env
        self.tmux("new-session", "-d", "-s", "t", "-x", "100", "-y", "30", "bash --norc --noprofile")
        self.tmux("set-option", "-t", "t", "remain-on-exit", "on")
        self.send("PS1='local$ '", "Enter")
        self.wait_for(r"^local\$\s*$")

    def tmux(self, *args) -> str:
        return subprocess.run(
            ["tmux", "-L", self.sock, *args], env=self.env, capture_output=True, text=True, check=True
        ).stdout

    def send(self, *keys):
        self.tmux("send-keys", "-t", "t", *keys)

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "t")

    def wait_for(self, pattern: str, timeout: float = 20) -> re.Match:
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(pattern, self.screen(), re.M)
            if m:
                return m
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} did not appear; screen:\n{self.screen()}")
            time.sleep(0.1)

    def local_tty_sane(self):
        self.send("clear", "Enter")
        self.wait_for(r"^local\$\s*$")
        self.send("stty -a | tr ' ;' '\\n\\n' | grep -xE -- '-?(icanon|echo|isig|opost)' | tr '\\n' ' '; echo ::", "Enter")
        m = self.wait_for(r"^((?:-?\w+ )+)::$")
        flags = set(m.group(1).split())
        assert flags == {"icanon", "echo", "isig", "opost"}, f"terminal left in raw mode: {flags}"

    def close(self):
        subprocess.run(["tmux", "-L", self.sock, "kill-server"], env=self.env, capture_output=True)


@pytest.fixture
def tmux(kilnd):
    t = Tmux(kilnd.env(TERM="xterm-256color"))
    yield t
    t.close()


def test_shell_types_resizes_and_restores_the_terminal(tmux, sandbox):
    tmux.send(f"{kiln_bin()} shell {sandbox}", "Enter")
    tmux.wait_for(rf"user@{sandbox}:~\$\s*$")
    tmux.send("echo hi", "Enter")
    tmux.wait_for(r"^hi$")
    tmux.send("stty size", "Enter")
    tmux.wait_for(r"^30 100$")
    tmux.tmux("resize-window", "-t", "t", "-x", "120", "-y", "40")
    time.sleep(0.3)
    tmux.send("clear; stty size", "Enter")
    tmux.wait_for(r"^40 120$")
    # Ctrl-C reaches the sandbox's shell, not kiln.
    tmux.send("sleep 100", "Enter")
    time.sleep(0.5)
    tmux.send("C-c")
    tmux.send("echo after-$((20+22))", "Enter")
    tmux.wait_for(r"^after-42$")
    tmux.send("exit 7", "Enter")
    tmux.wait_for(r"^local\$\s*$")
    tmux.send("echo rc=$?", "Enter")
    tmux.wait_for(r"^rc=7$")
    tmux.local_tty_sane()


def test_terminal_restored_when_the_sandbox_dies(tmux, kiln):
    r = kiln("sandbox", "create", "--timeout", "120")
    sid = r.stdout.decode().strip()
    try:
        tmux.send(f"{kiln_bin()} shell {sid}", "Enter")
        tmux.wait_for(rf"user@{sid}:~\$\s*$")
        kiln("sandbox", "kill", sid)
        tmux.wait_for(r"^local\$\s*$")
        tmux.send("echo rc=$?", "Enter")
        tmux.wait_for(r"^rc=[1-9]")
        tmux.local_tty_sane()
    finally:
        kiln("sandbox", "kill", sid)


def test_shell_without_a_terminal_says_what_to_do(kiln, sandbox):
    r = kiln("shell", sandbox, input=b"")
    assert r.returncode == 1
    assert b"kiln exec" in r.stderr
