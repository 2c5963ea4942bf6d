"""The agent's listener on the runtime's signals (kiln_api::agent): SIGWINCH
closes it (a gVisor checkpoint cannot save a listening socket held in an
epoll set), SIGURG opens it again on the same address (after the restore).
Nothing else of the agent stops meanwhile."""

import os
import signal
import socket
import time


def _accepts(addr: str) -> bool:
    host, port = addr.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
        return True
    except ConnectionRefusedError:
        return False


def _until(cond, what, timeout=5):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_the_runtimes_signals_close_and_reopen_the_listener(fresh_agent):
    sbx = fresh_agent.sandbox()
    sleeper = sbx.commands.run("sleep 60", background=True)
    assert _accepts(fresh_agent.addr)
    os.kill(fresh_agent.proc.pid, signal.SIGWINCH)
    _until(lambda: not _accepts(fresh_agent.addr), "the listener stayed open after SIGWINCH")
    time.sleep(0.2)
    assert not _accepts(fresh_agent.addr), "the listener opened again by itself"
    assert fresh_agent.proc.poll() is None, "the agent exited"
    os.kill(fresh_agent.proc.pid, signal.SIGURG)
    _until(lambda: _accepts(fresh_agent.addr), "the listener did not open again after SIGURG")
    # The same agent, its processes kept.
    assert any(p.pid == sleeper.pid for p in sbx.commands.list())
    assert sbx.commands.run("echo back").stdout == "back\n"
