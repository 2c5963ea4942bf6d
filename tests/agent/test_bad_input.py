"""Bad input gets a clear error and the agent keeps serving."""

import json
import os
import socket
import struct
import subprocess
import urllib.parse

import httpx
import pytest


def envelope(obj, flags=0):
    raw = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return struct.pack(">BI", flags, len(raw)) + raw


def parse_envelopes(data):
    out = []
    while data:
        flags, n = struct.unpack(">BI", data[:5])
        out.append((flags, json.loads(data[5 : 5 + n])))
        data = data[5 + n :]
    return out


@pytest.fixture
def http(agent):
    with httpx.Client(base_url=agent.url, timeout=30) as c:
        yield c
    # every test ends with the agent alive and serving
    assert agent.proc.poll() is None
    assert httpx.get(agent.url + "/health").status_code == 204


def unary(http, method, body, **kw):
    return http.post(f"/{method}", content=body, headers={"content-type": "application/json", **kw})


def stream(http, method, body):
    r = http.post(f"/{method}", content=body, headers={"content-type": "application/connect+json"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/connect+json")
    return parse_envelopes(r.content)


def test_malformed_json(http):
    r = unary(http, "filesystem.Filesystem/Stat", b"{not json")
    assert r.status_code == 400
    assert r.json()["code"] == "invalid_argument"
    assert "malformed" in r.json()["message"]
    r = unary(http, "filesystem.Filesystem/Stat", b'{"path": 12}')
    assert r.status_code == 400 and r.json()["code"] == "invalid_argument"
    ev = stream(http, "process.Process/Start", envelope(b"[[["))
    assert ev[-1][0] & 2 and ev[-1][1]["error"]["code"] == "invalid_argument"


def test_truncated_and_empty_envelopes(http):
    ev = stream(http, "process.Process/Start", envelope({"process": {"cmd": "true"}})[:-3])
    assert ev[-1][1]["error"]["code"] == "invalid_argument"
    ev = stream(http, "process.Process/Start", b"")
    assert ev[-1][1]["error"]["code"] == "invalid_argument"
    ev = stream(http, "process.Process/Start", b"\x00\xff\xff\xff\xff")
    assert ev[-1][1]["error"]["code"] == "resource_exhausted"


def test_unknown_rpc_service_and_verb(http):
    # No route for them, as connect-go's mux answers: 404, never a 5xx.
    r = unary(http, "process.Process/Nope", b"{}")
    assert r.status_code == 404 and r.json()["code"] == "unimplemented"
    r = unary(http, "nope.Service/Stat", b"{}")
    assert r.status_code == 404 and r.json()["code"] == "unimplemented"
    r = http.get("/process.Process/List")
    assert r.status_code == 405
    r = http.post("/process.Process/List", content=b"{}", headers={"content-type": "text/plain"})
    assert r.status_code == 415
    r = http.get("/no/such/route")
    assert r.status_code == 404
    # a unary method called as a stream and the reverse
    ev = stream(http, "process.Process/List", envelope({}))
    assert ev[-1][1]["error"]["code"] == "unimplemented"
    r = unary(http, "process.Process/Start", b"{}")
    assert r.status_code == 415 and r.json()["code"] == "unimplemented"


def test_missing_fields(http):
    ev = stream(http, "process.Process/Start", envelope({}))
    assert ev == [(2, {"error": {"code": "invalid_argument", "message": "process config is required"}})]
    ev = stream(http, "process.Process/Start", envelope({"process": {"cmd": ""}}))
    assert ev[-1][1]["error"]["code"] == "invalid_argument"
    ev = stream(http, "process.Process/Connect", envelope({}))
    assert ev[-1][1]["error"]["code"] == "invalid_argument"
    ev = stream(http, "process.Process/Connect", envelope({"process": {"pid": 999999}}))
    assert ev[-1][1]["error"]["code"] == "not_found"
    r = unary(http, "process.Process/SendSignal", b"{}")
    assert r.status_code == 400 and r.json()["code"] == "invalid_argument"
    r = unary(http, "process.Process/SendInput", json.dumps({"process": {"pid": 999999}}).encode())
    assert r.status_code == 404
    r = unary(http, "filesystem.Filesystem/Stat", b"{}")
    assert r.status_code == 400 and "empty" in r.json()["message"]
    r = unary(http, "filesystem.Filesystem/GetWatcherEvents", b'{"watcherId": "nope"}')
    assert r.status_code == 404
    ev = stream(http, "process.Process/Start", envelope({"process": {"cmd": "/no/such/binary"}}))
    assert ev[-1][1]["error"]["code"] == "not_found"
    r = http.post("/files", content=b"x", headers={"content-type": "application/octet-stream"})
    assert r.status_code == 400 and "path" in r.json()["message"]


def test_huge_header(agent, http):
    s = socket.create_connection((agent.addr.split(":")[0], int(agent.addr.split(":")[1])), timeout=10)
    try:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass  # the agent may close before reading it all
    try:
        reply = s.recv(200)
    except ConnectionResetError:
        reply = b""
    s.close()
    assert reply == b"" or reply.startswith(b"HTTP/1.1 431") or reply.startswith(b"HTTP/1.1 400")


def test_dotdot_and_nul_paths(http, sbx):
    r = unary(http, "filesystem.Filesystem/Stat", json.dumps({"path": "/tmp/../tmp/./"}).encode())
    assert r.status_code == 200 and r.json()["entry"]["path"] == "/tmp"
    r = unary(http, "filesystem.Filesystem/Stat", json.dumps({"path": "/../../../../"}).encode())
    assert r.status_code == 200 and r.json()["entry"]["path"] == "/"
    r = unary(http, "filesystem.Filesystem/Stat", json.dumps({"path": "/tmp/a\u0000b"}).encode())
    assert r.status_code == 400 and "NUL" in r.json()["message"]
    r = http.get("/files", params={"path": "/tmp/a\x00b"})
    assert r.status_code == 400
    ev = stream(http, "process.Process/Start", envelope({"process": {"cmd": "/bin/echo", "args": ["a\u0000"]}}))
    assert ev[-1][1]["error"]["code"] == "invalid_argument"


def test_non_utf8_file_names(http, workdir):
    name = os.fsencode(workdir) + b"/bad\xff\xfe.txt"
    with open(name, "wb") as f:
        f.write(b"raw bytes name")
    os.chown(name, 1000, 1000)
    r = unary(http, "filesystem.Filesystem/ListDir", json.dumps({"path": workdir}).encode())
    assert r.status_code == 200
    assert [e["name"] for e in r.json()["entries"]] == ["bad\ufffd\ufffd.txt"]
    q = "path=" + urllib.parse.quote_from_bytes(name)
    r = http.get("/files?" + q)
    assert r.status_code == 200 and r.content == b"raw bytes name"
    r = http.post("/files?" + q, content=b"new", headers={"content-type": "application/octet-stream"})
    assert r.status_code == 200
    assert open(name, "rb").read() == b"new"


def test_bad_multipart_and_upload_errors(http, workdir):
    r = http.post("/files", content=b"--x\r\nbroken", headers={"content-type": "multipart/form-data; boundary=x"})
    assert r.status_code == 400
    r = http.post("/files", content=b"", headers={"content-type": "multipart/form-data"})
    assert r.status_code == 400
    r = http.post("/files", files=[("file", ("", b"x"))])
    assert r.status_code == 400
    os.mkdir(f"{workdir}/d")
    r = http.post("/files", params={"path": f"{workdir}/d"}, content=b"x", headers={"content-type": "application/octet-stream"})
    assert r.status_code == 400 and "directory" in r.json()["message"]
    r = http.post("/files", params={"path": f"{workdir}/g"}, content=b"not gzip",
                  headers={"content-type": "application/octet-stream", "content-encoding": "gzip"})
    assert r.status_code == 400
    r = http.get("/files", params={"path": f"{workdir}/d"})
    assert r.status_code == 400


def test_bad_users(http):
    r = unary(http, "filesystem.Filesystem/Stat", b'{"path": "/"}', authorization="Basic !!!")
    assert r.status_code == 401 and r.json()["code"] == "unauthenticated"
    r = unary(http, "filesystem.Filesystem/Stat", b'{"path": "/"}', authorization="Basic bm9ib2R5Og==")  # nobody:
    assert r.status_code == 401
    r = http.get("/files", params={"path": "/etc/hostname", "username": "ghost"})
    assert r.status_code == 401


def test_h2c_prior_knowledge(agent):
    out = subprocess.run(
        ["curl", "-s", "--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_version} %{http_code}",
         agent.url + "/health"],
        capture_output=True, text=True, timeout=30,
    ).stdout
    assert out == "2 204"
    out = subprocess.run(
        ["curl", "-s", "--http2-prior-knowledge", "-H", "content-type: application/json",
         "-d", '{"path": "/"}', agent.url + "/filesystem.Filesystem/Stat"],
        capture_output=True, text=True, timeout=30,
    ).stdout
    assert json.loads(out)["entry"]["type"] == "FILE_TYPE_DIRECTORY"


def test_access_token_init_envs_default_user(fresh_agent):
    url = fresh_agent.url
    r = httpx.post(url + "/init", json={
        "accessToken": "s3cret", "envVars": {"MY_T": "v1"}, "defaultUser": "root",
        "timestamp": "2020-01-01T00:00:00Z",
    })
    assert r.status_code == 204
    assert httpx.get(url + "/health").status_code == 204  # health stays open
    assert httpx.get(url + "/envs").status_code == 401
    assert httpx.get(url + "/envs", headers={"X-Access-Token": "wrong"}).status_code == 401
    r = httpx.get(url + "/envs", headers={"X-Access-Token": "s3cret"})
    assert r.status_code == 200 and r.json() == {"MY_T": "v1"}
    r = httpx.post(url + "/process.Process/List", content=b"{}", headers={"content-type": "application/json"})
    assert r.status_code == 401 and r.json()["code"] == "unauthenticated"

    from e2b import AuthenticationException

    with pytest.raises(AuthenticationException):
        fresh_agent.sandbox().files.read("/etc/hostname")
    sbx = fresh_agent.sandbox(token="s3cret")
    r = sbx.commands.run("echo $MY_T; id -u")
    assert r.stdout.split() == ["v1", "0"]
    assert sbx.files.write("/tmp/kiln-token-test.txt", "t").path == "/tmp/kiln-token-test.txt"
    os.unlink("/tmp/kiln-token-test.txt")
    # signed URLs work without the header, and only for what they were signed for
    sbx.files.write("/tmp/kiln-signed.txt", "signed", user="root")
    dl = sbx.download_url("/tmp/kiln-signed.txt", user="root")
    assert httpx.get(dl).content == b"signed"
    assert httpx.get(dl.replace("kiln-signed", "kiln-other")).status_code == 401
    up = sbx.upload_url("/tmp/kiln-signed.txt", user="root", use_signature_expiration=60)
    assert httpx.post(up, files={"file": ("x", b"new")}).status_code == 200
    assert open("/tmp/kiln-signed.txt").read() == "new"
    assert httpx.get(up).status_code == 401  # signed for write, not read
    os.unlink("/tmp/kiln-signed.txt")
    r = httpx.post(url + "/init", content=b"{bad", headers={"X-Access-Token": "s3cret"})
    assert r.status_code == 400
    r = httpx.post(url + "/init", json={"defaultUser": "ghost"}, headers={"X-Access-Token": "s3cret"})
    assert r.status_code == 400


METHODS = [
    "process.Process/" + m
    for m in ("Start", "Connect", "List", "SendInput", "StreamInput", "SendSignal", "CloseStdin", "Update")
] + [
    "filesystem.Filesystem/" + m
    for m in ("Stat", "MakeDir", "Move", "ListDir", "Remove", "WatchDir", "CreateWatcher",
              "GetWatcherEvents", "RemoveWatcher")
]


def test_garbage_on_every_method(agent, http):
    import random

    rng = random.Random(1234)
    shapes = [
        lambda: bytes(rng.randrange(256) for _ in range(rng.randrange(64))),
        lambda: json.dumps({"process": rng.choice([1, "x", [], None, {"pid": -1}, {"tag": 5}]),
                            "path": rng.choice([1, [], None, "", "\u0000", "../" * 50]),
                            "pty": rng.choice([{"size": {"cols": -1}}, "x", None]),
                            "input": rng.choice([{"stdin": "!!notbase64"}, {"pty": 3}, None]),
                            "signal": rng.choice(["SIGNAL_SIGKILL", 99, "nope", None]),
                            "depth": rng.choice([-1, 2**40, "x", None])}).encode(),
        lambda: b'{"a":' * 1000,
        lambda: json.dumps([1, 2, 3]).encode(),
    ]
    for method in METHODS:
        for _ in range(8):
            body = rng.choice(shapes)()
            for framed in (False, True):
                data = envelope(body) if framed else body
                ct = "application/connect+json" if framed else "application/json"
                r = http.post(f"/{method}", content=data, headers={"content-type": ct})
                assert r.status_code in (200, 400, 401, 403, 404, 409, 415, 429), (method, r.status_code, r.text)
                if r.status_code == 200 and framed:
                    parse_envelopes(r.content)  # well-formed stream
    assert agent.proc.poll() is None
    r = http.post("/process.Process/List", content=b"{}", headers={"content-type": "application/json"})
    assert r.status_code == 200
