"""The kernel's per-user budgets that user namespaces charge to their owner:
inotify instances, queued signals, POSIX message queue bytes. Each sandbox's
user namespace is owned by a host uid of its own (spawn.rs), so one sandbox
that takes a whole budget, as an unprivileged user inside, leaves host root
and every other sandbox theirs. (When host root owned every namespace, one
sandbox took all 128 inotify instances and host root then got EMFILE.)"""

import errno
import os
import subprocess
import sys
import time

import pytest

from harness import RUNTIME, sh

# Takes up to `limit` of one budget; writes "<taken> <errno>" to `out`, then
# holds what it took (when asked to) until killed.
TAKE = r"""
import ctypes, os, signal, sys, time
kind, out, limit, hold = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "hold"
libc = ctypes.CDLL(None, use_errno=True)
taken, err = 0, 0
if kind == "inotify":
    while taken < limit:
        if libc.inotify_init1(0) < 0:
            err = ctypes.get_errno()
            break
        taken += 1
elif kind == "signals":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGRTMIN})
    while taken < limit:
        # sigqueue, not kill: a kill that finds the queue full still
        # succeeds (it drops the signal's data), a sigqueue fails.
        if libc.sigqueue(os.getpid(), signal.SIGRTMIN, ctypes.c_void_p(0)) != 0:
            err = ctypes.get_errno()
            break
        taken += 1
elif kind == "mqueue":
    rt = ctypes.CDLL("librt.so.1", use_errno=True)
    names = []
    while taken < limit:
        name = f"/kiln-budget-{os.getpid()}-{taken}".encode()
        if rt.mq_open(name, os.O_CREAT | os.O_RDWR, 0o600, None) < 0:
            err = ctypes.get_errno()
            break
        names.append(name)
        taken += 1
    if not hold:
        for name in names:
            rt.mq_unlink(name)
with open(out + ".part", "w") as f:
    f.write(f"{taken} {err}")
os.rename(out + ".part", out)
while hold:
    time.sleep(60)
"""

# (budget, what taking all of it ends with, the most a take tries)
BUDGETS = [
    ("inotify", errno.EMFILE, 100_000),
    ("signals", errno.EAGAIN, 1_000_000),
    ("mqueue", errno.EMFILE, 100_000),
]


def _result(sbx, path, deadline):
    while time.monotonic() < deadline:
        code, out, _ = sh(sbx, f"cat {path} 2>/dev/null")
        if code == 0 and out.strip():
            taken, err = out.split()
            return int(taken), int(err)
        time.sleep(0.2)
    raise AssertionError(f"{path} was never written")


def _take_in(sbx, kind, limit, hold):
    sbx.files.write("/tmp/take.py", TAKE, user="user")
    out = f"/tmp/take-{kind}-{'hold' if hold else 'probe'}"
    if hold:
        sbx.commands.run(f"python3 /tmp/take.py {kind} {out} {limit} hold", background=True, user="user")
    else:
        sh(sbx, f"python3 /tmp/take.py {kind} {out} {limit} probe", user="user", timeout=120)
    return _result(sbx, out, time.monotonic() + 120)


def _take_on_host(kind, limit, tmp_path):
    out = tmp_path / f"host-{kind}"
    subprocess.run([sys.executable, "-c", TAKE, kind, str(out), str(limit), "probe"], check=True, timeout=120)
    taken, err = out.read_text().split()
    return int(taken), int(err)


@pytest.mark.parametrize("kind,exhausted,most", BUDGETS, ids=[b[0] for b in BUDGETS])
def test_one_sandbox_taking_a_budget_leaves_host_root_and_others_theirs(
    new_sandbox, tmp_path, kind, exhausted, most
):
    hog, other = new_sandbox(), new_sandbox()
    taken, err = _take_in(hog, kind, most, hold=True)
    if RUNTIME == "gvisor":
        # gVisor's kernel keeps these objects in its own memory (charged to
        # the sandbox's cgroup), not as the host kernel's per-user budget:
        # the hog takes all it asks for, and the host and others keep theirs.
        assert taken == most or err == exhausted, (kind, taken, err)
    else:
        assert err == exhausted, f"{kind}: the hog took {taken} and stopped with errno {err}, not {exhausted}"
    assert taken > 0
    # While the hog holds all of its budget:
    host_taken, host_err = _take_on_host(kind, 5, tmp_path)
    assert (host_taken, host_err) == (5, 0), (
        f"{kind}: host root got {host_taken} of 5 ({os.strerror(host_err) if host_err else 'no error'}) "
        f"while a sandbox held its whole budget: the sandbox is charged to host root"
    )
    other_taken, other_err = _take_in(other, kind, 5, hold=False)
    assert (other_taken, other_err) == (5, 0), (
        f"{kind}: a second sandbox got {other_taken} of 5 "
        f"({os.strerror(other_err) if other_err else 'no error'}) while the first held its whole budget"
    )


def _subordinate_ranges():
    out = []
    for f in ("/etc/subuid", "/etc/subgid"):
        if os.path.exists(f):
            for line in open(f):
                parts = line.strip().split(":")
                if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
                    out.append((int(parts[1]), int(parts[2])))
    return out


def test_each_sandbox_has_a_host_uid_range_of_its_own(new_sandbox):
    """Root inside is a host uid no other sandbox and no host user's
    subordinate ids have; the template's and new files still show their
    owners inside (the layers are idmapped, not copied)."""
    a, b = new_sandbox(), new_sandbox()
    bases = []
    for sbx in (a, b):
        code, out, err = sh(sbx, "cat /proc/self/uid_map /proc/self/gid_map", user="user")
        assert code == 0, err
        uid_line, gid_line = out.strip().splitlines()
        inside, outside, count = uid_line.split()
        assert (inside, count) == ("0", "65536") and gid_line.split() == uid_line.split(), out
        bases.append(int(outside))
        code, out, err = sh(sbx, "touch /root/new && stat -c '%u %g' /root/new /etc/passwd /home/user")
        assert code == 0, err
        assert out.split("\n")[:3] == ["0 0", "0 0", "1000 1000"], out
    assert bases[0] != bases[1], f"two sandboxes share the host uid range {bases[0]}"
    for base in bases:
        assert base >= 165536, f"root inside is host uid {base}, the range every sandbox used to share"
        for first, count in _subordinate_ranges():
            assert base + 65536 <= first or first + count <= base, (
                f"a sandbox's range {base}+65536 overlaps a host user's subordinate ids {first}+{count}"
            )
