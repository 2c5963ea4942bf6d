"""The agent behaves as E2B's envd does (issue 11) and bad requests never
kill the sandbox (issue 19), through kilnd's proxy with the unmodified SDK.
The same behaviours are checked on a host agent, faster and in more detail,
in tests/agent/test_envd_parity.py."""

import pytest
from e2b import InvalidArgumentException, Sandbox
from e2b.sandbox.filesystem.watch_handle import FilesystemEventType as Ev


@pytest.fixture(scope="module")
def sbx(kilnd):
    s = Sandbox.create(timeout=300)
    yield s
    try:
        s.kill()
    except Exception:
        pass


@pytest.fixture(autouse=True)
def still_running(sbx):
    yield
    assert sbx.is_running(), "the sandbox died"
    assert sbx.commands.run("echo ok").stdout.strip() == "ok"


def test_remove_of_a_missing_path_succeeds(sbx):
    sbx.files.remove("/home/user/never-was")
    sbx.files.write("/home/user/gone/x.txt", "x")
    sbx.files.remove("/home/user/gone")
    sbx.files.remove("/home/user/gone")
    assert not sbx.files.exists("/home/user/gone")


def test_watch_events_of_a_write_are_envds_and_there_at_once(sbx):
    sbx.files.make_dir("/home/user/w")
    sbx.files.make_dir("/home/user/w/sub/inner")
    w = sbx.files.watch_dir("/home/user/w", recursive=True)
    try:
        sbx.files.write("/home/user/w/n.txt", "hello")
        got = [(e.type, e.name) for e in w.get_new_events()]
        assert got == [(Ev.CREATE, "n.txt"), (Ev.CHMOD, "n.txt"), (Ev.WRITE, "n.txt")]
        sbx.files.write("/home/user/w/n.txt", "again")
        got = [(e.type, e.name) for e in w.get_new_events()]
        assert got == [(Ev.CHMOD, "n.txt"), (Ev.WRITE, "n.txt")]
        sbx.files.write("/home/user/w/sub/inner/f.txt", "f")
        got = [(e.type, e.name) for e in w.get_new_events()]
        assert got == [
            (Ev.CREATE, "sub/inner/f.txt"),
            (Ev.CHMOD, "sub/inner/f.txt"),
            (Ev.WRITE, "sub/inner/f.txt"),
        ]
        sbx.files.remove("/home/user/w/sub")
        got = [(e.type, e.name) for e in w.get_new_events()]
        assert got == [
            (Ev.REMOVE, "sub/inner/f.txt"),
            (Ev.REMOVE, "sub/inner"),
            (Ev.REMOVE, "sub"),
        ]
        sbx.files.remove("/home/user/w")
        assert [(e.type, e.name) for e in w.get_new_events()][-1] == (Ev.REMOVE, ".")
    finally:
        w.stop()


def test_overwrite_clears_metadata(sbx):
    p = "/home/user/meta.txt"
    assert sbx.files.write(p, "1", metadata={"a": "1", "b": "2"}).metadata == {"a": "1", "b": "2"}
    assert sbx.files.write(p, "2", metadata={"b": "3"}).metadata == {"b": "3"}
    assert sbx.files.get_info(p).metadata == {"b": "3"}
    sbx.files.write(p, "3")
    assert not sbx.files.get_info(p).metadata


def test_metadata_key_over_the_xattr_limit_is_400_and_nothing_written(sbx):
    with pytest.raises(InvalidArgumentException, match="246"):
        sbx.files.write("/home/user/long-key.txt", "x", metadata={"k" * 247: "v"})
    assert not sbx.files.exists("/home/user/long-key.txt")


def test_a_deep_tree_does_not_kill_the_sandbox(sbx):
    # One process makes the tree (1500 mkdir processes take minutes on gVisor).
    sbx.commands.run(
        "python3 -c \"import os; os.mkdir('/tmp/deep'); os.chdir('/tmp/deep')\n"
        "for _ in range(1500): os.mkdir('d'); os.chdir('d')\"",
        timeout=120,
    )
    entries = sbx.files.list("/tmp/deep", depth=1600)
    assert len(entries) == 1500
    with pytest.raises(InvalidArgumentException):
        sbx.files.list("/tmp/deep", depth=5000)
    sbx.files.remove("/tmp/deep")
    assert not sbx.files.exists("/tmp/deep")


def test_start_over_the_exec_limit_is_invalid_argument(sbx):
    with pytest.raises(InvalidArgumentException, match="131072"):
        sbx.commands.run("true", envs={"BIG": "x" * 200_000})
    with pytest.raises(InvalidArgumentException, match="131072"):
        sbx.commands.run("echo " + "x" * 200_000)
