"""The control API exactly as E2B's, through the unmodified SDKs (sync and
async): list order, filters and pages; timeout 0; metrics over a range and
for several sandboxes; template lookups and shapes; ids and the fields of
the create answer; error bodies. The tests marked `control` need no agent
and pass on the fake runtime too; the others (a command cut by a kill, a
signed URL past its expiry) need a real sandbox."""

import datetime
import os
import time
import uuid

import httpx
import pytest
from e2b import (
    AsyncSandbox,
    AsyncTemplate,
    Sandbox,
    SandboxException,
    SandboxNotFoundException,
    SandboxNotRunningException,
    SandboxQuery,
    SandboxState,
    Template,
)
from e2b.api.client.api.sandboxes import get_sandboxes_metrics, get_sandboxes_sandbox_id
from e2b.api.client.api.templates import get_templates, get_templates_template_id
from e2b.api.client.models import SandboxDetail, SandboxesWithMetrics, TemplateWithBuilds
from e2b.api.client_async import get_api_client as get_async_api_client
from e2b.api.client_sync import get_api_client
from e2b.connection_config import ConnectionConfig


control = pytest.mark.control


def ids(infos):
    return [s.sandbox_id for s in infos]


def every_page(paginator):
    out = []
    while paginator.has_next:
        out.extend(paginator.next_items())
    return out


async def every_page_async(paginator):
    out = []
    while paginator.has_next:
        out.extend(await paginator.next_items())
    return out


@pytest.fixture
def three(kilnd):
    """Three sandboxes of one tag, made one after another (oldest first),
    the middle one paused: listings span running and paused ones."""
    tag = uuid.uuid4().hex
    made = []
    for i in range(3):
        made.append(Sandbox.create(metadata={"suite": tag, "i": str(i)}))
        time.sleep(0.01)  # distinct start times
    made[1].pause()
    yield tag, made
    for s in made:
        Sandbox.kill(s.sandbox_id)


# --- GET /v2/sandboxes ----------------------------------------------------


@control
def test_list_is_newest_first_and_pages_in_the_order_asked(three):
    tag, made = three
    q = SandboxQuery(metadata={"suite": tag})
    made_ids = [s.sandbox_id for s in made]
    assert ids(every_page(Sandbox.list(query=q))) == made_ids[::-1], "newest first by default"
    assert ids(every_page(Sandbox.list(query=q, limit=1))) == made_ids[::-1]
    assert ids(every_page(Sandbox.list(query=q, limit=1, order="desc"))) == made_ids[::-1]
    assert ids(every_page(Sandbox.list(query=q, limit=1, order="asc"))) == made_ids
    states = [s.state for s in every_page(Sandbox.list(query=q, order="asc"))]
    assert states == [SandboxState.RUNNING, SandboxState.PAUSED, SandboxState.RUNNING]


@control
def test_list_filters_by_start_time_and_template(three):
    tag, made = three
    infos = {s.sandbox_id: s for s in every_page(Sandbox.list(query=SandboxQuery(metadata={"suite": tag})))}
    middle = infos[made[1].sandbox_id]
    after = every_page(Sandbox.list(query=SandboxQuery(metadata={"suite": tag}, started_after=middle.started_at)))
    assert ids(after) == [made[2].sandbox_id, made[1].sandbox_id], "at or after, inclusive"
    template = middle.template_id
    by_id = every_page(Sandbox.list(query=SandboxQuery(metadata={"suite": tag}, template=template)))
    assert len(by_id) == 3
    none = every_page(Sandbox.list(query=SandboxQuery(metadata={"suite": tag}, template="no-such-template")))
    assert none == []
    with pytest.raises(SandboxException) as e:
        Sandbox.list(query=SandboxQuery(template="base:v9")).next_items()
    assert "tag" in str(e.value)

    # startedBefore is a Kiln extension the SDK does not send.
    headers = {"X-API-KEY": os.environ["E2B_API_KEY"]}
    url = os.environ["E2B_API_URL"]
    r = httpx.get(
        f"{url}/v2/sandboxes",
        params={"startedBefore": middle.started_at.isoformat(), "metadata": f"suite={tag}"},
        headers=headers,
    )
    assert r.status_code == 200, r.text
    assert [s["sandboxID"] for s in r.json()] == [made[1].sandbox_id, made[0].sandbox_id]
    assert r.headers["x-total-running"] == "1"


