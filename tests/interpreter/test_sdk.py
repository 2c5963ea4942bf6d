"""kiln-interpreter driven by the unmodified e2b-code-interpreter Python SDK,
against real Jupyter kernels (ipykernel, IRkernel, bash_kernel, tslab)."""

import base64
import re
import struct
import time
import uuid

import pytest
from e2b import NotFoundException, SandboxException, TimeoutException
from e2b_code_interpreter import Context


def fresh(name: str) -> str:
    """A variable name no other test uses (the default context is shared)."""
    return f"{name}_{uuid.uuid4().hex[:8]}"


def test_state_carries_over_in_the_default_context(sandbox):
    v = fresh("x")
    first = sandbox.run_code(f"{v} = 1")
    assert first.error is None
    assert first.results == []
    second = sandbox.run_code(f"{v} + 1")
    assert second.error is None
    assert second.text == "2"
    assert second.results[0].is_main_result
    assert second.execution_count > first.execution_count


def test_two_contexts_keep_separate_state(sandbox):
    a = sandbox.create_code_context()
    b = sandbox.create_code_context(language="python")
    try:
        assert a.id != b.id and a.language == "python"
        sandbox.run_code("shared = 'a'", context=a)
        sandbox.run_code("shared = 'b'", context=b)
        assert sandbox.run_code("shared", context=a).text == "a"
        assert sandbox.run_code("shared", context=b).text == "b"
        ids = {c.id for c in sandbox.list_code_contexts()}
        assert {a.id, b.id} <= ids
    finally:
        sandbox.remove_code_context(a)
        sandbox.remove_code_context(b.id)
    ids = {c.id for c in sandbox.list_code_contexts()}
    assert a.id not in ids and b.id not in ids
    with pytest.raises(NotFoundException):
        sandbox.run_code("1", context=a)


def test_restart_clears_state(sandbox):
    ctx = sandbox.create_code_context()
    try:
        sandbox.run_code("kept = 41", context=ctx)
        assert sandbox.run_code("kept + 1", context=ctx).text == "42"
        sandbox.restart_code_context(ctx)
        after = sandbox.run_code("kept", context=ctx)
        assert after.error is not None and after.error.name == "NameError"
        assert sandbox.run_code("2 * 21", context=ctx).text == "42"
    finally:
        sandbox.remove_code_context(ctx)


def test_context_cwd(sandbox, tmp_path):
    ctx = sandbox.create_code_context(cwd=str(tmp_path))
    try:
        assert ctx.cwd == str(tmp_path)
        assert sandbox.run_code("import os; os.getcwd()", context=ctx).text == str(tmp_path)
    finally:
        sandbox.remove_code_context(ctx)
    with pytest.raises(SandboxException, match="does not exist"):
        sandbox.create_code_context(cwd=str(tmp_path / "missing"))


def test_stdout_streams_while_the_cell_runs(sandbox):
    arrivals = []
    code = (
        "import time\n"
        "for i in range(5):\n"
        "    print(f'tick {i}', flush=True)\n"
        "    time.sleep(0.5)\n"
    )
    execution = sandbox.run_code(
        code, on_stdout=lambda m: arrivals.append((time.monotonic(), m))
    )
    done = time.monotonic()
    assert execution.error is None
    text = "".join(m.line for _, m in arrivals)
    assert text == "".join(f"tick {i}\n" for i in range(5))
    # Delivered as printed, not all at the end: the first line arrived about
    # 2 s before the cell finished, and arrivals are spread over the loop.
    assert done - arrivals[0][0] > 1.5
    assert arrivals[-1][0] - arrivals[0][0] > 1.5
    # The server's timestamps (ns since the epoch) are spread the same way.
    stamps = [m.timestamp for _, m in arrivals]
    assert all(isinstance(s, int) for s in stamps)
    assert (stamps[-1] - stamps[0]) / 1e9 > 1.5
    assert abs(stamps[0] / 1e9 - time.time()) < 60


def test_stderr_is_separate(sandbox):
    execution = sandbox.run_code("import sys; print('out'); print('err', file=sys.stderr)")
    assert execution.logs.stdout == ["out\n"]
    assert execution.logs.stderr == ["err\n"]


def test_matplotlib_show_gives_a_png(sandbox):
    execution = sandbox.run_code(
        "import matplotlib.pyplot as plt\n"
        "plt.plot([1, 2, 3], [4, 1, 9])\n"
        "plt.title('kiln')\n"
        "plt.show()\n"
    )
    assert execution.error is None
    pngs = [r.png for r in execution.results if r.png]
    assert len(pngs) == 1
    data = base64.b64decode(pngs[0])
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 100 and height > 100


