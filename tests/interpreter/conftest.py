"""Fixtures: a real kiln-interpreter on loopback, and the unmodified
e2b-code-interpreter SDK pointed straight at it.

Inside a sandbox the SDK reaches port 49999 through kilnd's proxy; here
E2B_SANDBOX_URL-style configuration (ConnectionConfig(sandbox_url=...)) sends
the very same requests, with the same E2b-Sandbox-Id/Port headers, to the
server directly. The Sandbox object is built with the SDK's own constructor
because there is no control API in this test.
"""

import asyncio
import contextlib
import inspect
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request

import pytest
from e2b import ConnectionConfig
from e2b_code_interpreter import AsyncSandbox, Sandbox
from packaging.version import Version


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(workdir, extra_args=(), env=None):
    """A kiln-interpreter on a free loopback port; yields its URL."""
    binary = os.environ.get("KILN_INTERPRETER_BIN", "target/debug/kiln-interpreter")
    cwd = workdir / "home"
    cwd.mkdir(exist_ok=True)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(workdir / "server.log", "w+")
    proc = subprocess.Popen(
        [binary, "--listen", f"127.0.0.1:{port}", "--cwd", str(cwd), *extra_args],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    try:
        deadline = time.time() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                log.seek(0)
                raise RuntimeError(f"kiln-interpreter did not start:\n{log.read()}")
            time.sleep(0.05)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.seek(0)
        tail = log.read()[-4000:]
        if tail:
            print("---- kiln-interpreter log (tail) ----\n" + tail)


@pytest.fixture(scope="session")
def server_url(tmp_path_factory):
    if os.environ.get("KILN_INTERPRETER_URL"):
        # A server started elsewhere (tests/interpreter/template.sh).
        url = os.environ["KILN_INTERPRETER_URL"]
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=1):
                    break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.1)
        yield url
        return
    with running_server(tmp_path_factory.mktemp("server"), ["--preload", "python"]) as url:
        yield url


def sdk_sandbox(url: str) -> Sandbox:
    config = ConnectionConfig(sandbox_url=url, api_key="e2b_" + "0" * 40)
    return Sandbox(
        sandbox_id="kiln-interpreter-test",
        envd_version=Version("0.5.7"),
        envd_access_token="test-token",
        sandbox_domain=None,
        connection_config=config,
    )


@pytest.fixture(scope="session")
def sandbox(server_url) -> Sandbox:
    return sdk_sandbox(server_url)


class SyncOverAsync:
    """An AsyncSandbox whose coroutine methods are called like the sync
    Sandbox's, on a loop of its own: one test body drives both SDK classes,
    each with its own request and NDJSON code."""

    def __init__(self, sandbox, loop):
        self._sandbox = sandbox
        self._loop = loop

    def __getattr__(self, name):
        attr = getattr(self._sandbox, name)
        if not inspect.iscoroutinefunction(attr):
            return attr

        def call(*args, **kwargs):
            return asyncio.run_coroutine_threadsafe(attr(*args, **kwargs), self._loop).result()

        return call


@pytest.fixture(scope="session")
def async_loop():
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


@pytest.fixture(params=["sync", "async"])
def sbx(request, server_url, async_loop):
    """The sandbox through Sandbox, then through AsyncSandbox."""
    if request.param == "sync":
        return sdk_sandbox(server_url)
    config = ConnectionConfig(sandbox_url=server_url, api_key="e2b_" + "0" * 40)
    sandbox = AsyncSandbox(
        sandbox_id="kiln-interpreter-async-test",
        envd_version=Version("0.5.7"),
        envd_access_token="test-token",
        sandbox_domain=None,
        connection_config=config,
    )
    return SyncOverAsync(sandbox, async_loop)
