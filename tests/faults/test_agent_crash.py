"""kill -9 the process a sandbox lives by, from the host: the agent (the
container runtime's init) or, on gVisor, the sandbox's kernel (the sentry,
runsc-sandbox). kilnd reports the sandbox dead (404, not listed) and cleans
it up (its processes and cgroup gone), while another sandbox carries on."""

import os
import secrets
import signal
import time

import httpx
from e2b import Sandbox

from harness import (RUNTIME, cgroup_of, cgroup_pids, gvisor_tag, new_kilnd, sandbox_pids, tag_agents,
                     tag_cgroups, tag_sentries, wait_host_clean)

TAG = "fa"


def test_kill9_agent_reports_the_sandbox_dead(tmp_path):
    k = new_kilnd(tmp_path, TAG, "10.242.0.0")
    k.start()
    try:
        victim = Sandbox.create(timeout=600, **k.sdk_opts())
        bystander = Sandbox.create(timeout=600, **k.sdk_opts())
        marker = "kiln-mark-" + secrets.token_hex(6)
        victim.commands.run(f"sh -c 'sleep 900' {marker}", background=True)
        if RUNTIME == "gvisor":
            # The sandbox's processes are the sentry's, not the host's.
            cg = f"/kiln/{gvisor_tag(TAG)}/{victim.sandbox_id}"
            (init,) = tag_sentries(TAG, victim.sandbox_id)
        else:
            deadline = time.monotonic() + 10
            while not sandbox_pids(marker) and time.monotonic() < deadline:
                time.sleep(0.1)
            cg = cgroup_of(sandbox_pids(marker)[0])
            (init,) = tag_agents(TAG, cg)
        assert cgroup_pids(TAG, cg), f"no host process in the sandbox's cgroup {cg}"
        os.kill(init, signal.SIGKILL)

        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            r = httpx.get(f"{k.url}/sandboxes/{victim.sandbox_id}", headers=k.headers)
            if r.status_code == 404:
                break
            time.sleep(0.2)
        assert r.status_code == 404, f"the sandbox is still reported: {r.status_code} {r.text}"
        assert victim.sandbox_id not in k.list_ids()
        def left():
            return (sandbox_pids(marker) + cgroup_pids(TAG, cg),
                    [d for t in (TAG, gvisor_tag(TAG)) for d in tag_cgroups(t) if d.rstrip("/").endswith(cg)])

        deadline = time.monotonic() + 10
        while any(left()) and time.monotonic() < deadline:
            time.sleep(0.2)
        pids, cgroups = left()
        assert not pids, f"the dead sandbox's processes still run: {pids}"
        assert not cgroups, f"cgroup {cg} left"
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
