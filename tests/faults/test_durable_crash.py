"""kill -9 of kilnd in the middle of a pause, a snapshot and a fork, at
several instants, then a start on the same data dir: the store and the disk
agree. Every sandbox the API lists answers with its files; every sandbox
directory on disk is one the API lists; every snapshot the API lists is
complete on disk and starts a sandbox, and no other snapshot is on disk.
On both runtimes: the container runtime's filesystem pause and layer
snapshots, gVisor's checkpoints (a memory pause, snapshots and forks with
memory)."""

import json
import pathlib
import shutil
import threading
import time

import httpx
import pytest
from e2b import Sandbox

from harness import new_kilnd, wait_host_clean

DELAYS = [0.0, 0.01, 0.04, 0.12]
# gVisor's steps take longer (runsc checkpoint and restore): later instants.
GVISOR_DELAYS = [0.0, 0.05, 0.3, 1.0]


def fire(k, method, path, body):
    def go():
        try:
            httpx.request(method, f"{k.url}{path}", json=body, headers=k.headers, timeout=30)
        except httpx.HTTPError:
            pass  # kilnd died under it: that is the point

    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t


def on_disk(k, runtime):
    root = pathlib.Path(k.data) / runtime
    sandboxes = {}
    for d in (root / "sandboxes").glob("*"):
        state = d / "state.json"
        if not d.name.startswith(".") and state.exists():
            sandboxes[d.name] = json.loads(state.read_text()).get("phase", "running")
    snapshots = {
        d.name
        for d in (root / "snapshots").glob("*")
        if not d.name.startswith(".") and not (d / "deleted").exists()
    }
    leftovers = [d.name for d in (root / "snapshots").glob(".tmp-*")]
    return sandboxes, snapshots, leftovers


SLEEPER = "sleep 4242"
HAS_SLEEPER = (
    "python3 -c \"import os; print(any(b'4242' in open(f'/proc/{p}/cmdline', 'rb').read() "
    "for p in os.listdir('/proc') if p.isdigit() and os.path.exists(f'/proc/{p}/cmdline')))\""
)


def has_sleeper(sbx):
    return sbx.commands.run(HAS_SLEEPER).stdout.strip() == "True"


def check_agreement(k, runtime, expect_file, source=None):
    """`source`: the sandbox the crashed operation was on; running, or
    paused with its memory, it still has the process it had (the old state
    or the new one, not a reboot that lost it)."""
    listed = httpx.get(f"{k.url}/v2/sandboxes", params={"state": "running,paused", "limit": 1000},
                       headers=k.headers, timeout=30).json()
    states = {s["sandboxID"]: s["state"] for s in listed}
    sandboxes, snapshot_dirs, leftovers = on_disk(k, runtime)
    assert not leftovers, f"half-written snapshots left: {leftovers}"
    assert set(sandboxes) == set(states), f"store {states} vs disk {sandboxes}"
    for sid, state in states.items():
        phase = sandboxes[sid]
        if phase in ("paused_fs", "paused_memory"):
            assert state == "paused", (sid, state, phase)
        if state == "running":
            assert phase == "running", (sid, state, phase)
        sbx = Sandbox.connect(sid, **k.sdk_opts())
        assert sbx.files.read("/home/user/f") == expect_file, sid
        if sid == source and phase in ("running", "paused_memory"):
            assert has_sleeper(sbx), f"{sid} ({state}, {phase}) lost its processes"
    snaps = httpx.get(f"{k.url}/snapshots", headers=k.headers, timeout=30).json()
    # Each listed snapshot is complete on disk and starts sandboxes.
    assert len(snaps) == len(snapshot_dirs), f"store {snaps} vs disk {snapshot_dirs}"
    for s in snaps:
        made = Sandbox.create(s["snapshotID"], timeout=60, **k.sdk_opts())
        assert made.files.read("/home/user/f") == expect_file
        made.kill()
    return states, snaps


def clean(k):
    k.kill_all()
    for s in httpx.get(f"{k.url}/snapshots", headers=k.headers, timeout=30).json():
        httpx.delete(f"{k.url}/templates/{s['snapshotID']}", headers=k.headers, timeout=30)


@pytest.mark.parametrize(
    "runtime",
    ["container", "gvisor"],
)
def test_kill9_in_the_middle_of_pause_snapshot_and_fork(tmp_path, runtime):
    if runtime == "gvisor" and not shutil.which("runsc"):
        pytest.skip("runsc is not installed (scripts/deps/runtime.txt installs it)")
    tag = {"container": "fd", "gvisor": "fdv"}[runtime]
    env = {"KILN_RUNTIME": runtime}
    if runtime == "gvisor":
        # No warm sandboxes: the pool's team is not listed, and this
        # compares the list with the disk.
        env["KILN_GVISOR_WARM_POOL"] = "0"
    k = new_kilnd(tmp_path, tag, "10.243.0.0" if runtime == "container" else "10.242.0.0", **env)
    k.start()
    outcomes = []
    # The memory pause is gVisor's checkpoint; the container runtime's is
    # its freezer (nothing written), so it is paused keeping the disk.
    pause_body = {"memory": runtime == "gvisor"}
    try:
        for op in ("pause", "snapshot", "fork"):
            for delay in DELAYS if runtime == "container" else GVISOR_DELAYS:
                sbx = Sandbox.create(timeout=600, **k.sdk_opts())
                sbx.files.write("/home/user/f", "kept")
                sbx.commands.run(SLEEPER, background=True)
                sid = sbx.sandbox_id
                path, body = {
                    "pause": (f"/sandboxes/{sid}/pause", pause_body),
                    "snapshot": (f"/sandboxes/{sid}/snapshots", {}),
                    "fork": (f"/sandboxes/{sid}/fork", {"count": 2, "timeout": 120}),
                }[op]
                t = fire(k, "POST", path, body)
                time.sleep(delay)
                k.kill9()
                t.join(timeout=30)
                k.start()
                phase = on_disk(k, runtime)[0].get(sid)
                states, snaps = check_agreement(k, runtime, "kept", source=sid)
                assert sid in states, f"{op} at {delay}s lost the source sandbox"
                outcomes.append((op, delay, states[sid], phase, len(states), len(snaps)))
                clean(k)
        print("outcomes (op, delay, source state, its phase on disk, sandboxes, snapshots):", outcomes)
        # Both sides of the crash were seen for the pause, not only one.
        pause_states = {o[2] for o in outcomes if o[0] == "pause"}
        assert "paused" in pause_states, outcomes
    finally:
        try:
            clean(k)
        finally:
            assert k.stop() == 0
    left = wait_host_clean(tag, tmp_path)
    assert not left, f"left on the host: {left}"
