"""Bad input at kilnd (issue 19), against a real kilnd with the container
runtime: the REST API, the proxy, and the agent through the proxy.

- Environments at create too large for a process start are a 400 naming
  the limit (through the SDK); one just under the per-variable limit
  reaches the sandbox's commands whole.
- The proxy in front of a real agent: an oversize header block is kilnd's
  431 (never a reset seen as a 502), `OPTIONS *` a 400, a malformed
  chunked upload a 400, a declared body over the agent's limit a 413, and
  the sandbox works afterwards.
- A bounded, seeded fuzz (KILN_FUZZ_REQUESTS, default 3000, 16 at once)
  of malformed, truncated, oversize and pipelined requests over raw
  sockets: no 5xx but the honest 502s (unknown or killed sandbox, closed
  port), every complete request answered or closed within a deadline;
  slow clients holding unfinished header blocks are closed by kilnd;
  connections past the per-address limit get a 429; afterwards kilnd is
  healthy, its RSS bounded, the sandbox alive and the host clean.
"""

import json
import os
import random
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from e2b import Sandbox

from harness import new_kilnd, wait_host_clean

TAG = "fz"
REQUESTS = int(os.environ.get("KILN_FUZZ_REQUESTS", "3000"))
SEED = int(os.environ.get("KILN_FUZZ_SEED", "19"))
WORKERS = 16
# A complete request must be answered (or its connection closed) within this.
DEADLINE = 15.0
# How long a deliberately unfinished request is held open.
INCOMPLETE_HOLD = 1.0
# kilnd's limits (crates/kiln-server/src/listener.rs, kiln-core's env checks).
MAX_HEADER_BYTES = 64 * 1024
HEADER_READ_TIMEOUT = 30
MAX_ENV_VAR_BYTES = 128 * 1024 - 1
MAX_CONNS = 200
AGENT_PORT = 49983


@pytest.fixture(scope="module")
def kilnd(tmp_path_factory):
    data = tmp_path_factory.mktemp("fuzz")
    k = new_kilnd(data, TAG, "10.245.0.0", KILN_MAX_CONNECTIONS_PER_IP=str(MAX_CONNS),
                  KILN_INTERPRETER_WARM_POOL="0")
    k.start()
    try:
        yield k
    finally:
        if k.proc is not None and k.proc.poll() is None:
            k.kill_all()
        code = k.stop()
        assert code == 0, f"kilnd exited {code}:\n{k.log_tail()}"
        left = wait_host_clean(TAG, data)
        assert not left, f"left on the host: {left}"


def create(k, **body):
    r = httpx.post(f"{k.url}/v2/sandboxes", headers=k.headers,
                   json={"templateID": "base", "timeout": 600, **body}, timeout=120)
    assert r.status_code == 201, r.text
    return r.json()


def raw(k, data: bytes, hold: float = DEADLINE, close_after_head: float = 0.3):
    """Sends `data`; returns (bytes read, closed by kilnd, timed out). Reads
    until kilnd closes, until `close_after_head` seconds pass without data
    after a response head arrived, or until `hold` passes."""
    s = socket.create_connection(("127.0.0.1", k.port), timeout=5)
    out = b""
    closed = timed_out = False
    try:
        try:
            s.sendall(data)
        except OSError:
            pass  # kilnd answered and closed before reading everything
        end = time.monotonic() + hold
        while True:
            now = time.monotonic()
            if now >= end:
                timed_out = True
                break
            wait = end - now
            if b"\r\n\r\n" in out:
                wait = min(wait, close_after_head)
            s.settimeout(wait)
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                if b"\r\n\r\n" in out:
                    break
                continue
            except OSError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            out += chunk
    finally:
        s.close()
    return out, closed, timed_out


STATUS = re.compile(rb"(?:^|\r\n)HTTP/1\.[01] (\d{3}) ")


def statuses(resp: bytes):
    return [int(m) for m in STATUS.findall(resp)]


def proxied_head(sid, port, method="GET", target="/health", extra=""):
    return (f"{method} {target} HTTP/1.1\r\nHost: x\r\nE2b-Sandbox-Id: {sid}\r\n"
            f"E2b-Sandbox-Port: {port}\r\nConnection: close\r\n{extra}\r\n")


