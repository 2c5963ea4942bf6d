"""kill -9 kilnd while 50 creates and execs are in flight, restart it on the
same data dir: no orphans (every sandbox on the host, an agent or a gVisor
sentry, belongs to a listed sandbox), the store agrees with what runs, the sandboxes made before
the crash and the ones listed after answer."""

import json
import struct
import threading
import time

import httpx
from e2b import Sandbox

from harness import RUNTIME, new_kilnd, sandbox_inits, wait_host_clean

TAG = "fk"


def exec_true(k, sandbox_id, token, client):
    msg = json.dumps({"process": {"cmd": "/bin/true"}}).encode()
    r = client.post(
        f"{k.url}/process.Process/Start",
        headers={
            "E2b-Sandbox-Id": sandbox_id,
            "E2b-Sandbox-Port": "49983",
            "X-Access-Token": token,
            "Content-Type": "application/connect+json",
        },
        content=struct.pack(">BI", 0, len(msg)) + msg,
    )
    return r.status_code == 200 and b'"end"' in r.content


def test_kill9_kilnd_during_creates_and_execs(tmp_path):
    # No gVisor warm sandboxes: they are on the host and not listed.
    k = new_kilnd(tmp_path, TAG, "10.241.0.0", KILN_GVISOR_WARM_POOL="0")
    k.start()
    try:
        survivors = []
        for i in range(3):
            s = Sandbox.create(timeout=600, **k.sdk_opts())
            s.files.write("/home/user/kept.txt", f"survivor {i}")
            s.commands.run("sleep 900", background=True)
            survivors.append(s)

        created = {}  # id -> token, creates answered 201 before the crash
        errors = []
        lock = threading.Lock()

        def worker():
            with httpx.Client(timeout=20) as c:
                try:
                    r = c.post(f"{k.url}/sandboxes", json={"templateID": "base", "timeout": 600}, headers=k.headers)
                except httpx.HTTPError as e:
                    errors.append(type(e).__name__)
                    return
                if r.status_code != 201:
                    errors.append(r.status_code)
                    return
                sid, token = r.json()["sandboxID"], r.json()["envdAccessToken"]
                with lock:
                    created[sid] = token
                for _ in range(50):
                    try:
                        exec_true(k, sid, token, c)
                    except httpx.HTTPError:
                        return

        threads = [threading.Thread(target=worker, daemon=True) for _ in range(50)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 20
        while len(created) < 10 and time.monotonic() < deadline:
            time.sleep(0.01)
        k.kill9()
        in_flight = 50 - len(created) - len(errors)
        for t in threads:
            t.join(timeout=30)
        print(f"crash with {len(created)} creates answered, about {in_flight} in flight")
        assert created, "no create finished before the crash: the crash did not hit mid-run"

        k.start()
        # Recovery: give it a moment to kill half-created leftovers.
        deadline = time.monotonic() + 20
        while True:
            listed = k.list_ids()
            running = sandbox_inits(TAG)
            if len(running) == len(listed) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert len(running) == len(listed), (
            f"{len(running)} sandboxes ({RUNTIME}) run on the host, the store lists {len(listed)}"
        )
        for s in survivors:
            assert s.sandbox_id in listed
            again = Sandbox.connect(s.sandbox_id, **k.sdk_opts())
            assert again.files.read("/home/user/kept.txt").startswith("survivor")
            assert again.commands.run("echo alive").stdout == "alive\n"
        # Every create that answered 201 is either listed and answering, or gone.
        with httpx.Client(timeout=20) as c:
            for sid, token in created.items():
                r = c.get(f"{k.url}/sandboxes/{sid}", headers=k.headers)
                if sid in listed:
                    assert r.status_code == 200
                    assert exec_true(k, sid, token, c), f"listed sandbox {sid} does not answer"
                else:
                    assert r.status_code == 404, f"{sid}: {r.status_code} {r.text}"
            for sid in listed:
                tok = c.get(f"{k.url}/sandboxes/{sid}", headers=k.headers).json()["envdAccessToken"]
                assert exec_true(k, sid, tok, c), f"listed sandbox {sid} does not answer"
        k.kill_all()
    finally:
        k.kill_all() if k.proc and k.proc.poll() is None else None
        code = k.stop()
    assert code == 0
    left = wait_host_clean(TAG, tmp_path)
    assert not left, f"left on the host: {left}"
