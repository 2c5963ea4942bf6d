"""A kilnd restart loses nothing: a running sandbox is re-attached with its
files and processes. Uses a kilnd of its own (own data dir, port, runtime tag
and subnet). Needs the real runtime."""

import secrets

import httpx
from e2b import Sandbox

from conftest import free_port, free_subnet, kill_all, start_kilnd, stop_kilnd


def test_restart_reattaches_running_sandboxes(tmp_path, kilnd):
    port = free_port()
    key = "e2b_" + secrets.token_hex(20)
    url = f"http://127.0.0.1:{port}"
    # Not the session kilnd's subnet (its bridge is routed by now anyway).
    # No warm code-interpreter sandboxes: not what this test is about.
    # Both runtimes' bridges fixed across the restart (a sandbox keeps its
    # address).
    subnet = free_subnet()
    extra = dict(
        KILN_RUNTIME_TAG="e2r",
        KILN_SUBNET=subnet,
        KILN_GVISOR_SUBNET=free_subnet(avoid=(subnet,)),
        KILN_INTERPRETER_WARM_POOL="0",
    )
    opts = dict(api_key=key, api_url=url, sandbox_url=url)
    proc = start_kilnd(tmp_path, port, key, **extra)
    try:
        sbx = Sandbox.create(timeout=300, **opts)
        sbx.files.write("/home/user/kept.txt", "still here")
        sleeper = sbx.commands.run("sleep 1000", background=True)
        killed = Sandbox.create(**opts)
        killed.kill()

        stop_kilnd(proc, tmp_path / "kilnd.log")
        proc = start_kilnd(tmp_path, port, key, **extra)

        ids = {s["sandboxID"] for s in httpx.get(f"{url}/v2/sandboxes", headers={"X-API-KEY": key}).json()}
        assert ids == {sbx.sandbox_id}
        again = Sandbox.connect(sbx.sandbox_id, **opts)
        assert again.files.read("/home/user/kept.txt") == "still here"
        assert any(p.pid == sleeper.pid for p in again.commands.list())
        assert again.commands.run("echo alive").stdout == "alive\n"
        again.kill()
    finally:
        kill_all(url, key)
        stop_kilnd(proc, tmp_path / "kilnd.log")
