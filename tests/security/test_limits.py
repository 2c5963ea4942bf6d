"""Per-team limits and host admission, with the unmodified SDK: a team at
its limit gets 429 (E2B's `{code, message}` body, the message naming the
limit) and another team is unaffected; killing a sandbox makes room. The
limits are set with `kiln teams set` on the running kilnd's store (read at
every create). Host admission: a sandbox whose memory limit is more than
the host can honour (its memory times the overcommit factor) is refused
the same way."""

import secrets
import subprocess

import httpx
import pytest
from e2b import Sandbox
from e2b.exceptions import RateLimitException

from kilnd_process import kiln_bin


def kiln(kilnd, *args):
    r = subprocess.run([kiln_bin(), *args, "--data-dir", str(kilnd.data)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.fixture
def limited_team(kilnd):
    team = "lim-" + secrets.token_hex(3)
    key = kiln(kilnd, "keys", "create", "--team", team).strip()
    yield team, key
    kiln(kilnd, "teams", "reset", team)


def opts(kilnd, key):
    return dict(api_key=key, api_url=kilnd.url, sandbox_url=kilnd.url)


def test_team_limit_is_429_naming_it_and_other_teams_go_on(kilnd, limited_team):
    team, key = limited_team
    kiln(kilnd, "teams", "set", team, "--sandboxes", "2")
    assert team in kiln(kilnd, "teams", "list")
    made = []
    try:
        made = [Sandbox.create(timeout=300, **opts(kilnd, key)) for _ in range(2)]
        # The third: the SDK's rate-limit error, carrying kilnd's message.
        with pytest.raises(RateLimitException) as e:
            made.append(Sandbox.create(timeout=300, **opts(kilnd, key)))
        assert "2 concurrent sandboxes" in str(e.value), str(e.value)
        # The wire shape: 429 and E2B's error body.
        r = httpx.post(f"{kilnd.url}/sandboxes", json={"templateID": "base"}, headers={"X-API-KEY": key}, timeout=60)
        assert r.status_code == 429, r.text
        body = r.json()
        assert body["code"] == 429 and "concurrent sandboxes" in body["message"], body
        assert team in body["message"], body
        # Another team is unaffected.
        other = Sandbox.create(timeout=300, **kilnd.sdk_opts())
        assert other.commands.run("echo ok").stdout == "ok\n"
        other.kill()
        # Killing one makes room.
        made.pop().kill()
        again = Sandbox.create(timeout=300, **opts(kilnd, key))
        made.append(again)
        assert again.commands.run("echo ok").stdout == "ok\n"
    finally:
        for s in made:
            try:
                s.kill()
            except Exception:
                pass


def test_team_memory_limit_counts_limits_not_use(kilnd, limited_team):
    team, key = limited_team
    # The suite's sandboxes have 256 MiB limits: room for one, not two.
    kiln(kilnd, "teams", "set", team, "--memory-mib", "400")
    first = Sandbox.create(timeout=300, **opts(kilnd, key))
    try:
        r = httpx.post(f"{kilnd.url}/sandboxes", json={"templateID": "base"}, headers={"X-API-KEY": key}, timeout=60)
        assert r.status_code == 429, r.text
        assert "400 MiB memory" in r.json()["message"], r.text
    finally:
        first.kill()
    r = httpx.post(f"{kilnd.url}/sandboxes", json={"templateID": "base"}, headers={"X-API-KEY": key}, timeout=60)
    assert r.status_code == 201, r.text
    httpx.delete(f"{kilnd.url}/sandboxes/{r.json()['sandboxID']}", headers={"X-API-KEY": key}, timeout=60)


def test_bad_team_limits_are_refused(kilnd):
    r = subprocess.run([kiln_bin(), "teams", "set", "no/such team", "--sandboxes", "1", "--data-dir", str(kilnd.data)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "invalid team name" in r.stderr, r.stderr
    r = subprocess.run([kiln_bin(), "teams", "set", "x", "--data-dir", str(kilnd.data)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "at least one" in r.stderr, r.stderr


def test_host_refuses_what_it_cannot_honour(tmp_path):
    """A kilnd whose sandboxes' memory limit is twice the host's memory,
    with no memory overcommit: the host cannot honour one."""
    from harness import new_kilnd, wait_host_clean

    mem_mib = int(open("/proc/meminfo").read().split("MemTotal:")[1].split()[0]) // 1024
    data = tmp_path / "kiln-host"
    data.mkdir()
    k = new_kilnd(data, "secl", "10.242.0.0", KILN_WARM_POOL="1", KILN_CODE_INTERPRETER="false",
                  KILN_SANDBOX_MEMORY_MIB=str(2 * mem_mib), KILN_MEMORY_OVERCOMMIT="1",
                  KILN_TEAM_MEMORY_MIB=str(100 * mem_mib))
    k.start()
    try:
        r = httpx.post(f"{k.url}/sandboxes", json={"templateID": "base"}, headers=k.headers, timeout=60)
        assert r.status_code == 429, r.text
        body = r.json()
        assert body["code"] == 429, body
        assert body["message"].startswith(f"host: limit of {mem_mib} MiB memory"), body
        assert "cannot honour" in body["message"], body
        assert not k.list_ids()
    finally:
        k.kill_all()
        assert k.stop() == 0
    left = wait_host_clean("secl", data)
    assert not left, left