def test_dataframe_gives_html(sandbox):
    execution = sandbox.run_code(
        "import pandas as pd\npd.DataFrame({'city': ['Oslo', 'Lima'], 'n': [3, 7]})"
    )
    assert execution.error is None
    (result,) = execution.results
    assert result.is_main_result
    assert "<table" in result.html and "Lima" in result.html
    assert "Oslo" in result.text
    assert "html" in result.formats() and "text" in result.formats()


def test_other_mime_types_come_through(sandbox):
    execution = sandbox.run_code(
        "from IPython.display import display, Markdown, SVG, Latex, JSON\n"
        "display(Markdown('**bold**'))\n"
        "display(SVG('<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"4\" height=\"4\"/>'))\n"
        "display(Latex(r'$x^2$'))\n"
        "display(JSON({'k': [1, 2]}))\n"
    )
    assert execution.error is None
    md, svg, latex, js = execution.results
    assert md.markdown == "**bold**" and not md.is_main_result
    assert svg.svg.startswith("<svg")
    assert latex.latex == "$x^2$"
    assert js.json == {"k": [1, 2]}


def test_division_by_zero_is_an_execution_error(sandbox):
    errors = []
    execution = sandbox.run_code("1/0", on_error=errors.append)
    assert execution.error is not None
    assert execution.error.name == "ZeroDivisionError"
    assert execution.error.value == "division by zero"
    # IPython colours its tracebacks with ANSI escapes; E2B passes them on too.
    plain = re.sub(r"\x1b\[[0-9;]*m", "", execution.error.traceback)
    assert "ZeroDivisionError" in plain
    assert "1/0" in plain
    assert errors == [execution.error]
    assert execution.results == []


def test_infinite_loop_times_out_and_the_context_stays_usable(sandbox):
    v = fresh("before")
    sandbox.run_code(f"{v} = 'still here'")
    started = time.monotonic()
    with pytest.raises(TimeoutException):
        sandbox.run_code("while True:\n    pass", timeout=2)
    assert time.monotonic() - started < 10
    started = time.monotonic()
    after = sandbox.run_code(f"{v}")
    assert after.error is None and after.text == "still here"
    # The kernel was interrupted, not left spinning until some later deadline.
    assert time.monotonic() - started < 8


def test_server_side_timeout_interrupts(server_url):
    import httpx

    started = time.monotonic()
    with httpx.stream(
        "POST",
        f"{server_url}/execute",
        json={"code": "import time\nwhile True: time.sleep(0.05)", "timeout": 1},
        timeout=30,
    ) as r:
        lines = [line for line in r.iter_lines() if line]
    assert time.monotonic() - started < 8
    assert '"type":"end_of_execution"' in lines[-1]
    assert any('"name":"TimeoutError"' in line for line in lines)


def test_kernel_that_dies_answers_with_an_error_and_restarts(sandbox):
    ctx = sandbox.create_code_context()
    try:
        died = sandbox.run_code("import os; os._exit(3)", context=ctx)
        assert died.error is not None
        assert died.error.name == "KernelDied"
        assert "restart" in died.error.value
        again = sandbox.run_code("1", context=ctx)
        assert again.error is not None and again.error.name == "KernelDied"
        sandbox.restart_code_context(ctx)
        assert sandbox.run_code("6 * 7", context=ctx).text == "42"
    finally:
        sandbox.remove_code_context(ctx)


def test_env_vars_apply_to_one_execution(sandbox):
    code = "import os; print(os.environ.get('KILN_TEST_VAR', 'unset'))"
    value = "it's \"quoted\"\n$HOME \\ done"
    assert sandbox.run_code(code, envs={"KILN_TEST_VAR": value}).logs.stdout == [value + "\n"]
    assert sandbox.run_code(code).logs.stdout == ["unset\n"]
    bash = sandbox.run_code("echo \"$KILN_TEST_VAR\"", language="bash", envs={"KILN_TEST_VAR": value})
    assert "".join(bash.logs.stdout) == value + "\n"
    bash = sandbox.run_code("echo \"${KILN_TEST_VAR:-unset}\"", language="bash")
    assert bash.logs.stdout == ["unset\n"]


def test_javascript_returns_a_value(sandbox):
    first = sandbox.run_code("const base = 40;", language="javascript")
    assert first.error is None
    execution = sandbox.run_code("base + 2", language="javascript")
    assert execution.error is None
    assert execution.text == "42"


