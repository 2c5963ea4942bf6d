"""Behaviours that match E2B's envd (issue 11) and requests that must never
kill the agent or turn into a 5xx (issue 19), through the unmodified SDK
where it can say the request, raw HTTP or sockets where it cannot."""

import json
import os
import socket
import struct
import threading
import time

import httpx
import pytest
from e2b import AuthenticationException, InvalidArgumentException
from e2b.sandbox.filesystem.watch_handle import FilesystemEventType as Ev


def envelope(obj, flags=0):
    raw = json.dumps(obj).encode()
    return struct.pack(">BI", flags, len(raw)) + raw


def stream_messages(data):
    out = []
    while data:
        flags, n = struct.unpack(">BI", data[:5])
        out.append((flags, json.loads(data[5 : 5 + n])))
        data = data[5 + n :]
    return out


@pytest.fixture(autouse=True)
def agent_survives(agent):
    yield
    assert agent.proc.poll() is None, "the agent died"
    assert httpx.get(agent.url + "/health").status_code == 204


def xattrs_supported(path):
    probe = os.path.join(path, ".xattr-probe")
    open(probe, "w").close()
    try:
        os.setxattr(probe, "user.probe", b"1")
        return True
    except OSError:
        return False
    finally:
        os.unlink(probe)


def deep_tree(base, depth, file_every=None):
    """`base/d/d/...` `depth` levels deep, made through directory fds (deeper
    than a path can name)."""
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(depth):
            os.mkdir("d", dir_fd=fd)
            os.chown("d", 1000, 1000, dir_fd=fd)
            if file_every and i % file_every == 0:
                f = os.open("f", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
                os.close(f)
            nfd = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
    finally:
        os.close(fd)


# --- issue 11: envd's behaviour -------------------------------------------


def test_removing_a_missing_path_succeeds(sbx, workdir):
    # envd: os.RemoveAll, for which a missing path is already removed.
    sbx.files.remove(f"{workdir}/never-was")
    sbx.files.remove(f"{workdir}/no/such/parent")
    sbx.files.write(f"{workdir}/x/y.txt", "y")
    sbx.files.remove(f"{workdir}/x")
    sbx.files.remove(f"{workdir}/x")
    assert not os.path.exists(f"{workdir}/x")


def test_write_through_files_gives_envds_events_at_once(sbx, workdir):
    w = sbx.files.watch_dir(workdir)
    try:
        # envd creates the file, chowns it to the user, writes it: CREATE,
        # CHMOD, WRITE. No wait: they are there when the write has returned.
        sbx.files.write(f"{workdir}/n.txt", "hello")
        got = [(e.type, e.name) for e in w.get_new_events()]
        assert got == [(Ev.CREATE, "n.txt"), (Ev.CHMOD, "n.txt"), (Ev.WRITE, "n.txt")]
        # An overwrite: chown, then truncate and write (one WRITE).
        sbx.files.write(f"{workdir}/n.txt", "hello again " * 100000)
        got = [(e.type, e.name) for e in w.get_new_events()]
        assert got == [(Ev.CHMOD, "n.txt"), (Ev.WRITE, "n.txt")]
        # An empty new file is not written to.
        sbx.files.write(f"{workdir}/empty.txt", "")
        got = [(e.type, e.name) for e in w.get_new_events()]
        assert got == [(Ev.CREATE, "empty.txt"), (Ev.CHMOD, "empty.txt")]
        sbx.files.remove(f"{workdir}/empty.txt")
        assert [(e.type, e.name) for e in w.get_new_events()] == [(Ev.REMOVE, "empty.txt")]
    finally:
        w.stop()


def test_recursive_watch_names_and_removing_the_tree(sbx, workdir):
    os.makedirs(f"{workdir}/sub/inner")
    os.chown(f"{workdir}/sub", 1000, 1000)
    os.chown(f"{workdir}/sub/inner", 1000, 1000)
    w = sbx.files.watch_dir(workdir, recursive=True)
    try:
        sbx.files.write(f"{workdir}/sub/inner/f.txt", "f")
        got = [(e.type, e.name) for e in w.get_new_events()]
        assert got == [
            (Ev.CREATE, "sub/inner/f.txt"),
            (Ev.CHMOD, "sub/inner/f.txt"),
            (Ev.WRITE, "sub/inner/f.txt"),
        ]
        sbx.files.remove(f"{workdir}/sub")
        got = [(e.type, e.name) for e in w.get_new_events()]
        assert got == [
            (Ev.REMOVE, "sub/inner/f.txt"),
            (Ev.REMOVE, "sub/inner"),
            (Ev.REMOVE, "sub"),
        ]
        # The watched directory itself goes: envd names it ".".
        sbx.files.remove(workdir)
        got = [(e.type, e.name) for e in w.get_new_events()]
        assert got == [(Ev.REMOVE, ".")]
        assert w.get_new_events() == []
    finally:
        w.stop()


def test_overwrite_replaces_metadata(sbx, workdir):
    if not xattrs_supported(workdir):
        pytest.skip("the test directory's filesystem has no user xattrs")
    p = f"{workdir}/m.txt"
    info = sbx.files.write(p, "1", metadata={"a": "1", "b": "2"})
    assert info.metadata == {"a": "1", "b": "2"}
    assert sbx.files.get_info(p).metadata == {"a": "1", "b": "2"}
    info = sbx.files.write(p, "2", metadata={"b": "3"})
    assert info.metadata == {"b": "3"}
    assert sbx.files.get_info(p).metadata == {"b": "3"}
    sbx.files.write(p, "3")
    assert not sbx.files.get_info(p).metadata
    # Other xattrs than E2B's are the file's own business.
    os.setxattr(p, "user.other", b"x")
    sbx.files.write(p, "4", metadata={"c": "4"})
    assert os.getxattr(p, "user.other") == b"x"
    assert sbx.files.get_info(p).metadata == {"c": "4"}


# --- issue 19: bad input never kills the agent ----------------------------


def test_deep_listing_and_removal_do_not_kill_the_agent(sbx, workdir):
    deep_tree(workdir, 1500, file_every=100)
    entries = sbx.files.list(workdir, depth=1600)
    assert len(entries) == 1500 + 15
    assert len(sbx.files.list(workdir, depth=3)) == 4  # d, f, d/d, d/d/d
    with pytest.raises(InvalidArgumentException, match="2048"):
        sbx.files.list(workdir, depth=5000)
    w = sbx.files.watch_dir(workdir, recursive=True)
    try:
        sbx.files.remove(f"{workdir}/d")
        assert os.listdir(workdir) == ["f"]
        names = [e.name for e in w.get_new_events()]
        assert names[-1] == "d" and len(names) == 1500 + 14
    finally:
        w.stop()


def test_removal_of_a_tree_deeper_than_a_path(sbx, workdir):
    # Far deeper than any 4096-byte path reaches, and than a recursive
    # removal on the agent's 1 MiB thread stacks survives.
    deep_tree(workdir, 8000)
    sbx.files.remove(f"{workdir}/d")
    assert os.listdir(workdir) == []


def test_metadata_over_the_xattr_limits_is_refused_before_writing(sbx, workdir):
    p = f"{workdir}/meta.txt"
    with pytest.raises(InvalidArgumentException, match="246"):
        sbx.files.write(p, "x", metadata={"k" * 247: "v"})
    assert not os.path.exists(p)
    with pytest.raises(InvalidArgumentException, match="4096"):
        sbx.files.write(p, "x", metadata={f"k{i}": "v" * 1000 for i in range(5)})
    assert not os.path.exists(p)
    # an existing file is left as it was
    sbx.files.write(p, "old")
    with pytest.raises(InvalidArgumentException):
        sbx.files.write(p, "new", metadata={"k" * 247: "v"})
    assert open(p).read() == "old"


def test_init_checks_everything_before_applying_and_keeps_its_token(fresh_agent):
    url = fresh_agent.url
    assert httpx.post(url + "/init", json={"accessToken": "t1", "envVars": {"A": "1"}}).status_code == 204
    auth = {"X-Access-Token": "t1"}
    # A NUL inside a value (names were checked already) is refused, and
    # nothing of the request is applied.
    r = httpx.post(url + "/init", json={"envVars": {"B": "2", "C": "x\u0000y"}}, headers=auth)
    assert r.status_code == 400 and "NUL" in r.json()["message"]
    r = httpx.post(url + "/init", json={"envVars": {"B": "2"}, "defaultUser": "ghost"}, headers=auth)
    assert r.status_code == 400
    r = httpx.post(url + "/init", json={"envVars": {"B": "x" * 200_000}}, headers=auth)
    assert r.status_code == 400 and "131072" in r.json()["message"]
    r = httpx.post(url + "/init", json={"envVars": {"B": "2"}, "timestamp": "yesterday"}, headers=auth)
    assert r.status_code == 400
    assert httpx.get(url + "/envs", headers=auth).json() == {"A": "1"}
    # An empty token does not switch authentication off.
    r = httpx.post(url + "/init", json={"accessToken": ""}, headers=auth)
    assert r.status_code == 401
    assert httpx.get(url + "/envs").status_code == 401
    # Processes still start.
    sbx = fresh_agent.sandbox(token="t1")
    assert sbx.commands.run("echo $A").stdout.strip() == "1"
    # Whoever holds the token may change it (kilnd does on resume).
    assert httpx.post(url + "/init", json={"accessToken": "t2"}, headers=auth).status_code == 204
    assert httpx.get(url + "/envs", headers=auth).status_code == 401
    assert httpx.get(url + "/envs", headers={"X-Access-Token": "t2"}).status_code == 200
    with pytest.raises(AuthenticationException):
        sbx.files.read("/etc/hostname")


def test_start_over_the_exec_limits_is_invalid_argument(sbx, agent):
    with pytest.raises(InvalidArgumentException, match="131072"):
        sbx.commands.run("true", envs={"BIG": "x" * 200_000})
    with pytest.raises(InvalidArgumentException, match="131072"):
        sbx.commands.run("echo " + "x" * 200_000)
    # Each argument within the limit, all of them together over the
    # kernel's (E2BIG from execve).
    body = envelope({"process": {"cmd": "/bin/true", "args": ["x" * 120_000] * 40}})
    r = httpx.post(
        agent.url + "/process.Process/Start",
        content=body,
        headers={"content-type": "application/connect+json"},
        timeout=30,
    )
    msgs = stream_messages(r.content)
    err = msgs[-1][1]["error"]
    assert err["code"] == "invalid_argument", err
    assert "limit" in err["message"]
    assert sbx.commands.run("echo still-here").stdout.strip() == "still-here"


def test_unfinished_headers_are_closed_within_a_minute(agent):
    host, port = agent.addr.rsplit(":", 1)
    sends = [
        b"",  # nothing at all
        b"GET /health HTTP/1.1\r\nHost: x\r\n",  # no blank line
        b"PRI * HTTP/2.0\r\n",  # part of the h2c preface
    ]
    closed_after = [None] * len(sends)

    def hold(i, data):
        s = socket.create_connection((host, int(port)))
        s.settimeout(90)
        start = time.monotonic()
        try:
            if data:
                s.sendall(data)
            while s.recv(4096):
                pass
        except OSError:
            pass
        closed_after[i] = time.monotonic() - start
        s.close()

    threads = [threading.Thread(target=hold, args=(i, d)) for i, d in enumerate(sends)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(c is not None and c < 60 for c in closed_after), closed_after


def test_async_sdk_remove_and_streamed_watch(agent, workdir):
    import asyncio

    from e2b import AsyncSandbox

    async def main():
        sbx = agent.sandbox(cls=AsyncSandbox)
        await sbx.files.remove(f"{workdir}/never-was")
        os.makedirs(f"{workdir}/sub")
        os.chown(f"{workdir}/sub", 1000, 1000)
        events = []
        h = await sbx.files.watch_dir(
            workdir, recursive=True, on_event=lambda e: events.append((e.type, e.name))
        )
        try:
            await sbx.files.write(f"{workdir}/sub/a.txt", "a")
            await sbx.files.remove(workdir)
            want = [
                (Ev.CREATE, "sub/a.txt"),
                (Ev.CHMOD, "sub/a.txt"),
                (Ev.WRITE, "sub/a.txt"),
                (Ev.REMOVE, "sub/a.txt"),
                (Ev.REMOVE, "sub"),
                (Ev.REMOVE, "."),
            ]
            for _ in range(100):
                if len(events) >= len(want):
                    break
                await asyncio.sleep(0.1)
            assert events == want
        finally:
            await h.stop()

    asyncio.run(main())
