"""Shared by the Python suites (tests/e2b-sdk, tests/cli, tests/security and
tests/faults): finds the `kiln` binary, picks a free loopback port and a free
10.x.0.0/16 for a test kilnd's bridge, and starts `kiln up` on a data
directory, waiting until it answers.

Use with tests/ on sys.path: `from kilnd_process import ...`.

Environment: KILN_BIN (the `kiln` binary; default target/{debug,release}/kiln),
KILN_E2E_START_TIMEOUT (seconds to wait for a kilnd to answer; a first start
builds templates, so the default is 900). A test kilnd keeps no warm
code-interpreter sandboxes and no booted container sandboxes unless its
environment sets KILN_INTERPRETER_WARM_POOL or KILN_READY_POOL."""

import os
import pathlib
import socket
import subprocess
import time
import urllib.error
import urllib.request

from pytest_kilnd_logs import watch

ROOT = pathlib.Path(__file__).resolve().parents[1]
START_TIMEOUT = float(os.environ.get("KILN_E2E_START_TIMEOUT", "900"))


class KilndStartError(RuntimeError):
    """kilnd exited or did not answer in time; the message has its log's tail."""


def kiln_bin() -> str:
    if os.environ.get("KILN_BIN"):
        return os.environ["KILN_BIN"]
    for profile in ("debug", "release"):
        p = ROOT / "target" / profile / "kiln"
        if p.exists():
            return str(p)
    raise RuntimeError("kiln binary not found: build it (cargo build -p kiln-cli) or set KILN_BIN")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def routed_subnets(ignore_dev: str | None = None) -> set:
    """The 10.x.0.0 /16s (as "a.b.0.0") some interface routes, except
    `ignore_dev`'s."""
    taken = set()
    try:
        with open("/proc/net/route") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                dest = bytes.fromhex(fields[1])[::-1]  # host-order hex of a network-order word
                if int(fields[7], 16) != 0 and fields[0] != ignore_dev:
                    taken.add(f"{dest[0]}.{dest[1]}.0.0")
    except OSError:
        pass
    return taken


def free_subnet(candidates, avoid=(), ignore_dev: str | None = None) -> str:
    """The first of `candidates` ("a.b.0.0" strings) that no interface
    routes and that is not in `avoid`."""
    taken = routed_subnets(ignore_dev) | set(avoid)
    for subnet in candidates:
        if subnet not in taken:
            return subnet
    raise RuntimeError("no free 10.x.0.0/16 for the test kilnd")


def subnets(first: int, last: int) -> list:
    """10.first.0.0 … 10.last.0.0."""
    return [f"10.{n}.0.0" for n in range(first, last + 1)]


def log_tail(log: pathlib.Path, n: int = 4000) -> str:
    try:
        return log.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=1) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def spawn_kilnd(data: pathlib.Path, port: int, env: dict, timeout: float = START_TIMEOUT,
                pass_fds=()) -> subprocess.Popen:
    """Runs `kiln up` on `data` and 127.0.0.1:`port` with `env` (the whole
    environment) and `pass_fds` inherited (as an attacker-chosen parent
    could leave them), logging to data/kilnd.log (watched for failure reports),
    and returns once /health answers. Raises KilndStartError if kilnd exits
    or does not answer within `timeout` seconds (then it is killed)."""
    log = data / "kilnd.log"
    url = f"http://127.0.0.1:{port}"
    # Warm code-interpreter sandboxes (up to 8, each a running kernel) only
    # where a suite asks for them: on a 2-core host they load every other
    # test, and the fault suites count every sandbox agent on the host.
    env = dict(env)
    env.setdefault("KILN_INTERPRETER_WARM_POOL", "0")
    # Nor booted base sandboxes on the container runtime (the fault suites
    # compare the sandboxes on disk with the listed ones, which leave the
    # pool's out); the e2b suite asks for some.
    env.setdefault("KILN_READY_POOL", "0")
    watch(log)
    with open(log, "a") as out:
        proc = subprocess.Popen(
            [kiln_bin(), "up", "--data-dir", str(data), "--listen", f"127.0.0.1:{port}", "--no-install"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            pass_fds=pass_fds,
        )
    deadline = time.monotonic() + timeout
    while not healthy(url):
        if proc.poll() is not None:
            raise KilndStartError(f"kilnd exited with {proc.returncode}:\n{log_tail(log)}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise KilndStartError(f"kilnd did not start in {timeout}s:\n{log_tail(log)}")
        time.sleep(0.1)
    return proc
