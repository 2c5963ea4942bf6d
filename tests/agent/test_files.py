"""filesystem.Filesystem and /files through the real e2b SDK."""

import asyncio
import hashlib
import io
import os
import time

import pytest
from e2b import FileType, NotFoundException, InvalidArgumentException, AsyncSandbox
from e2b.sandbox.filesystem.watch_handle import FilesystemEventType


def test_write_read_stat_list_move_remove(sbx, workdir):
    info = sbx.files.write(f"{workdir}/a/b/c.txt", "hello")
    assert info.path == f"{workdir}/a/b/c.txt" and info.name == "c.txt"
    assert sbx.files.read(f"{workdir}/a/b/c.txt") == "hello"
    assert sbx.files.read(f"{workdir}/a/b/c.txt", format="bytes") == bytearray(b"hello")

    st = sbx.files.get_info(f"{workdir}/a/b/c.txt")
    assert st.type == FileType.FILE and st.size == 5
    assert st.owner == "user" and st.group == "user"
    assert st.permissions == "-rw-r--r--" and st.mode == 0o644
    assert abs(st.modified_time.timestamp() - time.time()) < 60

    assert sbx.files.make_dir(f"{workdir}/d") is True
    assert sbx.files.make_dir(f"{workdir}/d") is False  # already exists
    assert sbx.files.get_info(f"{workdir}/d").type == FileType.DIR

    names1 = sorted(e.name for e in sbx.files.list(workdir))
    assert names1 == ["a", "d"]
    deep = sorted(os.path.relpath(e.path, workdir) for e in sbx.files.list(workdir, depth=3))
    assert deep == ["a", "a/b", "a/b/c.txt", "d"]

    moved = sbx.files.rename(f"{workdir}/a/b/c.txt", f"{workdir}/d/e/moved.txt")
    assert moved.path == f"{workdir}/d/e/moved.txt"
    assert not sbx.files.exists(f"{workdir}/a/b/c.txt")
    assert sbx.files.read(f"{workdir}/d/e/moved.txt") == "hello"

    sbx.files.remove(f"{workdir}/d")
    assert not sbx.files.exists(f"{workdir}/d")
    with pytest.raises(NotFoundException):
        sbx.files.get_info(f"{workdir}/d")
    sbx.files.remove(f"{workdir}/d")  # already gone: envd answers success


def test_relative_paths_are_in_home(sbx, agent):
    sbx.files.write("rel-test/x.txt", "1")
    assert (agent.home / "rel-test/x.txt").read_text() == "1"
    assert (agent.home / "rel-test/x.txt").stat().st_uid == 1000
    assert sbx.files.read("~/rel-test/x.txt") == "1"
    sbx.files.remove("rel-test")


def test_files_owned_by_acting_user(sbx, workdir):
    sbx.files.write(f"{workdir}/u.txt", "u")
    sbx.files.write(f"/tmp/kiln-root-owned-{os.getpid()}.txt", "r", user="root")
    try:
        assert sbx.files.get_info(f"{workdir}/u.txt").owner == "user"
        st = sbx.files.get_info(f"/tmp/kiln-root-owned-{os.getpid()}.txt")
        assert st.owner == "root"
    finally:
        os.unlink(f"/tmp/kiln-root-owned-{os.getpid()}.txt")


def test_permission_denied_for_user(sbx):
    # /root is 0700 root: the default user may not write there.
    with pytest.raises(Exception) as e:
        sbx.files.write("/root/kiln-should-not-exist.txt", "x")
    assert "ermission" in str(e.value)
    assert not os.path.exists("/root/kiln-should-not-exist.txt")
    with pytest.raises(Exception) as e:
        sbx.files.make_dir("/root/kiln-nope")
    assert "ermission" in str(e.value)