@control
async def test_async_list_order_and_filters(three):
    tag, made = three
    q = SandboxQuery(metadata={"suite": tag})
    made_ids = [s.sandbox_id for s in made]
    assert ids(await every_page_async(AsyncSandbox.list(query=q, limit=2))) == made_ids[::-1]
    assert ids(await every_page_async(AsyncSandbox.list(query=q, limit=2, order="asc"))) == made_ids
    infos = await every_page_async(AsyncSandbox.list(query=q, order="asc"))
    newer = await every_page_async(
        AsyncSandbox.list(query=SandboxQuery(metadata={"suite": tag}, started_after=infos[2].started_at))
    )
    assert ids(newer) == [made[2].sandbox_id]
    nothing = await every_page_async(
        AsyncSandbox.list(query=SandboxQuery(metadata={"suite": tag}, template="no-such-template"))
    )
    assert nothing == []


# --- POST /sandboxes/{id}/timeout with 0 --------------------------------


def detail(sandbox_id):
    r = httpx.get(
        f"{os.environ['E2B_API_URL']}/sandboxes/{sandbox_id}",
        headers={"X-API-KEY": os.environ["E2B_API_KEY"]},
    )
    return r.status_code, r.json()


@control
def test_timeout_zero_kills_now(kilnd):
    sbx = Sandbox.create()
    sbx.set_timeout(0)
    assert not sbx.is_running()
    with pytest.raises(SandboxNotFoundException):
        Sandbox.get_info(sbx.sandbox_id)
    with pytest.raises(SandboxNotFoundException):
        sbx.set_timeout(0)
    other = Sandbox.create()
    try:
        with pytest.raises(SandboxException) as e:
            other.set_timeout(-1)
        assert "between 0" in str(e.value)
        assert Sandbox.get_info(other.sandbox_id).state == SandboxState.RUNNING
    finally:
        other.kill()


@control
@pytest.mark.parametrize(
    "on_timeout,mode",
    [
        ("pause", "full"),
        ({"action": "pause", "keep_memory": True}, "full"),
        ({"action": "pause", "mode": "full"}, "full"),
        ({"action": "pause", "mode": "filesystem"}, "filesystem"),
    ],
)
def test_timeout_zero_runs_the_pause_action(kilnd, on_timeout, mode):
    sbx = Sandbox.create(lifecycle={"on_timeout": on_timeout})
    try:
        sbx.set_timeout(0)
        assert Sandbox.get_info(sbx.sandbox_id).state == SandboxState.PAUSED
        status, d = detail(sbx.sandbox_id)
        assert status == 200 and d["pauseMode"] == mode, d
        again = Sandbox.connect(sbx.sandbox_id)
        assert again.get_info().state == SandboxState.RUNNING
    finally:
        Sandbox.kill(sbx.sandbox_id)


@control
async def test_async_timeout_zero(kilnd):
    sbx = await AsyncSandbox.create()
    await sbx.set_timeout(0)
    assert not await sbx.is_running()
    paused = await AsyncSandbox.create(lifecycle={"on_timeout": "pause"})
    try:
        await paused.set_timeout(0)
        assert (await AsyncSandbox.get_info(paused.sandbox_id)).state == SandboxState.PAUSED
    finally:
        await AsyncSandbox.kill(paused.sandbox_id)


def test_timeout_zero_pause_keeps_the_processes(kilnd):
    sbx = Sandbox.create(lifecycle={"on_timeout": "pause"})
    try:
        h = sbx.commands.run("sleep 600", background=True)
        sbx.set_timeout(0)
        again = Sandbox.connect(sbx.sandbox_id)
        assert h.pid in [p.pid for p in again.commands.list()], "memory was kept"
    finally:
        Sandbox.kill(sbx.sandbox_id)


# --- metrics ----------------------------------------------------------------


def wait_for_samples(get, n):
    deadline = time.monotonic() + 30
    while True:
        ms = get()
        if len(ms) >= n or time.monotonic() > deadline:
            return ms
        time.sleep(0.5)


