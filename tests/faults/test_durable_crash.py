"""kill -9 of kilnd in the middle of a pause, a snapshot and a fork, at
several instants, then a start on the same data dir: the store and the disk
agree. Every sandbox the API lists answers with its files; every sandbox
directory on disk is one the API lists; every snapshot the API lists is
complete on disk and starts a sandbox, and no other snapshot is on disk."""

import json
import pathlib
import threading
import time

import httpx
from e2b import Sandbox

from harness import new_kilnd, wait_host_clean

TAG = "fd"
DELAYS = [0.0, 0.01, 0.04, 0.12]


def fire(k, method, path, body):
    def go():
        try:
            httpx.request(method, f"{k.url}{path}", json=body, headers=k.headers, timeout=30)
        except httpx.HTTPError:
            pass  # kilnd died under it: that is the point

    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t


def on_disk(k):
    root = pathlib.Path(k.data) / "container"
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


def check_agreement(k, expect_file):
    listed = httpx.get(f"{k.url}/v2/sandboxes", params={"state": "running,paused", "limit": 1000},
                       headers=k.headers, timeout=30).json()
    states = {s["sandboxID"]: s["state"] for s in listed}
    sandboxes, snapshot_dirs, leftovers = on_disk(k)
    assert not leftovers, f"half-written snapshots left: {leftovers}"
    assert set(sandboxes) == set(states), f"store {states} vs disk {sandboxes}"
    for sid, state in states.items():
        phase = sandboxes[sid]
        if phase == "paused_fs":
            assert state == "paused", (sid, state, phase)
        if state == "running":
            assert phase == "running", (sid, state, phase)
        sbx = Sandbox.connect(sid, **k.sdk_opts())
        assert sbx.files.read("/home/user/f") == expect_file, sid
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


def test_kill9_in_the_middle_of_pause_snapshot_and_fork(tmp_path):
    k = new_kilnd(tmp_path, TAG, "10.243.0.0")
    k.start()
    outcomes = []
    try:
        for op in ("pause", "snapshot", "fork"):
            for delay in DELAYS:
                sbx = Sandbox.create(timeout=600, **k.sdk_opts())
                sbx.files.write("/home/user/f", "kept")
                sid = sbx.sandbox_id
                path, body = {
                    "pause": (f"/sandboxes/{sid}/pause", {"memory": False}),
                    "snapshot": (f"/sandboxes/{sid}/snapshots", {}),
                    "fork": (f"/sandboxes/{sid}/fork", {"count": 2, "timeout": 120}),
                }[op]
                t = fire(k, "POST", path, body)
                time.sleep(delay)
                k.kill9()
                t.join(timeout=30)
                k.start()
                states, snaps = check_agreement(k, "kept")
                assert sid in states, f"{op} at {delay}s lost the source sandbox"
                outcomes.append((op, delay, states[sid], len(states), len(snaps)))
                clean(k)
        print("outcomes (op, delay, source state, sandboxes, snapshots):", outcomes)
        # Both sides of the crash were seen for the pause, not only one.
        pause_states = {o[2] for o in outcomes if o[0] == "pause"}
        assert "paused" in pause_states, outcomes
    finally:
        try:
            clean(k)
        finally:
            assert k.stop() == 0
    left = wait_host_clean(TAG, tmp_path)
    assert not left, f"left on the host: {left}"
