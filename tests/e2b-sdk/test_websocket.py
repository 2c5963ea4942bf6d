"""A WebSocket server started in the sandbox, reached through kilnd's proxy
(Host routing), echoing frames both ways. Stdlib only on both sides."""

import base64
import os
import socket
import time
from urllib.parse import urlparse

SERVER = r'''
import base64, hashlib, socket, struct
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", 8765)); srv.listen(4)
while True:
    c, _ = srv.accept()
    head = b""
    while b"\r\n\r\n" not in head:
        head += c.recv(1)
    key = [l.split(b":", 1)[1].strip() for l in head.split(b"\r\n") if l.lower().startswith(b"sec-websocket-key")][0]
    acc = base64.b64encode(hashlib.sha1(key + GUID).digest())
    c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " + acc + b"\r\n\r\n")
    def read(n):
        b = b""
        while len(b) < n:
            x = c.recv(n - len(b))
            if not x:
                raise EOFError
            b += x
        return b
    try:
        while True:
            b0, b1 = read(2)
            n = b1 & 127
            if n == 126: n = struct.unpack(">H", read(2))[0]
            mask = read(4)
            data = bytes(x ^ mask[i % 4] for i, x in enumerate(read(n)))
            if b0 & 15 == 8:
                break
            reply = b"echo:" + data
            c.sendall(bytes([0x81, len(reply)]) + reply)
    except EOFError:
        pass
    c.close()
'''


def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        assert chunk, "connection closed"
        buf += chunk
    return buf


def test_websocket_through_the_proxy(kilnd, sandbox):
    sandbox.files.write("/home/user/ws.py", SERVER)
    sandbox.commands.run("python3 /home/user/ws.py", background=True)
    host = sandbox.get_host(8765)
    addr = urlparse(kilnd.url)
    key = base64.b64encode(os.urandom(16)).decode()
    deadline = time.monotonic() + 15
    while True:
        s = socket.create_connection((addr.hostname, addr.port), timeout=10)
        s.sendall(
            (
                f"GET /chat HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += recv_exact(s, 1)
        if head.startswith(b"HTTP/1.1 101") or time.monotonic() > deadline:
            break
        s.close()  # server not listening yet: 502 port not open
        time.sleep(0.2)
    assert head.startswith(b"HTTP/1.1 101"), head
    for text in (b"hello", b"second message"):
        mask = os.urandom(4)
        payload = bytes(x ^ mask[i % 4] for i, x in enumerate(text))
        s.sendall(bytes([0x81, 0x80 | len(text)]) + mask + payload)
        b0, n = recv_exact(s, 2)
        assert b0 == 0x81
        assert recv_exact(s, n) == b"echo:" + text
    s.sendall(bytes([0x88, 0x80]) + os.urandom(4))
    s.close()
