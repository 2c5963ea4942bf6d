"""What a sandbox must not share with the host or with other sandboxes:
descriptors the host held, host paths in its mount table, the host's boot
id, kilnd's session, device nodes beyond its minimal /dev. Each is
checked from inside, as an attacker in the sandbox would look."""

import json
import os

from harness import run_py, sh

# Lists, inside: this process's open descriptors (without the one listing
# them), and every descriptor of every process it may look at, as
# {pid: {fd: target}}.
FDS = """
import json, os
mine = []
for fd in os.listdir("/proc/self/fd"):
    try:
        os.fstat(int(fd))
        mine.append(int(fd))
    except OSError:
        pass  # the descriptor os.listdir used, closed by now
seen = {}
for p in os.listdir("/proc"):
    if not p.isdigit():
        continue
    try:
        seen[p] = {fd: os.readlink(f"/proc/{p}/fd/{fd}") for fd in os.listdir(f"/proc/{p}/fd")}
    except OSError:
        pass
print(json.dumps({"mine": sorted(mine), "seen": seen}))
"""


def test_no_host_descriptor_reaches_the_sandbox(kilnd, new_sandbox):
    """kilnd holds an inheritable pipe (conftest): no process inside may
    have it, and a command has exactly stdin, stdout and stderr."""
    sbx = new_sandbox()
    leaked = f"pipe:[{kilnd.leaked_pipe}]"
    sbx.commands.run("sleep 300", background=True, user="user")
    for user in ("root", "user"):
        code, out, err = run_py(sbx, FDS, user=user)
        assert code == 0, err
        got = json.loads(out)
        assert got["mine"] == [0, 1, 2], f"a command as {user} has descriptors {got['mine']}: {got['seen']}"
        holders = [p for p, fds in got["seen"].items() if leaked in fds.values()]
        assert not holders, f"processes {holders} inside hold kilnd's inherited pipe {leaked}"
    # A write from inside reaches nothing on the host.
    os.set_blocking(kilnd.leaked_pipe_reader, False)
    sh(sbx, "for f in /proc/self/fd/*; do echo pwned > $f; done 2>/dev/null; true")
    try:
        data = os.read(kilnd.leaked_pipe_reader, 4096)
    except BlockingIOError:
        data = b""
    assert b"pwned" not in data, "a write from inside the sandbox reached the host's pipe"