def test_typescript_runs_in_the_javascript_kernel(sandbox):
    # As on E2B: without a TypeScript kernel, "typescript" uses the Node.js one.
    execution = sandbox.run_code("[6, 7].reduce((a, b) => a * b)", language="typescript")
    assert execution.error is None
    assert execution.text == "42"


def test_javascript_error(sandbox):
    execution = sandbox.run_code("throw new TypeError('kiln says no')", language="js")
    assert execution.error is not None
    assert execution.error.name == "TypeError"
    assert execution.error.value == "kiln says no"


def test_bash_returns_a_value(sandbox):
    sandbox.run_code("KILN_N=40", language="bash")
    execution = sandbox.run_code("echo $((KILN_N + 2))", language="bash")
    assert execution.error is None
    assert execution.logs.stdout == ["42\n"]


def test_r_returns_a_value(sandbox):
    sandbox.run_code("r_base <- 40", language="r")
    execution = sandbox.run_code("r_base + 2", language="r")
    assert execution.error is None
    assert [r.text for r in execution.results] == ["[1] 42"]


def test_r_error(sandbox):
    execution = sandbox.run_code("stop('kiln says no')", language="r")
    assert execution.error is not None
    assert "kiln says no" in execution.error.value


def test_unknown_language_is_a_clear_error(sandbox):
    with pytest.raises(SandboxException, match="unsupported language 'cobol'"):
        sandbox.run_code("DISPLAY 'HI'", language="cobol")
    with pytest.raises(SandboxException, match="400"):
        sandbox.create_code_context(language="cobol")


def test_unknown_context_is_not_found(sandbox):
    ghost = Context(context_id="no-such-context", language="python", cwd="/")
    with pytest.raises(NotFoundException, match="no-such-context"):
        sandbox.run_code("1", context=ghost)
    with pytest.raises(NotFoundException):
        sandbox.restart_code_context(ghost)
    with pytest.raises(NotFoundException):
        sandbox.remove_code_context("no-such-context")


def test_empty_code_is_an_empty_execution(sandbox):
    for code in ["", "   \n"]:
        execution = sandbox.run_code(code)
        assert execution.error is None
        assert execution.results == []
        assert execution.logs.stdout == [] and execution.logs.stderr == []


def test_shell_escape_and_execution_count(sandbox):
    ctx = sandbox.create_code_context()
    try:
        first = sandbox.run_code("print('one')", context=ctx)
        second = sandbox.run_code("!pwd", context=ctx)
        assert (first.execution_count, second.execution_count) == (1, 2)
        assert "".join(second.logs.stdout).strip() == ctx.cwd
    finally:
        sandbox.remove_code_context(ctx)


def test_a_display_with_one_format_has_only_that_format(sandbox):
    execution = sandbox.run_code(
        "display({'text/latex': r'\\text{Only}'}, raw=True)"
    )
    assert execution.error is None
    assert [list(r.formats()) for r in execution.results] == [["latex"]]


def test_cells_sent_at_once_to_one_context_run_one_after_another(sandbox):
    from concurrent.futures import ThreadPoolExecutor

    ctx = sandbox.create_code_context()
    try:
        sandbox.run_code("import time; log = []", context=ctx)
        code = "log.append({i}); time.sleep(0.2); log.append({i}); len(log)"
        with ThreadPoolExecutor(4) as pool:
            runs = list(pool.map(lambda i: sandbox.run_code(code.format(i=i), context=ctx), range(4)))
        assert all(r.error is None for r in runs)
        assert sorted(int(r.text) for r in runs) == [2, 4, 6, 8]
        log = sandbox.run_code("log", context=ctx).text
        pairs = eval(log)  # a Python list literal of ints
        # Never interleaved: each cell's two entries are adjacent.
        assert all(pairs[k] == pairs[k + 1] for k in range(0, 8, 2))
    finally:
        sandbox.remove_code_context(ctx)


def test_a_kernel_that_ignores_interrupts_is_restarted_after_a_timeout(sandbox):
    # IJavascript cannot be interrupted: the server kills it a few seconds
    # after the interrupt and starts a fresh one, so the context stays usable.
    ctx = sandbox.create_code_context(language="javascript")
    try:
        sandbox.run_code("var before = 1", context=ctx)
        with pytest.raises(TimeoutException):
            sandbox.run_code("while (true) {}", context=ctx, timeout=2)
        started = time.monotonic()
        after = sandbox.run_code("typeof before", context=ctx, timeout=30)
        assert after.error is None
        assert after.text == "undefined"  # a fresh kernel: the state is gone
        assert time.monotonic() - started < 20
        assert sandbox.run_code("20 + 22", context=ctx).text == "42"
    finally:
        sandbox.remove_code_context(ctx)