@control
def test_metrics_over_a_range(kilnd):
    sbx = Sandbox.create()
    try:
        assert len(sbx.get_metrics()) >= 1, "a new sandbox has a sample"
        ms = wait_for_samples(sbx.get_metrics, 3)
        assert len(ms) >= 3, "sampled every KILN_METRICS_INTERVAL"
        assert [m.timestamp for m in ms] == sorted(m.timestamp for m in ms)
        assert all(m.cpu_count >= 1 and m.mem_total > 0 and m.disk_total > 0 for m in ms)
        t = ms[1].timestamp
        only = sbx.get_metrics(start=t, end=t)
        assert only and all(int(m.timestamp.timestamp()) == int(t.timestamp()) for m in only)
        later = sbx.get_metrics(start=ms[-1].timestamp)
        assert later and all(m.timestamp >= ms[-1].timestamp.replace(microsecond=0) for m in later)
        before = sbx.get_info().started_at - datetime.timedelta(seconds=1)
        assert sbx.get_metrics(start=before - datetime.timedelta(hours=1), end=before) == []
        with pytest.raises(SandboxException):
            sbx.get_metrics(start=t, end=t - datetime.timedelta(seconds=5))
    finally:
        sbx.kill()
    with pytest.raises(SandboxNotFoundException):
        Sandbox.get_metrics(sbx.sandbox_id)


@control
async def test_async_metrics_over_a_range(kilnd):
    sbx = await AsyncSandbox.create()
    try:
        deadline = time.monotonic() + 30
        ms = await sbx.get_metrics()
        while len(ms) < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
            ms = await sbx.get_metrics()
        assert len(ms) >= 2
        t = ms[-1].timestamp
        assert await sbx.get_metrics(start=t, end=t)
    finally:
        await sbx.kill()


@control
async def test_metrics_of_several_sandboxes(kilnd):
    a, b = Sandbox.create(), Sandbox.create()
    try:
        a.get_metrics()
        b.get_metrics()
        client = get_api_client(ConnectionConfig())
        ids_asked = [a.sandbox_id, b.sandbox_id, "nosuchsandbox"]
        res = get_sandboxes_metrics.sync_detailed(client=client, sandbox_ids=ids_asked)
        assert res.status_code == 200
        assert isinstance(res.parsed, SandboxesWithMetrics)
        got = res.parsed.sandboxes  # the SDK leaves the map as JSON
        assert set(got) == {a.sandbox_id, b.sandbox_id}, "unknown ids are left out"
        assert got[a.sandbox_id]["cpuCount"] >= 1 and got[a.sandbox_id]["memTotal"] > 0
        other = get_api_client(ConnectionConfig(api_key=kilnd.other_team_key))
        res = get_sandboxes_metrics.sync_detailed(client=other, sandbox_ids=ids_asked)
        assert res.parsed.sandboxes == {}, "another team's are not seen"
        res = await get_sandboxes_metrics.asyncio_detailed(
            client=get_async_api_client(ConnectionConfig()), sandbox_ids=[a.sandbox_id]
        )
        assert list(res.parsed.sandboxes) == [a.sandbox_id]
        res = get_sandboxes_metrics.sync_detailed(client=client, sandbox_ids=[f"s{i}" for i in range(101)])
        assert res.status_code == 400
    finally:
        a.kill()
        b.kill()


# --- templates ------------------------------------------------------------


@control
def test_template_exists_and_shapes(kilnd):
    assert Template.exists("base")
    assert Template.alias_exists("base")
    assert not Template.exists("no-such-template")
    client = get_api_client(ConnectionConfig())
    res = get_templates.sync_detailed(client=client)
    assert res.status_code == 200
    listed = res.parsed
    assert listed and all(t.build_status.value == "ready" for t in listed)
    base = next(t for t in listed if t.template_id == "base" or "base" in t.aliases)
    uuid.UUID(base.build_id)
    res = get_templates_template_id.sync_detailed("base", client=client)
    assert res.status_code == 200, res.content
    assert isinstance(res.parsed, TemplateWithBuilds)
    assert res.parsed.template_id == base.template_id
    assert res.parsed.build_id == base.build_id and res.parsed.is_default is True
    assert str(res.parsed.builds[0].build_id) == base.build_id
    assert get_templates_template_id.sync_detailed("no-such-template", client=client).status_code == 404


