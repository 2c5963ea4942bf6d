"""Control API and proxy behaviour through the unmodified Python SDK. These
need no agent: they pass on the fake runtime too."""

import json
import time
import uuid

import httpx
import pytest
from e2b import (
    AsyncSandbox,
    AuthenticationException,
    Sandbox,
    SandboxException,
    SandboxNotFoundException,
    SandboxNotRunningException,
    SandboxQuery,
    SandboxState,
)

pytestmark = pytest.mark.control


def live_ids(kilnd, key=None):
    r = httpx.get(f"{kilnd.url}/v2/sandboxes", headers={"X-API-KEY": key or kilnd.key})
    assert r.status_code == 200
    return {s["sandboxID"] for s in r.json()}


def test_create_get_info_set_timeout_kill(kilnd):
    sbx = Sandbox.create(timeout=120, metadata={"case": "info"})
    try:
        info = sbx.get_info()
        assert info.sandbox_id == sbx.sandbox_id
        assert info.template_id
        assert info.metadata == {"case": "info"}
        assert info.state == SandboxState.RUNNING
        assert 110 <= (info.end_at - info.started_at).total_seconds() <= 130
        assert info.cpu_count >= 1 and info.memory_mb >= 1

        sbx.set_timeout(600)
        info2 = sbx.get_info()
        assert (info2.end_at - info.end_at).total_seconds() > 400
    finally:
        sbx.kill()
    assert sbx.sandbox_id not in live_ids(kilnd)
    with pytest.raises(SandboxNotFoundException):
        Sandbox.get_info(sbx.sandbox_id)


def test_list_with_metadata_filter_and_pagination(kilnd):
    tag = uuid.uuid4().hex
    made = [Sandbox.create(metadata={"suite": tag, "i": str(i)}) for i in range(3)]
    other = Sandbox.create(metadata={"suite": "someone-else"})
    try:
        paginator = Sandbox.list(query=SandboxQuery(metadata={"suite": tag}), limit=2)
        seen = []
        while paginator.has_next:
            seen.extend(s.sandbox_id for s in paginator.next_items())
        assert sorted(seen) == sorted(s.sandbox_id for s in made)
        assert other.sandbox_id not in seen

        one = Sandbox.list(query=SandboxQuery(metadata={"suite": tag, "i": "1"})).next_items()
        assert [s.sandbox_id for s in one] == [made[1].sandbox_id]
    finally:
        for s in made + [other]:
            s.kill()


def test_connect_by_id_from_a_second_client(kilnd):
    sbx = Sandbox.create(timeout=60)
    try:
        again = Sandbox.connect(sbx.sandbox_id, timeout=300)
        assert again.sandbox_id == sbx.sandbox_id
        assert (again.get_info().end_at - sbx.get_info().started_at).total_seconds() > 250
    finally:
        sbx.kill()


def test_timeout_expiry_kills(kilnd):
    sbx = Sandbox.create(timeout=2)
    time.sleep(2)
    deadline = time.monotonic() + 10
    while sbx.sandbox_id in live_ids(kilnd) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sbx.sandbox_id not in live_ids(kilnd)
    assert not sbx.is_running()


def test_killed_sandbox_through_the_proxy_is_not_running(kilnd):
    sbx = Sandbox.create()
    sbx.kill()
    assert not sbx.is_running()
    with pytest.raises(SandboxNotRunningException):
        sbx.commands.run("true")
    with pytest.raises(SandboxNotRunningException):
        sbx.files.read("/etc/hostname")


def test_unknown_template_is_404_and_creates_nothing(kilnd):
    before = live_ids(kilnd)
    with pytest.raises(SandboxException) as e:
        Sandbox.create(template="no-such-template")
    assert "404" in str(e.value) and "no-such-template" in str(e.value)
    assert live_ids(kilnd) == before


@pytest.mark.parametrize("timeout", [-1, 10**9])
def test_bad_timeout_is_400(kilnd, timeout):
    before = live_ids(kilnd)
    with pytest.raises(SandboxException) as e:
        Sandbox.create(timeout=timeout)
    assert "400" in str(e.value) and "timeout" in str(e.value)
    assert live_ids(kilnd) == before


def test_malformed_json_is_400(kilnd):
    before = live_ids(kilnd)
    r = httpx.post(
        f"{kilnd.url}/v2/sandboxes",
        content=b'{"templateID": "base", ',
        headers={"X-API-KEY": kilnd.key, "Content-Type": "application/json"},
    )
    assert r.status_code == 400
    body = r.json()
    assert body["code"] == 400 and body["message"]
    assert live_ids(kilnd) == before


def test_wrong_key_is_401(kilnd):
    with pytest.raises(AuthenticationException):
        Sandbox.create(api_key="e2b_" + "0" * 40)
    r = httpx.get(f"{kilnd.url}/v2/sandboxes", headers={"X-API-KEY": "e2b_00"})
    assert r.status_code == 401 and r.json()["code"] == 401


def test_other_teams_sandbox_is_404(kilnd):
    sbx = Sandbox.create()
    try:
        with pytest.raises(SandboxNotFoundException):
            Sandbox.get_info(sbx.sandbox_id, api_key=kilnd.other_team_key)
        with pytest.raises(SandboxNotFoundException):
            Sandbox.connect(sbx.sandbox_id, api_key=kilnd.other_team_key)
        assert Sandbox.kill(sbx.sandbox_id, api_key=kilnd.other_team_key) is False
        assert sbx.sandbox_id not in live_ids(kilnd, kilnd.other_team_key)
        assert sbx.get_info().sandbox_id == sbx.sandbox_id
    finally:
        sbx.kill()


def test_templates_and_openapi(kilnd):
    r = httpx.get(f"{kilnd.url}/templates", headers={"X-API-KEY": kilnd.key})
    assert r.status_code == 200
    assert any(t["templateID"] == "base" or "base" in t["aliases"] for t in r.json())
    doc = httpx.get(f"{kilnd.url}/openapi.json").json()
    assert "/v2/sandboxes" in doc["paths"]


async def test_async_create_info_list_kill(kilnd):
    tag = uuid.uuid4().hex
    sbx = await AsyncSandbox.create(metadata={"suite": tag})
    try:
        info = await sbx.get_info()
        assert info.sandbox_id == sbx.sandbox_id
        found = await AsyncSandbox.list(query=SandboxQuery(metadata={"suite": tag})).next_items()
        assert [s.sandbox_id for s in found] == [sbx.sandbox_id]
        await sbx.set_timeout(60)
    finally:
        await sbx.kill()
    assert not await sbx.is_running()


def test_error_bodies_are_json(kilnd):
    r = httpx.delete(f"{kilnd.url}/sandboxes/doesnotexist", headers={"X-API-KEY": kilnd.key})
    assert r.status_code == 404
    assert json.loads(r.text)["code"] == 404
