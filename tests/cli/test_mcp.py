"""`kiln mcp` through the official MCP Python SDK (PyPI `mcp`): tools are
listed with schemas, commands and code run, files go in and out, images
come back as images, and the session's sandboxes are gone after it ends."""

import asyncio
import base64
import json
import pathlib
import re
import subprocess
import time

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

from conftest import free_port, kiln_bin

HERE = pathlib.Path(__file__).parent
TOOLS = {"create_sandbox", "run_command", "run_code", "write_file", "read_file",
         "list_files", "get_port_url", "kill_sandbox"}
# A 1x1 PNG.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


def text(res) -> str:
    return "".join(c.text for c in res.content if c.type == "text")


def sandbox_exists(kiln, sid) -> bool:
    r = kiln("sandbox", "info", sid)
    if r.returncode == 0:
        return True
    assert b"was not found" in r.stderr, r.stderr
    return False


async def start_stub_interpreter(s):
    res = await s.call_tool("write_file", {"path": "/tmp/stub_interpreter.py",
                                           "content": (HERE / "stub_interpreter.py").read_text()})
    assert not res.is_error, text(res)
    res = await s.call_tool("run_command", {
        "command": "nohup python3 /tmp/stub_interpreter.py >/tmp/stub.log 2>&1 & "
                   "for i in $(seq 100); do curl -fs localhost:49999/ >/dev/null && exit 0; sleep 0.1; done; "
                   "cat /tmp/stub.log; exit 1"})
    assert "exit code: 0" in text(res), text(res)


def test_stdio_session(kilnd, kiln):
    created = {}

    async def session():
        params = StdioServerParameters(command=kiln_bin(), args=["mcp"], env=kilnd.env())
        async with stdio_client(params) as (r, w):
            async with ClientSession(r, w) as s:
                await s.initialize()
                tools = (await s.list_tools()).tools
                assert {t.name for t in tools} == TOOLS
                for t in tools:
                    assert len(t.description) > 40, t.name
                    assert t.input_schema["type"] == "object"
                    for name, prop in t.input_schema.get("properties", {}).items():
                        assert prop.get("description"), (t.name, name)

                # The first call creates the session's sandbox.
                res = await s.call_tool("run_command", {"command": "echo hi; echo err >&2; exit 3"})
                assert not res.is_error
                assert "exit code: 3" in text(res) and "hi" in text(res) and "err" in text(res)
                res = await s.call_tool("get_port_url", {"port": 8000})
                created["session"] = re.search(r"E2b-Sandbox-Id: (\w+)", text(res)).group(1)

                # Files in and out, reused sandbox.
                res = await s.call_tool("write_file", {"path": "/home/user/notes/a.txt", "content": "héllo ✓\n"})
                assert not res.is_error, text(res)
                res = await s.call_tool("read_file", {"path": "/home/user/notes/a.txt"})
                assert text(res) == "héllo ✓\n"
                res = await s.call_tool("list_files", {"path": "/home/user/notes"})
                assert "/home/user/notes/a.txt" in text(res)
                res = await s.call_tool("read_file", {"path": "/nonexistent"})
                assert res.is_error and "not found" in text(res)
                res = await s.call_tool("read_file", {"path": "/home/user"})
                assert res.is_error and "list_files" in text(res)
                res = await s.call_tool("run_command", {"command": "head -c 5000000 /dev/zero > /tmp/big; seq 100000"})
                assert "bytes omitted" in text(res) and "\n100000\n" in text(res)
                res = await s.call_tool("read_file", {"path": "/tmp/big"})
                assert res.is_error and "head -c" in text(res)
                res = await s.call_tool("write_file", {"path": "/tmp/p.png", "encoding": "base64",
                                                       "content": base64.b64encode(PNG).decode()})
                assert not res.is_error, text(res)
                res = await s.call_tool("read_file", {"path": "/tmp/p.png"})
                images = [c for c in res.content if c.type == "image"]
                assert images and images[0].mime_type == "image/png"
                assert base64.b64decode(images[0].data) == PNG

                # No interpreter yet: a clear tool error.
                res = await s.call_tool("run_code", {"code": "1+1"})
                assert res.is_error and "no code interpreter" in text(res)
                # With one (a stand-in speaking the same NDJSON): results,
                # state kept between cells, images, errors.
                await start_stub_interpreter(s)
                res = await s.call_tool("run_code", {"code": "x = 20\nprint('side')\nx + 22"})
                assert not res.is_error, text(res)
                assert "42" in text(res) and "side" in text(res)
                res = await s.call_tool("run_code", {"code": f"import base64\nbase64.b64decode({base64.b64encode(PNG).decode()!r})"})
                images = [c for c in res.content if c.type == "image"]
                assert images and base64.b64decode(images[0].data) == PNG
                res = await s.call_tool("run_code", {"code": "1/0"})
                assert res.is_error and "ZeroDivisionError" in text(res)

                # A kept sandbox outlives the session; a new one becomes current.
                res = await s.call_tool("create_sandbox", {"keep": True, "timeout_seconds": 120})
                created["kept"] = re.search(r"Created sandbox (\w+)", text(res)).group(1)
                res = await s.call_tool("run_command", {"command": "hostname"})
                assert "exit code: 0" in text(res)
                res = await s.call_tool("run_command", {"command": "cat /home/user/notes/a.txt",
                                                        "sandbox_id": created["session"]})
                assert "héllo" in text(res)
                # Bad input: clear errors, no crash.
                res = await s.call_tool("run_command", {"command": "  "})
                assert res.is_error
                res = await s.call_tool("run_command", {"command": "true", "sandbox_id": "nosuch"})
                assert res.is_error and "not found" in text(res)
                res = await s.call_tool("write_file", {"path": "/tmp/x", "content": "%%%", "encoding": "base64"})
                assert res.is_error

    try:
        asyncio.run(session())
        assert sandbox_exists(kiln, created["kept"])
        # The session's own sandbox is killed when the client disconnects.
        deadline = time.monotonic() + 10
        while sandbox_exists(kiln, created["session"]):
            assert time.monotonic() < deadline, "the session's sandbox outlived the session"
            time.sleep(0.2)
    finally:
        for sid in created.values():
            kiln("sandbox", "kill", sid)