def test_100mb_upload_and_download_identical(sbx, workdir):
    size = 100 * 1024 * 1024
    block = os.urandom(1 << 20)
    data = b"".join(block[i:] + block[:i] for i in range(100))
    assert len(data) == size
    want = hashlib.sha256(data).hexdigest()

    sbx.files.write(f"{workdir}/big.bin", io.BytesIO(data))  # octet-stream, streamed
    assert os.path.getsize(f"{workdir}/big.bin") == size
    with open(f"{workdir}/big.bin", "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == want

    h = hashlib.sha256()
    n = 0
    for chunk in sbx.files.read(f"{workdir}/big.bin", format="stream"):
        h.update(chunk)
        n += len(chunk)
    assert n == size and h.hexdigest() == want

    got = sbx.files.read(f"{workdir}/big.bin", format="bytes", gzip=True)
    assert hashlib.sha256(got).hexdigest() == want


def test_gzip_upload(sbx, workdir):
    payload = b"compress me " * 10000
    sbx.files.write(f"{workdir}/gz.txt", payload, gzip=True)
    assert open(f"{workdir}/gz.txt", "rb").read() == payload


def test_multipart_several_files(sbx, workdir):
    infos = sbx.files.write_files(
        [
            {"path": f"{workdir}/m/one.txt", "data": "first"},
            {"path": f"{workdir}/m/two.bin", "data": b"\x00\x01\x02"},
            {"path": f"{workdir}/m/deep/three.txt", "data": "third"},
        ]
    )
    assert sorted(i.name for i in infos) == ["one.txt", "three.txt", "two.bin"]
    assert open(f"{workdir}/m/one.txt").read() == "first"
    assert open(f"{workdir}/m/two.bin", "rb").read() == b"\x00\x01\x02"
    assert open(f"{workdir}/m/deep/three.txt").read() == "third"
    assert os.stat(f"{workdir}/m/deep/three.txt").st_uid == 1000


def test_symlink_entry(sbx, workdir):
    os.symlink(f"{workdir}/target", f"{workdir}/link")
    os.mkdir(f"{workdir}/target")
    st = sbx.files.get_info(f"{workdir}/link")
    assert st.symlink_target == f"{workdir}/target"
    # newer envd: the link itself is reported (is_symlink), the SDK shows SYMLINK
    assert st.type == FileType.SYMLINK
    open(f"{workdir}/target/inside.txt", "w").close()
    assert [e.name for e in sbx.files.list(f"{workdir}/link")] == ["inside.txt"]


def _wait_events(handle, want, timeout=10):
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen += [(e.type, e.name) for e in handle.get_new_events()]
        if all(w in seen for w in want):
            return seen
        time.sleep(0.1)
    raise AssertionError(f"missing events {want} in {seen}")


def test_polled_watch_reports_create_write_rename_remove(sbx, workdir):
    w = sbx.files.watch_dir(workdir)
    try:
        with open(f"{workdir}/w.txt", "w") as f:
            f.write("x")
        os.rename(f"{workdir}/w.txt", f"{workdir}/w2.txt")
        os.chmod(f"{workdir}/w2.txt", 0o600)
        os.unlink(f"{workdir}/w2.txt")
        _wait_events(
            w,
            [
                (FilesystemEventType.CREATE, "w.txt"),
                (FilesystemEventType.WRITE, "w.txt"),
                (FilesystemEventType.RENAME, "w.txt"),
                (FilesystemEventType.CREATE, "w2.txt"),
                (FilesystemEventType.CHMOD, "w2.txt"),
                (FilesystemEventType.REMOVE, "w2.txt"),
            ],
        )
    finally:
        w.stop()


def test_recursive_watch(sbx, workdir):
    os.makedirs(f"{workdir}/sub")
    w = sbx.files.watch_dir(workdir, recursive=True)
    try:
        open(f"{workdir}/sub/f.txt", "w").close()
        os.makedirs(f"{workdir}/new/inner")
        time.sleep(0.3)
        open(f"{workdir}/new/inner/g.txt", "w").close()
        _wait_events(
            w,
            [
                (FilesystemEventType.CREATE, "sub/f.txt"),
                (FilesystemEventType.CREATE, "new"),
                (FilesystemEventType.CREATE, "new/inner/g.txt"),
            ],
        )
    finally:
        w.stop()


def test_streamed_watch_async(agent, workdir):
    async def main():
        sbx = agent.sandbox(cls=AsyncSandbox)
        events = []
        h = await sbx.files.watch_dir(workdir, on_event=lambda e: events.append((e.type, e.name)))
        await asyncio.sleep(0.2)
        with open(f"{workdir}/s.txt", "w") as f:
            f.write("y")
        os.rename(f"{workdir}/s.txt", f"{workdir}/s2.txt")
        os.unlink(f"{workdir}/s2.txt")
        want = [
            (FilesystemEventType.CREATE, "s.txt"),
            (FilesystemEventType.WRITE, "s.txt"),
            (FilesystemEventType.RENAME, "s.txt"),
            (FilesystemEventType.REMOVE, "s2.txt"),
        ]
        for _ in range(100):
            if all(w in events for w in want):
                break
            await asyncio.sleep(0.1)
        await h.stop()
        assert all(w in events for w in want), events

    asyncio.run(main())


def test_watch_missing_path(sbx):
    with pytest.raises(NotFoundException):
        sbx.files.watch_dir("/definitely/not/here")


def test_upload_onto_directory_and_read_directory(sbx, workdir):
    os.mkdir(f"{workdir}/adir")
    with pytest.raises(InvalidArgumentException):
        sbx.files.write(f"{workdir}/adir", "x")
    with pytest.raises(InvalidArgumentException):
        sbx.files.read(f"{workdir}/adir")
    with pytest.raises(NotFoundException):
        sbx.files.read(f"{workdir}/nope.txt")
    assert os.path.isdir(f"{workdir}/adir")


def test_file_metadata_as_xattrs(sbx, workdir):
    info = sbx.files.write(f"{workdir}/meta.txt", "m", metadata={"Owner": "team-a", "stage": "raw data"})
    assert info.metadata == {"owner": "team-a", "stage": "raw data"}
    assert os.getxattr(f"{workdir}/meta.txt", "user.e2b.owner") == b"team-a"
    st = sbx.files.get_info(f"{workdir}/meta.txt")
    assert st.metadata == {"owner": "team-a", "stage": "raw data"}
    os.setxattr(f"{workdir}/meta.txt", "user.e2b.extra", b"out-of-band")
    listed = {e.name: e.metadata for e in sbx.files.list(workdir)}
    assert listed["meta.txt"]["extra"] == "out-of-band"
    assert sbx.files.get_info(workdir).metadata is None


def test_watch_include_entry(sbx, workdir):
    w = sbx.files.watch_dir(workdir, include_entry=True)
    try:
        with open(f"{workdir}/e.txt", "w") as f:
            f.write("12345")
        deadline = time.monotonic() + 10
        entries = []
        while time.monotonic() < deadline and not any(e and e.size == 5 for e in entries):
            entries += [ev.entry for ev in w.get_new_events() if ev.name == "e.txt"]
            time.sleep(0.1)
        assert any(e and e.size == 5 and e.path == f"{workdir}/e.txt" for e in entries), entries
    finally:
        w.stop()
