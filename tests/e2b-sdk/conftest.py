"""Starts a real kilnd (`kiln up`) on a temp data dir and a loopback port, and
points the unmodified e2b SDK at it through E2B_API_URL / E2B_SANDBOX_URL.

Environment:
  KILN_BIN           the `kiln` binary (default target/{debug,release}/kiln)
  KILN_E2E_RUNTIME   container (default), gvisor (kilnd's default runtime is
                     gVisor's runsc; tests that cannot pass there are skipped
                     with the reason, see GVISOR_SKIPS) or fake; with fake only tests marked
                     `control` run, the others are skipped with the reason.
                     fake-host-agent: kilnd on the fake runtime, whose every
                     sandbox is the one real agent the caller runs at
                     127.0.0.1:49983 (see run-with-host-agent.sh): a check of
                     the proxy and the SDK paths before the container runtime.
  KILN_TEMPLATE_DIR  template cache shared between runs (default
                     target/kiln-test-templates; the phase script points it at
                     the data dir the runtime's phase already built it in).
"""

import os
import pathlib
import secrets
import signal
import subprocess
import sys
from dataclasses import dataclass

import httpx
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from kilnd_process import KilndStartError, free_port, kiln_bin, spawn_kilnd, subnets  # noqa: E402
from kilnd_process import free_subnet as _free_subnet  # noqa: E402
from pytest_kilnd_logs import pytest_runtest_makereport  # noqa: E402,F401 (a hook)

RUNTIME = os.environ.get("KILN_E2E_RUNTIME", "container")
KILND_RUNTIME = "fake" if RUNTIME in ("fake", "fake-host-agent") else RUNTIME


def free_subnet(avoid=()) -> str:
    """A private /16 (10.150-189.0.0) that no interface routes yet, for a
    test kilnd's bridge (other kilnds on the host use their own)."""
    return _free_subnet(subnets(150, 189), avoid)


@dataclass
class Kilnd:
    url: str
    key: str
    other_team_key: str
    data_dir: pathlib.Path
    log: pathlib.Path
    proc: subprocess.Popen


# Tests that cannot pass on the gVisor runtime, by node id suffix, with why
# (shown by -rs).
GVISOR_SKIPS: dict = {
    "test_envd_parity.py::test_overwrite_clears_metadata": (
        "Debian's runsc (2022-12-19) keeps no user xattrs on the sandbox's disk (its gofer refuses "
        "them), so file metadata is not stored on gvisor, as envd keeps none where xattrs are "
        "unsupported (docs/compatibility.md)"
    ),
}


def pytest_collection_modifyitems(config, items):
    if RUNTIME == "gvisor":
        for item in items:
            for name, reason in GVISOR_SKIPS.items():
                if item.nodeid.endswith(name):
                    item.add_marker(pytest.mark.skip(reason=reason))
        return
    if RUNTIME != "fake":
        return
    skip = pytest.mark.skip(reason="needs a real sandbox (agent + runtime); KILN_E2E_RUNTIME=fake")
    for item in items:
        if "control" not in item.keywords:
            item.add_marker(skip)


def start_kilnd(data: pathlib.Path, port: int, key: str, **extra_env) -> subprocess.Popen:
    """Starts `kiln up` on data/port and waits until it answers."""
    env = dict(os.environ)
    env.update(KILN_API_KEY=key, KILN_RUNTIME=KILND_RUNTIME, KILN_LOG=env.get("KILN_LOG", "info"))
    env.setdefault("KILN_TEMPLATE_DIR", str(ROOT / "target" / "kiln-test-templates"))
    # Host objects of their own, apart from any other kilnd and from the
    # runtime's tests (t1..t9, 10.200+n.0.0/16).
    env.setdefault("KILN_RUNTIME_TAG", "e2e")
    env.setdefault("KILN_SUBNET", free_subnet())
    # Metrics tests wait for a few samples.
    env.setdefault("KILN_METRICS_INTERVAL", "1")
    # The code-interpreter tests check the warm hand-over (env vars, tokens).
    env.setdefault("KILN_INTERPRETER_WARM_POOL", "2")
    # Creates of the base template are served from booted sandboxes, as
    # kilnd's default does (test_creates_are_served_from_the_warm_pool).
    env.setdefault("KILN_READY_POOL", "2")
    env.update(extra_env)
    # The gVisor runtime's bridge: a free /16 of its own, not the one after
    # KILN_SUBNET (another kilnd of the run may route that).
    env.setdefault("KILN_GVISOR_SUBNET", free_subnet(avoid=(env["KILN_SUBNET"],)))
    try:
        return spawn_kilnd(data, port, env)
    except KilndStartError as e:
        pytest.fail(str(e))


def kill_all(url: str, *keys: str):
    """Kills every sandbox the keys' teams have, so that a failed test leaves
    nothing running on the host after kilnd stops."""
    for key in keys:
        headers = {"X-API-KEY": key}
        try:
            for s in httpx.get(f"{url}/v2/sandboxes", headers=headers, timeout=10).json():
                httpx.delete(f"{url}/sandboxes/{s['sandboxID']}", headers=headers, timeout=30)
        except httpx.HTTPError:
            pass


def stop_kilnd(proc: subprocess.Popen, log: pathlib.Path):
    """Ctrl-C, as a person would; kilnd must exit 0 promptly: within 45 s,
    as it waits up to 30 s for warm sandboxes being made (a code-interpreter
    sandbox on gVisor takes several seconds) and then kills them."""
    proc.send_signal(signal.SIGINT)
    try:
        code = proc.wait(timeout=45)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("kilnd did not stop within 45 s of SIGINT")
    assert code == 0, f"kilnd exited with {code} on SIGINT:\n{log.read_text()[-4000:]}"


@pytest.fixture(scope="session")
def kilnd(tmp_path_factory) -> Kilnd:
    data = tmp_path_factory.mktemp("kiln-data")
    port = free_port()
    key = "e2b_" + secrets.token_hex(20)
    proc = start_kilnd(data, port, key)
    url = f"http://127.0.0.1:{port}"
    other = subprocess.check_output(
        [kiln_bin(), "keys", "create", "--team", "other-team", "--data-dir", str(data)], text=True
    ).strip()
    os.environ.update(E2B_API_URL=url, E2B_SANDBOX_URL=url, E2B_API_KEY=key)
    os.environ.pop("E2B_DOMAIN", None)
    os.environ.pop("E2B_DEBUG", None)
    yield Kilnd(url, key, other, data, data / "kilnd.log", proc)
    kill_all(url, key, other)
    stop_kilnd(proc, data / "kilnd.log")


@pytest.fixture
def sandbox(kilnd):
    from e2b import Sandbox

    sbx = Sandbox.create(timeout=300)
    yield sbx
    try:
        sbx.kill()
    except Exception:
        pass


@pytest.fixture
async def async_sandbox(kilnd):
    from e2b import AsyncSandbox

    sbx = await AsyncSandbox.create(timeout=300)
    yield sbx
    try:
        await sbx.kill()
    except Exception:
        pass
