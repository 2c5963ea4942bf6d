"""Access control through the proxy, metrics, and concurrent creates with
the real runtime and agent."""

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from e2b import Sandbox


def test_agent_port_needs_the_access_token(kilnd, sandbox):
    headers = {"E2b-Sandbox-Id": sandbox.sandbox_id, "E2b-Sandbox-Port": "49983"}
    r = httpx.get(f"{kilnd.url}/files", params={"path": "/etc/hostname"}, headers=headers)
    assert r.status_code == 401, r.text
    other = Sandbox.create()
    try:
        # Another sandbox's token does not open this one.
        wrong = dict(headers, **{"X-Access-Token": other._envd_access_token})
        r = httpx.get(f"{kilnd.url}/files", params={"path": "/etc/hostname"}, headers=wrong)
        assert r.status_code == 401, r.text
    finally:
        other.kill()


def test_private_sandbox_ports_need_the_traffic_token(kilnd):
    sbx = Sandbox.create(network={"allow_public_traffic": False})
    try:
        assert sbx.traffic_access_token
        sbx.commands.run("python3 -m http.server 8000", background=True, cwd="/tmp")
        host = sbx.get_host(8000)
        deadline = time.monotonic() + 15
        token = {"e2b-traffic-access-token": sbx.traffic_access_token}
        while True:
            r = httpx.get(kilnd.url, headers={"Host": host, **token})
            if r.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert r.status_code == 200
        assert httpx.get(kilnd.url, headers={"Host": host}).status_code == 403
        bad = {"e2b-traffic-access-token": "x" * 64}
        assert httpx.get(kilnd.url, headers={"Host": host, **bad}).status_code == 403
    finally:
        sbx.kill()


def test_metrics(sandbox):
    sandbox.commands.run("head -c 50000000 /dev/urandom | sha256sum")
    metrics = sandbox.get_metrics()
    assert len(metrics) >= 1
    m = metrics[-1]
    assert m.cpu_count >= 1
    assert m.mem_total > 0 and 0 < m.mem_used <= m.mem_total
    assert m.disk_total > 0


def test_concurrent_creates(kilnd):
    with ThreadPoolExecutor(10) as pool:
        sandboxes = list(pool.map(lambda _: Sandbox.create(), range(10)))
    try:
        assert len({s.sandbox_id for s in sandboxes}) == 10
        outs = [s.commands.run("hostname").stdout.strip() for s in sandboxes]
        assert outs == [s.sandbox_id for s in sandboxes]
    finally:
        with ThreadPoolExecutor(10) as pool:
            list(pool.map(lambda s: s.kill(), sandboxes))
