"""A nearly full host file system under kilnd's data dir (a small tmpfs the
test mounts, never the real disk): creates answer 201 or a clear 507, never
a 500 or a hang; the store is not corrupted (SQLite integrity check, the
same sandboxes after a restart); once space is back, creates work again."""

import json
import os
import sqlite3
import subprocess
import time

import httpx
import pytest
from e2b import Sandbox

from harness import new_kilnd, wait_host_clean

TAG = "fd"


def fill(path):
    """Writes a file until the file system is full; returns its path."""
    f = path / "filler"
    chunk = b"\0" * (1 << 20)
    with open(f, "wb", buffering=0) as out:
        try:
            while True:
                out.write(chunk)
        except OSError:
            pass
    # The last partial megabytes too.
    with open(f, "ab", buffering=0) as out:
        try:
            while True:
                out.write(b"\0" * 4096)
        except OSError:
            pass
    return f


@pytest.fixture(scope="module")
def full_disk_run(tmp_path_factory):
    data = tmp_path_factory.mktemp("kiln-full")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160m,mode=0700", "kiln-fault-tmpfs", str(data)], check=True)
    # A small warm pool: 64 helpers' disk images would fill this tmpfs
    # before the test does.
    k = new_kilnd(data, TAG, "10.243.0.0", KILN_SANDBOX_DISK_MIB="64", KILN_SANDBOX_MEMORY_MIB="128",
                  KILN_WARM_POOL="4")
    result = {"statuses": [], "messages": []}
    try:
        k.start()
        before = Sandbox.create(timeout=600, **k.sdk_opts())
        before.files.write("/home/user/kept.txt", "before the disk filled")
        filler = fill(data)
        assert os.statvfs(data).f_bavail * os.statvfs(data).f_frsize < 1 << 20
        with httpx.Client(timeout=60) as c:
            made = []
            for _ in range(8):
                r = c.post(f"{k.url}/sandboxes", json={"templateID": "base"}, headers=k.headers)
                result["statuses"].append(r.status_code)
                if r.status_code == 201:
                    made.append(r.json()["sandboxID"])
                else:
                    result["messages"].append(r.text)
            r = c.get(f"{k.url}/v2/sandboxes", headers=k.headers)
            result["list_while_full"] = r.status_code
            for sid in made:
                r = c.delete(f"{k.url}/sandboxes/{sid}", headers=k.headers)
                result["statuses"].append(r.status_code)
                if r.status_code >= 500:
                    result["messages"].append(r.text)
        result["alive_while_full"] = k.proc.poll() is None
        filler.unlink()
        after = Sandbox.create(timeout=600, **k.sdk_opts())
        result["create_after"] = True
        assert after.commands.run("echo ok").stdout == "ok\n"
        after.kill()
        assert k.stop() == 0
        con = sqlite3.connect(data / "kiln.db")
        result["integrity"] = con.execute("PRAGMA integrity_check").fetchone()[0]
        con.close()
        k.start()
        result["listed_after_restart"] = k.list_ids()
        result["before"] = before.sandbox_id
        again = Sandbox.connect(before.sandbox_id, **k.sdk_opts())
        result["kept"] = again.files.read("/home/user/kept.txt")
        k.kill_all()
    finally:
        try:
            if k.proc is not None and k.proc.poll() is None:
                k.kill_all()
        finally:
            code = k.stop()
            left = wait_host_clean(TAG, data)
            subprocess.run(["umount", str(data)], check=False)
            if os.path.ismount(data):
                time.sleep(1)
                subprocess.run(["umount", "-l", str(data)], check=False)
    result["stop_code"] = code
    result["left"] = left
    return result


def test_full_disk_leaves_the_store_intact(full_disk_run):
    r = full_disk_run
    print(r)
    assert r["alive_while_full"], "kilnd died with its disk full"
    assert r["list_while_full"] == 200
    assert r["create_after"]
    assert r["integrity"] == "ok"
    assert r["before"] in r["listed_after_restart"]
    assert r["kept"] == "before the disk filled"
    assert r["stop_code"] == 0
    assert not r["left"], f"left on the host: {r['left']}"
    # Every refusal is the JSON error body the SDKs parse, never a hang.
    for m in r["messages"]:
        body = json.loads(m)
        assert body["message"] and body["code"] >= 400, m


def test_full_disk_answers_507(full_disk_run):
    r = full_disk_run
    assert 500 not in r["statuses"], f"a 500 with the disk full: {r['statuses']} {r['messages']}"
    assert 507 in r["statuses"], f"no 507 with the disk full: {r['statuses']} {r['messages']}"
    assert all("space" in m.lower() or "full" in m.lower() for m in r["messages"] if '"code":507' in m.replace(" ", ""))