@control
async def test_async_template_exists(kilnd):
    assert await AsyncTemplate.exists("base")
    assert not await AsyncTemplate.exists("no-such-template")


# --- ids, fields, errors ----------------------------------------------------


@control
def test_ids_and_fields_of_the_spec(kilnd):
    sbx = Sandbox.create()
    try:
        sid = sbx.sandbox_id
        assert len(sid) == 20 and sid.isalnum() and sid == sid.lower()
        res = get_sandboxes_sandbox_id.sync_detailed(sid, client=get_api_client(ConnectionConfig()))
        d = res.parsed
        assert isinstance(d, SandboxDetail)
        assert d.client_id and d.envd_version == "0.6.4" and d.domain
        # The older SDKs' <sandboxID>-<clientID> names the same sandbox.
        composite = f"{sid}-{d.client_id}"
        assert Sandbox.get_info(composite).sandbox_id == sid
        with pytest.raises(SandboxException) as e:
            Sandbox.get_info("Not-A-Valid-Id")
        assert "400" in str(e.value) or "invalid sandbox ID" in str(e.value)
        assert Sandbox.kill(composite) is True
    finally:
        Sandbox.kill(sbx.sandbox_id)


@control
@pytest.mark.parametrize(
    "method,path,code",
    [
        ("GET", "/no/such/endpoint", 404),
        ("POST", "/v3/sandboxes", 404),
        ("PUT", "/sandboxes", 405),
        ("GET", "/sandboxes/UPPER", 400),
        ("GET", "/sandboxes/nosuchsandbox", 404),
        ("GET", "/sandboxes/nosuchsandbox/metrics", 404),
        ("GET", "/templates/aliases/no-such-template", 404),
    ],
)
def test_errors_are_code_and_message(kilnd, method, path, code):
    r = httpx.request(method, kilnd.url + path, headers={"X-API-KEY": kilnd.key})
    assert r.status_code == code
    body = r.json()
    assert body["code"] == code and isinstance(body["message"], str) and body["message"]


# --- through the proxy (a real sandbox) ------------------------------------


def test_kill_while_a_command_streams_ends_its_wait(kilnd):
    sbx = Sandbox.create()
    out = []
    h = sbx.commands.run("while true; do echo tick; sleep 0.1; done", background=True, on_stdout=out.append)
    Sandbox.kill(sbx.sandbox_id)
    with pytest.raises(SandboxNotRunningException) as e:
        h.wait()
    assert "killed or reached its end of life" in str(e.value)


async def test_async_kill_while_a_command_streams_ends_its_wait(kilnd):
    sbx = await AsyncSandbox.create()
    out = []
    h = await sbx.commands.run(
        "while true; do echo tick; sleep 0.1; done", background=True, on_stdout=out.append
    )
    await AsyncSandbox.kill(sbx.sandbox_id)
    with pytest.raises(SandboxNotRunningException) as e:
        await h.wait()
    assert "killed or reached its end of life" in str(e.value)


def test_signed_url_past_its_expiry_is_401(sandbox):
    sandbox.files.write("/tmp/signed.txt", "signed")
    fresh = sandbox.download_url("/tmp/signed.txt", use_signature_expiration=120)
    assert httpx.get(fresh).content == b"signed"
    expired = sandbox.download_url("/tmp/signed.txt", use_signature_expiration=-5)
    r = httpx.get(expired)
    assert r.status_code == 401
    assert r.json()["message"] == "signature is already expired"
    up = sandbox.upload_url("/tmp/signed.txt", use_signature_expiration=-5)
    r = httpx.post(up, files={"file": ("x", b"new")})
    assert r.status_code == 401 and r.json()["message"] == "signature is already expired"
    assert sandbox.files.read("/tmp/signed.txt") == "signed"


async def test_async_signed_url_past_its_expiry_is_401(async_sandbox):
    await async_sandbox.files.write("/tmp/signed.txt", "signed")
    expired = async_sandbox.download_url("/tmp/signed.txt", use_signature_expiration=-5)
    async with httpx.AsyncClient() as c:
        r = await c.get(expired)
    assert r.status_code == 401
    assert r.json()["message"] == "signature is already expired"
