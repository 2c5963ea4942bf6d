"""The hostile-workload suite's kilnd: a real `kiln up` (container runtime)
on a temp data dir (0755 under /tmp, see below), tag `sec`, with small
sandboxes (1 vCPU, 256 MiB, 512 MiB disk) so the bombs hit their limits
quickly. kilnd is started holding an inheritable pipe, as a careless parent
would leave it one (test_isolation checks no sandbox process sees it). At
the end every sandbox is killed, kilnd stops, and nothing of the tag may be
left on the host (processes, cgroups, veths, network namespaces, mounts, loop devices)."""

import os
import pathlib
import secrets
import shutil
import tempfile

import pytest
from e2b import Sandbox

from harness import free_subnet, new_kilnd, wait_host_clean
from pytest_kilnd_logs import pytest_runtest_makereport  # noqa: F401 (a hook)

# The runtime the suite's kilnd serves by default: container, or gvisor
# (70-security.sh runs the suite on each the host has).
RUNTIME = os.environ.get("KILN_SECURITY_RUNTIME", "container")
TAG = {"container": "sec", "gvisor": "secv"}[RUNTIME]


@pytest.fixture(scope="session")
def kilnd():
    # A data dir other host users can traverse (0755 under /tmp), as
    # `mkdir -p /var/lib/kiln` or an older Kiln leaves it: kilnd must close
    # it at start (test_host_users.py). pytest's own temp dirs are 0700.
    data = pathlib.Path(tempfile.mkdtemp(prefix="kiln-sec-", dir="/tmp"))
    os.chmod(data, 0o755)
    env = dict(
        KILN_RUNTIME=RUNTIME,
        KILN_SANDBOX_VCPUS="1",
        KILN_SANDBOX_MEMORY_MIB="256",
        KILN_SANDBOX_DISK_MIB="512",
    )
    if RUNTIME == "gvisor":
        env["KILN_GVISOR_SUBNET"] = free_subnet("10.238.0.0")
    k = new_kilnd(data, TAG, "10.240.0.0", **env)
    # A pipe kilnd inherits without close-on-exec; the test keeps the read
    # end and its inode to look for the write end inside sandboxes.
    leak_r, leak_w = os.pipe()
    os.set_inheritable(leak_w, True)
    k.pass_fds = (leak_w,)
    k.leaked_pipe = os.fstat(leak_w).st_ino
    try:
        k.start()
    finally:
        os.close(leak_w)
    k.leaked_pipe_reader = leak_r
    yield k
    try:
        k.kill_all()
    finally:
        code = k.stop()
    assert code == 0, f"kilnd exited with {code} on SIGINT:\n{k.log_tail()}"
    # The gVisor runtime's host objects carry the tag with a `g`.
    left = wait_host_clean(TAG, data) + wait_host_clean(TAG[:3] + "g", data)
    assert not left, f"left on the host after the security suite: {left}"
    shutil.rmtree(data, ignore_errors=True)


@pytest.fixture
def new_sandbox(kilnd):
    """Creates sandboxes; kills every one at the end of the test."""
    made = []

    def make(**kw):
        s = Sandbox.create(timeout=600, **kilnd.sdk_opts(), **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        try:
            s.kill()
        except Exception:
            pass


@pytest.fixture
def marker():
    return "kiln-mark-" + secrets.token_hex(6)
