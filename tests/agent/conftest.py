"""Runs kiln-agent on the host and points the real `e2b` SDK at it.

The agent runs in its own mount namespace (`unshare --mount`) where temporary
passwd/group files are bind-mounted over /etc/passwd and /etc/group, defining
`user` (uid 1000) with a temporary home: the agent's real user lookup, no
users created on the host. Needs root (like the sandbox it stands in for).
"""

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from packaging.version import Version

from e2b import ConnectionConfig, Sandbox

REPO = Path(__file__).resolve().parents[2]


def envd_version() -> str:
    text = (REPO / "crates/kiln-api/src/agent.rs").read_text()
    return re.search(r'pub const ENVD_VERSION: &str = "([^"]+)"', text).group(1)


def agent_bin() -> str:
    b = os.environ.get("KILN_AGENT_BIN")
    if not b:
        for cand in ("target/x86_64-unknown-linux-gnu/agent/kiln-agent", "target/debug/kiln-agent"):
            if (REPO / cand).exists():
                b = str(REPO / cand)
                break
    if not b or not os.path.exists(b):
        pytest.exit("kiln-agent binary not found: set KILN_AGENT_BIN", returncode=2)
    return b


class Agent:
    """One agent process with its own users and home directory."""

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="kiln-agent-test-"))
        os.chmod(self.dir, 0o755)
        self.home = self.dir / "home" / "user"
        self.home.mkdir(parents=True)
        os.chown(self.home, 1000, 1000)
        (self.dir / "passwd").write_text(
            "root:x:0:0:root:/root:/bin/bash\n"
            f"user:x:1000:1000:user:{self.home}:/bin/bash\n"
        )
        (self.dir / "group").write_text("root:x:0:\nuser:x:1000:\n")
        script = (
            f"mount --bind {self.dir}/passwd /etc/passwd && "
            f"mount --bind {self.dir}/group /etc/group && "
            f'exec "$0" --listen 127.0.0.1:0'
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("E2B_")}
        self.proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, agent_bin()],
            stdout=subprocess.PIPE,
            env=env,
        )
        line = self.proc.stdout.readline().decode()
        m = re.search(r"listening on (\S+)", line)
        if not m:
            self.stop()
            raise RuntimeError(f"agent did not start: {line!r}")
        self.addr = m.group(1)
        self.url = f"http://{self.addr}"

    def config(self, token=None) -> ConnectionConfig:
        # what Sandbox.connect() builds after the control API answered
        headers = {"X-Access-Token": token} if token else None
        return ConnectionConfig(
            sandbox_url=self.url, api_key="e2b_" + "0" * 40, extra_sandbox_headers=headers
        )

    def sandbox(self, token=None, cls=Sandbox):
        return cls(
            sandbox_id="kilntest",
            envd_version=Version(envd_version()),
            envd_access_token=token,
            sandbox_domain=None,
            connection_config=self.config(token),
        )

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return -1

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def agent():
    a = Agent()
    yield a
    a.stop()


@pytest.fixture
def fresh_agent():
    a = Agent()
    yield a
    a.stop()


@pytest.fixture
def sbx(agent):
    return agent.sandbox()


@pytest.fixture
def workdir(agent, sbx):
    """A fresh directory in the user's home, removed afterwards."""
    d = tempfile.mkdtemp(dir=agent.home)
    os.chown(d, 1000, 1000)
    yield d
    shutil.rmtree(d, ignore_errors=True)
