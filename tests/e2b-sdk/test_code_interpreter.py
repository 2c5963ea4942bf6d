"""The code-interpreter template through kilnd: the unmodified
e2b-code-interpreter SDK (2.11.5) creates a sandbox of its default template
(`code-interpreter-v1`), and run_code reaches kiln-interpreter on port 49999
through kilnd's proxy. Needs the container runtime and a kilnd that serves
the template (KILN_CODE_INTERPRETER=true, set by scripts/test.d/40-e2b-sdk.sh).
"""

import base64
import json
import secrets
import struct
import threading
import time

import httpx
import pytest
from conftest import RUNTIME, free_port, free_subnet, kill_all, start_kilnd, stop_kilnd
from e2b_code_interpreter import Sandbox

pytestmark = pytest.mark.skipif(
    RUNTIME != "container",
    reason="the code-interpreter template needs the container runtime (KILN_E2E_RUNTIME=container)",
)


@pytest.fixture(scope="module")
def ci(kilnd):
    sbx = Sandbox.create(timeout=300)
    yield sbx
    try:
        sbx.kill()
    except Exception:
        pass


def test_templates_lists_the_code_interpreter(kilnd):
    r = httpx.get(f"{kilnd.url}/templates", headers={"X-API-KEY": kilnd.key})
    assert r.status_code == 200
    aliases = [a for t in r.json() for a in t["aliases"]]
    assert "code-interpreter-v1" in aliases
    assert "code-interpreter" in aliases
    assert "base" in aliases


def test_default_template_is_the_code_interpreter(ci, kilnd):
    info = httpx.get(f"{kilnd.url}/sandboxes/{ci.sandbox_id}", headers={"X-API-KEY": kilnd.key}).json()
    assert info["templateID"].startswith("code-interpreter-")
    assert info["alias"] == "code-interpreter-v1"
    # The interpreter runs as the template's start command, as user `user`.
    procs = ci.commands.list()
    started = [p for p in procs if p.tag == "kiln-template-start"]
    assert len(started) == 1
    assert started[0].cmd == "/usr/local/bin/kiln-interpreter"
    assert ci.commands.run("id -un").stdout == "user\n"


def test_state_carries_over(ci):
    first = ci.run_code("x = 1")
    assert first.error is None
    second = ci.run_code("x + 1")
    assert second.error is None
    assert second.text == "2"


def test_matplotlib_png(ci):
    execution = ci.run_code(
        "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [4, 1, 9])\nplt.show()\n"
    )
    assert execution.error is None
    pngs = [r.png for r in execution.results if r.png]
    assert len(pngs) == 1
    data = base64.b64decode(pngs[0])
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 100 and height > 100


def test_division_by_zero(ci):
    execution = ci.run_code("1/0")
    assert execution.error is not None
    assert execution.error.name == "ZeroDivisionError"
    assert "division by zero" in execution.error.value


def test_javascript_bash_and_r_return_values(ci):
    js = ci.run_code("[20, 22].reduce((a, b) => a + b)", language="javascript")
    assert js.error is None, js.error
    assert js.text == "42"
    bash = ci.run_code("echo $((40 + 2))", language="bash")
    assert bash.error is None, bash.error
    assert bash.logs.stdout == ["42\n"]
    r = ci.run_code("40 + 2", language="r")
    assert r.error is None, r.error
    assert [x.text for x in r.results] == ["[1] 42"]


def test_sandbox_env_vars_reach_the_interpreter(kilnd):
    sbx = Sandbox.create(envs={"KILN_CI_VAR": "from-create"}, timeout=60)
    try:
        execution = sbx.run_code("import os; print(os.environ.get('KILN_CI_VAR'))")
        assert execution.logs.stdout == ["from-create\n"]
    finally:
        sbx.kill()


def test_stdout_streams_through_the_proxy_unbuffered(ci):
    """Each line must arrive while the cell still runs: kilnd's proxy may not
    buffer the NDJSON stream."""
    arrivals = []
    start = time.monotonic()
    ci.run_code(
        "import time\nfor i in range(3):\n    print(i, flush=True)\n    time.sleep(0.4)\n",
        on_stdout=lambda m: arrivals.append(time.monotonic() - start),
    )
    assert len(arrivals) == 3
    assert arrivals[1] - arrivals[0] > 0.25
    assert arrivals[2] - arrivals[1] > 0.25


