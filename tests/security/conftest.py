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

from harness import RUNTIME, new_kilnd, wait_host_clean
from pytest_kilnd_logs import pytest_runtest_makereport  # noqa: F401 (a hook)

TAG = {"container": "sec", "gvisor": "secv"}[RUNTIME]


# Tests with no gVisor form yet, by node id suffix, with why (shown by -rs).
# The others check gVisor's own form of what they guard (a sandbox's
# processes and namespaces are its kernel's, the sentry's, a host process
# under the sandbox's cgroup and runsc's seccomp filter).
GVISOR_SKIPS = {
    "test_each_sandbox_has_a_host_uid_range_of_its_own": (
        "NOT IMPLEMENTED on gVisor: the host processes that serve a gVisor sandbox's files (its "
        "gofer) all run in one host uid range (100000+65536) and its kernel (the sentry) as host "
        "nobody; per-sandbox ranges, as the container runtime has, need idmapped layer mounts "
        "on the gVisor runtime's overlay"
    ),
}


def pytest_collection_modifyitems(config, items):
    if RUNTIME != "gvisor":
        return
    for item in items:
        for name, reason in GVISOR_SKIPS.items():
            if item.nodeid.split("[")[0].endswith(name):
                item.add_marker(pytest.mark.skip(reason=reason))


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
    left = wait_host_clean(TAG, data)
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
