"""The same paths through the async Python SDK. Needs the real agent."""

import pytest
from e2b import AsyncSandbox, CommandExitException


async def test_async_commands(async_sandbox):
    r = await async_sandbox.commands.run("echo hi")
    assert r.stdout == "hi\n"
    out = []
    h = await async_sandbox.commands.run(
        "for i in a b; do echo $i; done", background=True, on_stdout=out.append
    )
    await h.wait()
    assert "".join(out) == "a\nb\n"
    with pytest.raises(CommandExitException):
        await async_sandbox.commands.run("false")
    assert (await async_sandbox.commands.run("whoami", user="root")).stdout == "root\n"


async def test_async_files(async_sandbox):
    await async_sandbox.files.write("/tmp/x.txt", "async")
    assert await async_sandbox.files.read("/tmp/x.txt") == "async"
    assert await async_sandbox.files.exists("/tmp/x.txt")
    names = [e.name for e in await async_sandbox.files.list("/tmp")]
    assert "x.txt" in names
    await async_sandbox.files.remove("/tmp/x.txt")
    assert not await async_sandbox.files.exists("/tmp/x.txt")


async def test_async_connect_and_kill(kilnd):
    sbx = await AsyncSandbox.create()
    other = await AsyncSandbox.connect(sbx.sandbox_id)
    assert (await other.commands.run("echo same")).stdout == "same\n"
    await sbx.kill()
    assert not await other.is_running()