def test_raw_ndjson_through_the_proxy(ci, kilnd):
    """The wire itself: NDJSON lines through E2b-Sandbox-Id/Port 49999."""
    headers = {"E2b-Sandbox-Id": ci.sandbox_id, "E2b-Sandbox-Port": "49999"}
    token = getattr(ci, "_envd_access_token", None)
    if token:
        headers["X-Access-Token"] = token
    with httpx.stream("POST", f"{kilnd.url}/execute", json={"code": "print('hi')\n6*7"}, headers=headers, timeout=30) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in r.iter_lines() if line]
    types = [line["type"] for line in lines]
    assert "stdout" in types and "result" in types
    assert types[-1] == "end_of_execution"
    assert [x["text"] for x in lines if x["type"] == "result"] == ["42"]


def test_parallel_creates_each_get_their_interpreter(kilnd):
    results, errors = {}, []

    def one(i):
        try:
            s = Sandbox.create(timeout=60)
            try:
                results[i] = s.run_code(f"{i} * 2").text
            finally:
                s.kill()
        except Exception as e:  # reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    assert results == {0: "0", 1: "2", 2: "4"}


def test_kill_removes_the_sandbox(kilnd):
    sbx = Sandbox.create(timeout=60)
    assert sbx.run_code("1 + 1").text == "2"
    sid = sbx.sandbox_id
    sbx.kill()
    r = httpx.get(f"{kilnd.url}/sandboxes/{sid}", headers={"X-API-KEY": kilnd.key})
    assert r.status_code == 404 or r.json().get("state") not in ("running", "paused")
    ids = [s.sandbox_id for s in Sandbox.list().next_items()]
    assert sid not in ids
    # Its interpreter went with it: the proxy says the sandbox is gone.
    r = httpx.post(
        f"{kilnd.url}/execute",
        json={"code": "1"},
        headers={"E2b-Sandbox-Id": sid, "E2b-Sandbox-Port": "49999"},
    )
    assert r.status_code == 502
    assert "not found" in r.text


def test_base_template_still_has_no_interpreter(kilnd):
    from e2b import Sandbox as BaseSandbox

    sbx = BaseSandbox.create("base", timeout=60)
    try:
        r = sbx.commands.run("test -e /usr/local/bin/kiln-interpreter && echo yes || echo no")
        assert r.stdout == "no\n"
    finally:
        sbx.kill()


def test_a_failing_start_command_fails_the_create_and_leaves_nothing(tmp_path, kilnd):
    """A kilnd whose interpreter exits at once: the create answers an error
    naming the start command, and no sandbox stays."""
    port = free_port()
    key = "e2b_" + secrets.token_hex(20)
    extra = dict(
        KILN_RUNTIME_TAG="e2c",
        KILN_SUBNET=free_subnet(),
        KILN_INTERPRETER_BIN="/bin/false",
        KILN_CODE_INTERPRETER="true",
    )
    proc = start_kilnd(tmp_path, port, key, **extra)
    url = f"http://127.0.0.1:{port}"
    headers = {"X-API-KEY": key}
    try:
        r = httpx.post(f"{url}/sandboxes", json={"templateID": "code-interpreter-v1"}, headers=headers, timeout=60)
        assert r.status_code == 500, r.text
        message = r.json()["message"]
        assert "start command failed" in message
        assert "kiln-interpreter exited (exit status 1)" in message
        assert httpx.get(f"{url}/v2/sandboxes", headers=headers).json() == []
        # The base template is unaffected.
        r = httpx.post(f"{url}/sandboxes", json={"templateID": "base"}, headers=headers, timeout=60)
        assert r.status_code == 201, r.text
        httpx.delete(f"{url}/sandboxes/{r.json()['sandboxID']}", headers=headers, timeout=30)
    finally:
        kill_all(url, key)
        stop_kilnd(proc, tmp_path / "kilnd.log")