def test_environment_sizes_at_create(kilnd):
    k = kilnd
    from e2b.exceptions import SandboxException

    with pytest.raises(SandboxException) as e:
        Sandbox.create(envs={"BIG": "x" * (MAX_ENV_VAR_BYTES + 1)}, **k.sdk_opts())
    assert str(MAX_ENV_VAR_BYTES) in str(e.value), str(e.value)
    big = {f"V{i}": "y" * (100 * 1024) for i in range(6)}
    with pytest.raises(SandboxException) as e:
        Sandbox.create(envs=big, **k.sdk_opts())
    assert "524288" in str(e.value), str(e.value)
    assert k.list_ids() == set(), "a refused create left a sandbox"

    # Just under the per-variable limit: the agent gets it in /init, not on
    # its exec, and every command sees it whole.
    value = "z" * (MAX_ENV_VAR_BYTES - len("BIG=") - 1)
    sbx = Sandbox.create(envs={"BIG": value, "SMALL": "1"}, timeout=300, **k.sdk_opts())
    try:
        out = sbx.commands.run("printf %s \"$BIG\" | wc -c; echo $SMALL").stdout.split()
        assert out == [str(len(value)), "1"], out
    finally:
        sbx.kill()


def test_proxy_limits_in_front_of_a_real_agent(kilnd):
    k = kilnd
    sbx = create(k)
    sid, token = sbx["sandboxID"], sbx["envdAccessToken"]
    auth = f"X-Access-Token: {token}\r\n"

    # Over the agent's header limit: kilnd's 431, every time (the agent's
    # own refusal used to arrive as a reset: a 502 most times).
    big = f"X-Big: {'v' * MAX_HEADER_BYTES}\r\n"
    for _ in range(10):
        resp, _, _ = raw(k, proxied_head(sid, AGENT_PORT, extra=auth + big).encode())
        assert statuses(resp)[:1] == [431], resp[:300]
    # Just under it reaches the agent.
    near = f"X-Near: {'v' * (MAX_HEADER_BYTES - 1024)}\r\n"
    resp, _, _ = raw(k, proxied_head(sid, AGENT_PORT, extra=auth + near).encode())
    assert statuses(resp)[:1] == [204], resp[:300]

    # Not a path.
    for method, target in (("OPTIONS", "*"), ("CONNECT", "example.com:443")):
        resp, _, _ = raw(k, proxied_head(sid, AGENT_PORT, method, target, auth).encode())
        assert statuses(resp)[:1] == [400], resp[:300]

    # A malformed chunked upload to the files API: the client's 400.
    for body in (b"zz\r\nabc\r\n0\r\n\r\n", b"-5\r\nabc\r\n0\r\n\r\n",
                 b"fffffffffffffffffffffff\r\nx\r\n0\r\n\r\n", b"3\r\nabcXX0\r\n\r\n"):
        head = proxied_head(sid, AGENT_PORT, "POST", "/files?path=/tmp/fz&username=root",
                            auth + "Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n")
        resp, _, _ = raw(k, head.encode() + body)
        assert statuses(resp)[:1] == [400], (body, resp[:300])

    # A declared body over the agent's RPC limit: 413 before anything is sent.
    head = proxied_head(sid, AGENT_PORT, "POST", "/filesystem.Filesystem/Stat",
                        auth + f"Content-Type: application/json\r\nContent-Length: {(32 << 20) + 1}\r\n")
    resp, _, _ = raw(k, head.encode() + b"{" * 4096)
    assert statuses(resp)[:1] == [413], resp[:300]

    # The sandbox is fine.
    s = Sandbox.connect(sid, **k.sdk_opts())
    assert s.commands.run("echo alive").stdout == "alive\n"
    s.kill()


