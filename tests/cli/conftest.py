"""End-to-end tests of the `kiln` CLI and `kiln mcp` against a real kilnd
(`kiln up` on a temp data dir and a loopback port, container runtime), the
way tests/e2b-sdk/conftest.py starts it.

Environment:
  KILN_BIN           the `kiln` binary (default target/{debug,release}/kiln)
  KILN_TEMPLATE_DIR  template cache (default /var/lib/kiln, where the
                     runtime's test phase built the base template)
"""

import json
import os
import pathlib
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from pytest_kilnd_logs import pytest_runtest_makereport, watch  # noqa: E402,F401 (a hook)

START_TIMEOUT = float(os.environ.get("KILN_E2E_START_TIMEOUT", "900"))


def kiln_bin() -> str:
    if os.environ.get("KILN_BIN"):
        return os.environ["KILN_BIN"]
    for profile in ("debug", "release"):
        p = ROOT / "target" / profile / "kiln"
        if p.exists():
            return str(p)
    raise RuntimeError("kiln binary not found: build it (cargo build -p kiln-cli) or set KILN_BIN")


def free_subnet() -> str:
    """A private /16 (10.190-199.0.0, apart from the e2b-sdk tests' range)
    that no interface routes yet, for the test kilnd's bridge."""
    taken = set()
    try:
        with open("/proc/net/route") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                dest = bytes.fromhex(fields[1])[::-1]
                if int(fields[7], 16) != 0 and fields[0] != "kb-cli":
                    taken.add(f"{dest[0]}.{dest[1]}.0.0")
    except OSError:
        pass
    for second in range(190, 200):
        subnet = f"10.{second}.0.0"
        if subnet not in taken:
            return subnet
    raise RuntimeError("no free 10.x.0.0/16 for the test kilnd")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Kilnd:
    url: str
    key: str
    data_dir: pathlib.Path
    log: pathlib.Path

    def env(self, **extra) -> dict:
        """An environment pointing the CLI at this kilnd (and nothing else)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KILN_", "E2B_"))}
        env.update(KILN_API_URL=self.url, KILN_API_KEY=self.key, RUST_BACKTRACE="0")
        env["KILN_CLIENT_CONFIG"] = str(self.data_dir / "no-client-config.toml")
        env.update(extra)
        return env


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.fixture(scope="session")
def kilnd(tmp_path_factory):
    data = tmp_path_factory.mktemp("kiln-cli-data")
    port = free_port()
    key = "e2b_" + secrets.token_hex(20)
    env = dict(os.environ)
    env.update(KILN_API_KEY=key, KILN_RUNTIME="container", KILN_LOG=env.get("KILN_LOG", "info"))
    env.setdefault("KILN_TEMPLATE_DIR", "/var/lib/kiln")
    # Host objects of their own, apart from other kilnds and the runtime's tests.
    env["KILN_RUNTIME_TAG"] = "cli"
    env["KILN_SUBNET"] = free_subnet()
    log = data / "kilnd.log"
    url = f"http://127.0.0.1:{port}"
    watch(log)
    with open(log, "a") as out:
        proc = subprocess.Popen(
            [kiln_bin(), "up", "--data-dir", str(data), "--listen", f"127.0.0.1:{port}", "--no-install"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + START_TIMEOUT
    while not healthy(url):
        if proc.poll() is not None:
            pytest.fail(f"kilnd exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"kilnd did not start in {START_TIMEOUT}s:\n{log.read_text()[-4000:]}")
        time.sleep(0.1)
    k = Kilnd(url, key, data, log)
    yield k
    # Every test kills what it created; make sure, then stop kilnd.
    left = json.loads(run_kiln(k, "--json", "sandbox", "list").stdout or "[]")
    for s in left:
        run_kiln(k, "sandbox", "kill", s["sandboxID"])
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    assert not left, f"sandboxes left behind by the tests: {[s['sandboxID'] for s in left]}"


def run_kiln(k: Kilnd, *args, env=None, input=None, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [kiln_bin(), *args],
        env=env or k.env(),
        input=input,
        capture_output=True,
        timeout=timeout,
    )


@pytest.fixture
def kiln(kilnd):
    """Runs the CLI against the test kilnd; returns the CompletedProcess."""

    def run(*args, **kw):
        return run_kiln(kilnd, *args, **kw)

    return run


@pytest.fixture
def sandbox(kiln):
    """A sandbox id, killed after the test."""
    r = kiln("sandbox", "create", "--timeout", "300")
    assert r.returncode == 0, r.stderr.decode()
    sid = r.stdout.decode().strip()
    yield sid
    kiln("sandbox", "kill", sid)
