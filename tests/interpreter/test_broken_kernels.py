"""Kernels that cannot start: a clear 500 that names the kernel and why, fast,
and the server keeps serving."""

import json
import time

import pytest
from e2b import SandboxException

from conftest import running_server, sdk_sandbox


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    if __import__("os").environ.get("KILN_INTERPRETER_URL"):
        pytest.skip("needs its own server")
    work = tmp_path_factory.mktemp("broken")
    kernels = work / "jupyter" / "kernels"
    specs = {
        # A program that does not exist.
        "nopython": {"argv": ["/nonexistent/python3", "-f", "{connection_file}"], "language": "python"},
        # A program that exits at once.
        "quitter": {"argv": ["sh", "-c", "echo quitting >&2; exit 3", "{connection_file}"], "language": "R"},
    }
    for name, spec in specs.items():
        (kernels / name).mkdir(parents=True)
        (kernels / name / "kernel.json").write_text(json.dumps({"display_name": name, **spec}))
    env = {"JUPYTER_PATH": str(work / "jupyter")}
    with running_server(work, ["--preload", "", "--spares", ""], env=env) as url:
        yield sdk_sandbox(url)


def test_missing_kernel_program_is_a_clear_500(broken):
    started = time.monotonic()
    with pytest.raises(SandboxException) as err:
        broken.run_code("1")
    message = str(err.value)
    assert message.startswith("500")
    assert "failed to start the python kernel" in message
    assert "nopython" in message and "No such file" in message
    assert time.monotonic() - started < 5


def test_kernel_that_exits_at_once_is_a_clear_500(broken):
    with pytest.raises(SandboxException, match="kernel quitter exited while starting") as err:
        broken.create_code_context(language="r")
    assert "exit status: 3" in str(err.value)
    # The server is still there and says the same next time.
    with pytest.raises(SandboxException, match="exited while starting"):
        broken.run_code("1", language="r")
    # Only the default contexts declared at start are listed (Python's,
    # whose kernel cannot start either); the failed R context is not kept.
    assert [c.language for c in broken.list_code_contexts()] == ["python"]
