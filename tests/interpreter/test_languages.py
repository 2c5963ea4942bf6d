"""The languages beyond Python as E2B's template has them, through the sync
and the async SDK: JavaScript with ESM imports and top-level await,
TypeScript, Java, and R whose value is the cell's main result."""

import time
import uuid

import pytest
from e2b import TimeoutException


def fresh(name):
    return f"{name}_{uuid.uuid4().hex[:8]}"


def test_javascript_esm_imports(sbx):
    execution = sbx.run_code("import { readFileSync } from 'fs'\nconsole.log(typeof readFileSync)", language="js")
    assert execution.error is None, execution.error
    assert execution.logs.stdout == ["function\n"]
    # The imported names stay for later cells.
    name = fresh("p")
    sbx.run_code(f"import * as {name} from 'path'", language="javascript")
    assert sbx.run_code(f"{name}.join('a', 'b')", language="javascript").text == "a/b"


def test_javascript_top_level_await(sbx):
    execution = sbx.run_code("await Promise.resolve('Hello World!')", language="js")
    assert execution.error is None, execution.error
    assert execution.text == "Hello World!"
    assert execution.results[0].is_main_result
    name = fresh("v")
    assert sbx.run_code(f"const {name} = await new Promise(r => setTimeout(() => r(41), 50))", language="js").results == []
    assert sbx.run_code(f"{name} + 1", language="js").text == "42"
    failed = sbx.run_code("await Promise.reject(new RangeError('too far'))", language="js")
    assert (failed.error.name, failed.error.value) == ("RangeError", "too far")


def test_typescript_kernel(sbx):
    message = fresh("message")
    execution = sbx.run_code(f"const {message}: string = 'Hello, World!'; console.log({message})", language="ts")
    assert execution.error is None, execution.error
    assert execution.logs.stdout == ["Hello, World!\n"]
    point, norm = fresh("Point"), fresh("norm")
    execution = sbx.run_code(
        f"interface {point} {{ x: number; y: number }}\n"
        f"function {norm}(p: {point}): number {{ return Math.hypot(p.x, p.y) }}\n"
        f"{norm}({{ x: 3, y: 4 }})",
        language="typescript",
    )
    assert execution.error is None, execution.error
    assert execution.text == "5"
    assert sbx.run_code("await Promise.resolve<number>(7) * 6", language="ts").text == "42"
    assert sbx.run_code("process.cwd()", language="ts").text == sbx.run_code("process.cwd()", language="js").text


def test_java_kernel(sbx):
    execution = sbx.run_code('System.out.println("Hello, World!")', language="java")
    assert execution.error is None, execution.error
    assert execution.logs.stdout[0] == "Hello, World!"
    assert "".join(execution.logs.stdout) == "Hello, World!\n"
    name = fresh("n")
    assert sbx.run_code(f"int {name} = 6;", language="java").results == []
    result = sbx.run_code(f"{name} * 7", language="java")
    assert result.text == "42" and result.results[0].is_main_result
    assert sbx.run_code('"line\\nbreak"', language="java").text == "line\nbreak"
    failed = sbx.run_code("Integer.parseInt(\"x\")", language="java")
    assert failed.error.name == "java.lang.NumberFormatException"
    assert 'For input string: "x"' in failed.error.value
    broken = sbx.run_code("int = ;", language="java")
    assert broken.error.name == "CompilationException"


def test_java_cwd_and_env_vars(sbx):
    cwd = sbx.run_code('System.getProperty("user.dir")', language="java").text
    assert cwd == sbx.run_code("import os; os.getcwd()").text
    set_once = sbx.run_code('System.getProperty("KILN_JAVA_VAR")', language="java", envs={"KILN_JAVA_VAR": "bar"})
    assert set_once.text == "bar"
    after = sbx.run_code('System.getProperty("KILN_JAVA_VAR", "default")', language="java")
    assert after.text == "default"


def test_java_interrupt_keeps_the_state(sbx):
    ctx = sbx.create_code_context(language="java")
    try:
        sbx.run_code("int kept = 5;", context=ctx)
        started = time.monotonic()
        with pytest.raises(TimeoutException):
            sbx.run_code("while (true) {}", context=ctx, timeout=2)
        assert sbx.run_code("kept + 1", context=ctx, timeout=30).text == "6"
        # Stopped by the interrupt, not killed after the grace period.
        assert time.monotonic() - started < 10
    finally:
        sbx.remove_code_context(ctx)


def test_r_value_is_the_main_result(sbx):
    execution = sbx.run_code("40 + 2", language="r")
    assert execution.error is None
    assert execution.text == "[1] 42"
    (result,) = execution.results
    assert result.is_main_result
    # Only the last value is the main one; printed output is stdout.
    execution = sbx.run_code('print("hi")\n1\n2', language="r")
    assert execution.logs.stdout == ['[1] "hi"\n']
    assert [(r.text, r.is_main_result) for r in execution.results] == [("[1] 1", False), ("[1] 2", True)]
    assert execution.text == "[1] 2"


def test_r_displays_and_failures_are_not_main_results(sbx):
    plot = sbx.run_code("plot(1:3)", language="r")
    assert plot.error is None
    assert [r.is_main_result for r in plot.results] == [False]
    assert plot.results[0].png
    failed = sbx.run_code("1\nstop('no')", language="r")
    assert "no" in failed.error.value
    assert [(r.text, r.is_main_result) for r in failed.results] == [("[1] 1", False)]
    assert sbx.run_code("x_r <- 1", language="r").results == []
