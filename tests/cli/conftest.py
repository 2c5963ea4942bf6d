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
import subprocess
import sys
from dataclasses import dataclass

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from kilnd_process import KilndStartError, free_port, kiln_bin, spawn_kilnd, subnets  # noqa: E402
from kilnd_process import free_subnet as _free_subnet  # noqa: E402
from pytest_kilnd_logs import pytest_runtest_makereport  # noqa: E402,F401 (a hook)


def free_subnet() -> str:
    """A private /16 (10.190-199.0.0, apart from the e2b-sdk tests' range)
    that no interface but this suite's own bridge routes yet."""
    return _free_subnet(subnets(190, 199), ignore_dev="kb-cli")


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
    try:
        proc = spawn_kilnd(data, port, env)
    except KilndStartError as e:
        pytest.fail(str(e))
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