def generator(rng: random.Random, live: str, token: str, dead: str, key: str):
    """One fuzz case: (bytes, complete, class). class says which 502 would be
    honest: 'unknown' and 'dead' sandboxes, a 'closed' port; none for 'rest'
    and 'agent'."""
    rest_paths = ["/v2/sandboxes", "/sandboxes", f"/sandboxes/{live}", f"/sandboxes/{dead}",
                  "/sandboxes/nosuch", f"/sandboxes/{live}/metrics", "/sandboxes/metrics",
                  "/templates", "/templates/base", "/templates/aliases/nope", "/snapshots",
                  "/health", "/openapi.json", "/", "//", "/%00", "/sandboxes/%2e%2e%2f",
                  "/v2/sandboxes?limit=-1&nextToken=%ff", "/v2/sandboxes?state=" + "x" * 3000,
                  "/sandboxes/" + "a" * 5000, "*", "http://127.0.0.1/v2/sandboxes"]
    agent_paths = ["/health", "/envs", "/files?path=/etc/hostname", "/files?path=%00&username=root",
                   "/files?path=" + "a/" * 200, "/filesystem.Filesystem/Stat",
                   "/filesystem.Filesystem/ListDir", "/process.Process/List",
                   "/process.Process/Start", "/filesystem.Filesystem/WatchDir",
                   "/nosuch.Service/Method", "/process.Process/", "/init", "*", "/" + "p" * 20000]
    methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE", "CONNECT",
               "BREW", "G\x01T", "get", "X" * 300, ""]
    versions = ["HTTP/1.1"] * 8 + ["HTTP/1.0", "HTTP/2.0", "HTTP/9.9", "HTTP/1.1x", "", "http/1.1"]
    bodies = [b"", b"{}", b"{", b"null", b"[]", b"{\"templateID\": 5}",
              b"{\"templateID\": \"nosuch\", \"timeout\": -1}",
              b"{\"templateID\": \"nosuch\", \"envVars\": {\"A\\u0000\": \"1\"}}",
              b"{\"path\": \"/\", \"depth\": 1}", b"{\"path\": 7}",
              b"[" * 5000 + b"]" * 5000, b"{\"a\":" * 3000, b"\xff\xfe\x00garbage",
              b"\x00\x00\x00\x00\x05{\"a\"", b"\x02\x00\x00\x00\x02{}", b"\x00\xff\xff\xff\xff{}",
              json.dumps({"templateID": "nosuch", "metadata": {"k" * 300: "v"}}).encode(),
              json.dumps({"templateID": "nosuch", "envVars": {"BIG": "x" * 200000}}).encode()]
    content_types = ["application/json", "application/connect+json", "application/proto",
                     "text/plain", "application/json; charset=\xff", "multipart/form-data; boundary="]

    def headers_junk():
        choice = rng.random()
        if choice < 0.05:
            return f"X-Big: {'v' * rng.choice([MAX_HEADER_BYTES - 2000, MAX_HEADER_BYTES + 10, 300000])}\r\n"
        if choice < 0.10:
            return "".join(f"X-F{i}: v\r\n" for i in range(rng.choice([99, 101, 500])))
        if choice < 0.15:
            return "X-Fold: a\r\n folded\r\n"
        if choice < 0.20:
            return "NoColonHere\r\n"
        if choice < 0.25:
            return "X-Nul: a\x00b\r\n"
        if choice < 0.30:
            return "X-8bit: \xe9\xff\r\n"
        if choice < 0.35:
            return "Content-Length: 5\r\nContent-Length: 7\r\n"
        if choice < 0.40:
            return f"X-Metadata-{'k' * 247}: v\r\n"
        if choice < 0.45:
            return "Expect: 100-continue\r\n"
        if choice < 0.50:
            return "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        return ""

    while True:
        method = rng.choice(methods) if rng.random() < 0.3 else rng.choice(["GET", "POST"])
        kind = rng.random()
        if kind < 0.35:
            klass = "rest"
            target = rng.choice(rest_paths)
            # The key works only where nothing is created, killed or changed.
            harmless = method in ("GET", "HEAD", "OPTIONS") or live not in target
            route = f"X-API-KEY: {rng.choice([key, key, 'e2b_bad', '']) if harmless else 'e2b_bad'}\r\n"
        else:
            sub = rng.random()
            if sub < 0.55:
                klass, sid, port = "agent", live, AGENT_PORT
            elif sub < 0.70:
                klass, sid, port = "closed", live, rng.choice([1, 8080, 65535])
            elif sub < 0.85:
                klass, sid, port = "dead", dead, AGENT_PORT
            else:
                klass, sid, port = "unknown", rng.choice(["nosuch", "a" * 60, "Z9"]), AGENT_PORT
            target = rng.choice(agent_paths)
            if rng.random() < 0.7:
                route = f"E2b-Sandbox-Id: {sid}\r\nE2b-Sandbox-Port: {port}\r\n"
            else:
                route = f"Host: {port}-{sid}.localhost:3000\r\n"
            # A valid token only with bodies that cannot start anything.
            if klass == "agent" and target not in ("/init",) and rng.random() < 0.5:
                route += f"X-Access-Token: {token}\r\n"
            else:
                route += f"X-Access-Token: {rng.choice(['wrong', ''])}\r\n"
        version = rng.choice(versions)
        host = "" if "Host:" in route else "Host: 127.0.0.1\r\n"
        conn = "Connection: close\r\n" if rng.random() < 0.8 else ""
        ct = f"Content-Type: {rng.choice(content_types)}\r\n" if rng.random() < 0.7 else ""
        body = rng.choice(bodies)
        complete = True
        framing = rng.random()
        if framing < 0.55:
            frame = f"Content-Length: {len(body)}\r\n"
            payload = body
        elif framing < 0.70:
            # Well-formed chunked.
            frame = "Transfer-Encoding: chunked\r\n"
            payload = (f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n") if body else b"0\r\n\r\n"
        elif framing < 0.85:
            # Malformed chunked: bad, negative or overflowing size, missing
            # CRLF, bad terminator.
            frame = "Transfer-Encoding: chunked\r\n"
            payload = rng.choice([b"zz\r\n", b"-1\r\n", b"fffffffffffffffffffffffff\r\n",
                                  b"2\r\n{}XX", b"2\r\n{}\r\n0\r\nX", b"2;\n{}\r\n0\r\n\r\n",
                                  b"0x2\r\n{}\r\n0\r\n\r\n"])
        elif framing < 0.93:
            # Cut off: fewer bytes than declared, then the client waits.
            frame = f"Content-Length: {len(body) + 100}\r\n"
            payload = body
            complete = False
        else:
            # Cut off inside the header block.
            frame, payload, complete = "", b"", False
        head = f"{method} {target} {version}\r\n{host}{route}{conn}{ct}{frame}{headers_junk()}"
        head = head + ("\r\n" if complete or rng.random() < 0.5 else "X-Unfinished: ")
        data = head.encode("latin-1", errors="replace") + payload
        if rng.random() < 0.05 and complete:
            # Pipelined: the same request twice, then garbage.
            data = data + data + b"\x16\x03\x01garbage\r\n\r\n"
        yield data, complete, klass


def judge(data: bytes, resp: bytes, closed: bool, timed_out: bool, complete: bool, klass: str):
    """(whose, description) of a failure, or None. whose is 'kilnd' or, for
    an answer the agent gave or caused, 'agent'."""
    codes = statuses(resp)
    for code in codes:
        if code < 500:
            continue
        if code == 502 and klass in ("dead", "unknown", "closed") and (
                b"was not found" in resp or b"port is not open" in resp
                or data.startswith(b"HEAD ")):
            continue  # honest: no such sandbox, or nothing on that port
        head = data.split(b"\r\n\r\n", 1)
        has_body = len(head) == 2 and head[1] not in (b"", b"0\r\n\r\n")
        if klass == "agent" and (b'"code":"' in resp or (b"port 49983 failed" in resp and has_body)):
            # A Connect error the agent sent, or its connection broken by
            # the agent (closing with a request body unread resets it).
            return "agent", f"{code} for an agent request"
        return "kilnd", f"{code} for a {klass} request"
    if complete and timed_out and not codes:
        return "kilnd", f"no answer within {DEADLINE} s for a {klass} request"
    return None


def rss_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_protocol_fuzz(kilnd):
    k = kilnd
    live = create(k)
    dead = create(k)
    r = httpx.delete(f"{k.url}/sandboxes/{dead['sandboxID']}", headers=k.headers, timeout=60)
    assert r.status_code == 204, r.text
    live_id = live["sandboxID"]

    # Slow clients: unfinished header blocks and silent connections, held
    # through the fuzz; kilnd must close them after its header timeout.
    slow = []
    for i in range(20):
        s = socket.create_connection(("127.0.0.1", k.port), timeout=5)
        if i % 4:
            s.sendall(f"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow-{i}: ".encode())
        slow.append(s)
    slow_opened = time.monotonic()

    # Warm up, then the RSS baseline.
    for _ in range(50):
        httpx.get(f"{k.url}/health", timeout=10)
    rss_before = rss_kib(k.proc.pid)

    rng = random.Random(SEED)
    gen = generator(rng, live_id, live["envdAccessToken"], dead["sandboxID"], k.key)
    cases = [next(gen) for _ in range(REQUESTS)]

    def run(case):
        data, complete, klass = case
        resp, closed, timed_out = raw(k, data, hold=DEADLINE if complete else INCOMPLETE_HOLD)
        return judge(data, resp, closed, timed_out, complete, klass), data[:200], resp[:300]

    started = time.monotonic()
    failures = {"kilnd": [], "agent": []}
    with ThreadPoolExecutor(WORKERS) as pool:
        for verdict, data, resp in pool.map(run, cases):
            if verdict:
                whose, why = verdict
                failures[whose].append((why, data, resp))
    took = time.monotonic() - started
    print(f"fuzz: {len(cases)} requests in {took:.1f} s, {len(failures['kilnd'])} kilnd "
          f"failures, {len(failures['agent'])} agent answers that are 5xx")
    def show(fs):
        return "\n".join(f"{w}: {d!r} -> {r!r}" for w, d, r in fs[:15])
    assert not failures["kilnd"], show(failures["kilnd"])
    assert took < 120, f"the fuzz took {took:.0f} s"

    # The slow connections are gone by now (or within the header timeout).
    for s in slow:
        left = HEADER_READ_TIMEOUT + 15 - (time.monotonic() - slow_opened)
        s.settimeout(max(left, 1))
        try:
            got = s.recv(4096)
        except socket.timeout:
            pytest.fail("kilnd kept a slow client's connection open past its header timeout")
        except OSError:
            got = b""
        assert got == b"" or got.startswith(b"HTTP/1.1 408"), got[:200]
        s.close()

    # Past the per-address limit: 429, and room again once they close.
    held, refused = [], None
    try:
        for _ in range(MAX_CONNS + 20):
            s = socket.create_connection(("127.0.0.1", k.port), timeout=5)
            held.append(s)
            s.setblocking(False)
            time.sleep(0.002)
            try:
                got = s.recv(4096)
            except BlockingIOError:
                continue
            if got.startswith(b"HTTP/1.1 429"):
                refused = got
                break
        assert refused is not None, f"{len(held)} connections from one address, none refused"
        # A refusal can come a little after the next connection is opened.
        assert len(held) <= MAX_CONNS + 5, len(held)
    finally:
        for s in held:
            s.close()
    deadline = time.monotonic() + 10
    while True:
        try:
            if httpx.get(f"{k.url}/health", timeout=5).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "kilnd did not take connections again"
        time.sleep(0.2)

    # kilnd, its memory, and the sandbox are fine.
    assert k.proc.poll() is None, f"kilnd died:\n{k.log_tail()}"
    rss_after = rss_kib(k.proc.pid)
    print(f"kilnd RSS: {rss_before} KiB before, {rss_after} KiB after")
    assert rss_after < rss_before + 128 * 1024, (rss_before, rss_after)
    assert live_id in k.list_ids()
    s = Sandbox.connect(live_id, **k.sdk_opts())
    assert s.commands.run("echo alive").stdout == "alive\n"
    r = httpx.get(f"{k.url}/health", headers={"E2b-Sandbox-Id": dead["sandboxID"],
                                             "E2b-Sandbox-Port": str(AGENT_PORT)}, timeout=10)
    assert r.status_code == 502 and "was not found" in r.text, r.text
    s.kill()
    # The agent's own answers: a 4xx for what it will not serve, and what
    # it does not read of a body drained before it closes (a reset would
    # reach the client as kilnd's 502).
    assert not failures["agent"], "the agent answered or caused 5xx:\n" + show(failures["agent"])
