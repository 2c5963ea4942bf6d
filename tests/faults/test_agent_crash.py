"""kill -9 the agent (the sandbox's init) from the host: kilnd reports the
sandbox dead (404, not listed) and cleans it up (its processes and cgroup
gone), while another sandbox carries on."""

import os
import secrets
import signal
import time

import httpx
from e2b import Sandbox

from harness import cgroup_of, new_kilnd, sandbox_pids, tag_agents, tag_cgroups, wait_host_clean

TAG = "fa"


def test_kill9_agent_reports_the_sandbox_dead(tmp_path):
    k = new_kilnd(tmp_path, TAG, "10.242.0.0")
    k.start()
    try:
        victim = Sandbox.create(timeout=600, **k.sdk_opts())
        bystander = Sandbox.create(timeout=600, **k.sdk_opts())
        marker = "kiln-mark-" + secrets.token_hex(6)
        victim.commands.run(f"sh -c 'sleep 900' {marker}", background=True)
        deadline = time.monotonic() + 10
        while not sandbox_pids(marker) and time.monotonic() < deadline:
            time.sleep(0.1)
        child = sandbox_pids(marker)[0]
        cg = cgroup_of(child)
        (agent,) = tag_agents(TAG, cg)
        os.kill(agent, signal.SIGKILL)

        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            r = httpx.get(f"{k.url}/sandboxes/{victim.sandbox_id}", headers=k.headers)
            if r.status_code == 404:
                break
            time.sleep(0.2)
        assert r.status_code == 404, f"the sandbox is still reported: {r.status_code} {r.text}"
        assert victim.sandbox_id not in k.list_ids()
        deadline = time.monotonic() + 10
        while (sandbox_pids(marker) or any(d.rstrip("/").endswith(cg) for d in tag_cgroups(TAG))) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not sandbox_pids(marker), "the dead sandbox's processes still run"
        assert not any(d.rstrip("/").endswith(cg) for d in tag_cgroups(TAG)), f"cgroup {cg} left"
        # The proxy says the sandbox is gone, as the SDK expects.
        r = httpx.get(
            f"{k.url}/health",
            headers={"E2b-Sandbox-Id": victim.sandbox_id, "E2b-Sandbox-Port": "49983"},
        )
        assert r.status_code == 502
        assert bystander.commands.run("echo alive").stdout == "alive\n"
        k.kill_all()
    finally:
        code = k.stop()
    assert code == 0
    left = wait_host_clean(TAG, tmp_path)
    assert not left, f"left on the host: {left}"
