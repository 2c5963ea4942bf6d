"""The code-interpreter template through kilnd: the unmodified
e2b-code-interpreter SDK (2.11.5) creates a sandbox of its default template
(`code-interpreter-v1`), and run_code reaches kiln-interpreter on port 49999
through kilnd's proxy. Needs a real runtime (container or gvisor) and a kilnd
that serves the template (KILN_CODE_INTERPRETER=true, set by
scripts/test.d/40-e2b-sdk.sh and 45-e2b-sdk-gvisor.sh).
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
    RUNTIME not in ("container", "gvisor"),
    reason="the code-interpreter template needs a real runtime (KILN_E2E_RUNTIME=container or gvisor)",
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
        # No warm sandboxes: their creates (failing here, again and again)
        # would only slow kilnd's stop down.
        KILN_INTERPRETER_WARM_POOL="0",
        KILN_GVISOR_WARM_POOL="0",
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


# The template's kernels and result formats as E2B's (issue 11). The host
# phase (tests/interpreter) covers each in depth; these show them in a real
# sandbox of the template, through kilnd's proxy.


def test_java_and_typescript_kernels_in_the_template(ci):
    java = ci.run_code('System.out.println("Hello, World!")', language="java")
    assert java.error is None, java.error
    assert java.logs.stdout[0] == "Hello, World!"
    assert ci.run_code('System.getProperty("user.dir")', language="java").text == "/home/user"
    assert ci.run_code("21 * 2", language="java").text == "42"
    ts = ci.run_code("const tsMessage: string = 'Hello, World!'; console.log(tsMessage)", language="ts")
    assert ts.error is None, ts.error
    assert ts.logs.stdout == ["Hello, World!\n"]
    assert ci.run_code("process.cwd()", language="typescript").text == "/home/user"


def test_javascript_esm_imports_and_top_level_await(ci):
    imported = ci.run_code("import { readFileSync } from 'fs'\nconsole.log(typeof readFileSync)", language="js")
    assert imported.error is None, imported.error
    assert imported.logs.stdout == ["function\n"]
    awaited = ci.run_code("await Promise.resolve('Hello World!')", language="js")
    assert awaited.text == "Hello World!"


def test_r_value_is_the_main_result(ci):
    execution = ci.run_code("getwd()", language="r")
    assert execution.text == '[1] "/home/user"'
    assert execution.results[0].is_main_result


@pytest.mark.xfail(
    RUNTIME == "gvisor",
    reason="known defect on gVisor (issue 12, open): now and then (2 of about 8 runs) the Java "
    "kernel of a sandbox handed over from the warm pool sees no sandbox env var ('null'); "
    "cause not found yet",
    strict=False,
)
def test_sandbox_env_vars_reach_java_as_properties(kilnd):
    sbx = Sandbox.create(envs={"KILN_CI_JAVA": "supertest"}, timeout=120)
    try:
        assert sbx.run_code('System.getProperty("KILN_CI_JAVA")', language="java").text == "supertest"
        over = sbx.run_code('System.getProperty("KILN_CI_JAVA")', language="java", envs={"KILN_CI_JAVA": "overwrite"})
        assert over.text == "overwrite"
        assert sbx.run_code('System.getProperty("KILN_CI_JAVA")', language="java").text == "supertest"
    finally:
        sbx.kill()


def test_charts_data_and_images(ci):
    from e2b_code_interpreter.charts import BarChart, ChartType, LineChart, ScaleType

    bar = ci.run_code(
        "import matplotlib.pyplot as plt\nplt.close('all')\n"
        "plt.bar(['A', 'B'], [100, 200], label='Sold'); plt.xlabel('Authors'); plt.ylabel('Books')\n"
        "plt.title('Sales'); plt.show()"
    )
    (result,) = bar.results
    assert result.png and isinstance(result.chart, BarChart)
    assert (result.chart.title, result.chart.x_label, result.chart.y_label) == ("Sales", "Authors", "Books")
    assert [(b.label, b.value, b.group) for b in result.chart.elements] == [("A", 100, "Sold"), ("B", 200, "Sold")]
    line = ci.run_code(
        "import datetime\nplt.plot([datetime.date(2024, 1, d) for d in (1, 2, 3)], [1, 4, 9])\n"
        "plt.xlabel('Time (s)'); plt.show()"
    ).results[0].chart
    assert isinstance(line, LineChart) and line.type == ChartType.LINE
    assert line.x_scale == ScaleType.DATETIME and line.x_unit == "s"
    data = ci.run_code("import pandas as pd\npd.DataFrame({'a': [1, 2, 3]})").results[0]
    assert data.data == {"a": [1, 2, 3]}
    image = ci.run_code(
        "from PIL import Image\nImage.new('RGB', (8, 8)).save('/home/user/kiln-ci.png')\nprint('saved')"
    )
    assert [bool(r.png) for r in image.results] == [True]
    saved = ci.run_code("plt.plot([1, 2]); plt.savefig('/home/user/kiln-fig.png'); plt.close('all')")
    assert saved.error is None and [bool(r.png) for r in saved.results] == [True]


def test_contexts_list_the_defaults_and_take_a_cwd_as_user(ci):
    languages = [c.language for c in ci.list_code_contexts()]
    assert "python" in languages and "javascript" in languages
    ctx = ci.create_code_context(language="python", cwd="/root")
    try:
        last = ci.list_code_contexts()[-1]
        assert (last.id, last.cwd) == (ctx.id, "/root")
        assert ci.run_code("import os; os.getcwd(), os.getuid()", context=ctx).text == "('/root', 1000)"
    finally:
        ci.remove_code_context(ctx)
    # A directory the interpreter's user cannot enter is a clear client error.
    ci.commands.run("mkdir -p -m 0700 /srv/kiln-private", user="root")
    with pytest.raises(Exception, match="400.*not accessible"):
        ci.create_code_context(cwd="/srv/kiln-private")


@pytest.mark.parametrize("network", [None, {"allow_public_traffic": False}])
def test_contexts_on_a_secure_sandbox(kilnd, network):
    sbx = Sandbox.create(secure=True, timeout=120, **({"network": network} if network else {}))
    try:
        ctx = sbx.create_code_context()
        contexts = sbx.list_code_contexts()
        assert contexts[-1].id == ctx.id
        assert {"python", "javascript"} <= {c.language for c in contexts}
        sbx.run_code("x = 1", context=ctx)
        sbx.restart_code_context(ctx.id)
        after = sbx.run_code("x", context=ctx)
        assert after.error.name == "NameError" and after.error.value == "name 'x' is not defined"
        sbx.remove_code_context(ctx.id)
        assert ctx.id not in [c.id for c in sbx.list_code_contexts()]
    finally:
        sbx.kill()


async def test_contexts_on_a_secure_sandbox_async(kilnd):
    from e2b_code_interpreter import AsyncSandbox

    sbx = await AsyncSandbox.create(secure=True, timeout=120, network={"allow_public_traffic": False})
    try:
        ctx = await sbx.create_code_context(language="javascript")
        contexts = await sbx.list_code_contexts()
        assert contexts[-1].id == ctx.id and ctx.language == "javascript"
        assert {"python", "javascript"} <= {c.language for c in contexts}
        assert (await sbx.run_code("await Promise.resolve(6 * 7)", context=ctx)).text == "42"
        await sbx.restart_code_context(ctx)
        await sbx.remove_code_context(ctx)
        assert ctx.id not in [c.id for c in await sbx.list_code_contexts()]
    finally:
        await sbx.kill()