def test_streamable_http(kilnd, kiln):
    from mcp.client.streamable_http import streamable_http_client

    port = free_port()
    proc = subprocess.Popen([kiln_bin(), "mcp", "--http", f"127.0.0.1:{port}"], env=kilnd.env(),
                            stderr=subprocess.PIPE)
    seen = {}
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                import socket

                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read()
                assert time.monotonic() < deadline
                time.sleep(0.1)

        async def session():
            async with streamable_http_client(f"http://127.0.0.1:{port}/mcp") as streams:
                r, w = streams[0], streams[1]
                async with ClientSession(r, w) as s:
                    await s.initialize()
                    assert {t.name for t in (await s.list_tools()).tools} == TOOLS
                    # The session's sandbox is made on first use and reused.
                    res = await s.call_tool("run_command", {"command": "hostname"})
                    seen["session"] = re.search(r"stdout:\n(\w+)", text(res)).group(1)
                    res = await s.call_tool("run_command", {"command": "hostname"})
                    assert seen["session"] in text(res)
                    # kill_sandbox kills the current one.
                    res = await s.call_tool("create_sandbox", {})
                    seen["other"] = re.search(r"Created sandbox (\w+)", text(res)).group(1)
                    res = await s.call_tool("kill_sandbox", {})
                    assert not res.is_error, text(res)
                    assert not sandbox_exists(kiln, seen["other"])
                    res = await s.call_tool("kill_sandbox", {})
                    assert res.is_error and "no current sandbox" in text(res)

        asyncio.run(session())
        # Closing the MCP session kills its sandbox.
        deadline = time.monotonic() + 10
        while sandbox_exists(kiln, seen["session"]):
            assert time.monotonic() < deadline, "the HTTP session's sandbox outlived the session"
            time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        for sid in seen.values():
            kiln("sandbox", "kill", sid)


def test_stdio_without_kilnd_answers_with_what_to_do(kilnd):
    async def session():
        env = kilnd.env(KILN_API_URL=f"http://127.0.0.1:{free_port()}")
        params = StdioServerParameters(command=kiln_bin(), args=["mcp"], env=env)
        async with stdio_client(params) as (r, w):
            async with ClientSession(r, w) as s:
                await s.initialize()
                assert {t.name for t in (await s.list_tools()).tools} == TOOLS
                res = await s.call_tool("run_command", {"command": "true"})
                assert res.is_error and "kiln up" in text(res)

    asyncio.run(session())


def test_stdio_server_cleans_up_on_sigterm(kilnd, kiln):
    """Clients may end a stdio server with SIGTERM instead of closing stdin."""
    import signal

    p = subprocess.Popen([kiln_bin(), "mcp"], env=kilnd.env(), stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    sid = None
    try:
        def send(msg):
            p.stdin.write((json.dumps(msg) + "\n").encode())
            p.stdin.flush()

        def answer(want_id):
            while True:
                line = p.stdout.readline()
                assert line, p.stderr.read()
                msg = json.loads(line)
                if msg.get("id") == want_id:
                    return msg

        send({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
        answer(1)
        send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        send({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
              "params": {"name": "create_sandbox", "arguments": {}}})
        res = answer(2)["result"]
        sid = re.search(r"Created sandbox (\w+)", res["content"][0]["text"]).group(1)
        assert sandbox_exists(kiln, sid)
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=20)
        assert not sandbox_exists(kiln, sid)
    finally:
        p.kill()
        if sid:
            kiln("sandbox", "kill", sid)
