"""A stand-in for the code interpreter on port 49999, for tests only: runs
Python cells in one namespace and answers `POST /execute` with the NDJSON
lines e2b-code-interpreter reads (stdout, stderr, result, error,
number_of_executions, end_of_execution). Needs nothing but python3."""

import ast
import base64
import contextlib
import io
import json
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NS = {}
COUNT = 0


def run(code):
    global COUNT
    COUNT += 1
    out, err = io.StringIO(), io.StringIO()
    lines, value = [], None
    try:
        tree = ast.parse(code)
        last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            exec(compile(tree, "<cell>", "exec"), NS)
            if last is not None:
                value = eval(compile(ast.Expression(last.value), "<cell>", "eval"), NS)
    except Exception as e:  # noqa: BLE001 - reported to the client
        lines.append({"type": "error", "name": type(e).__name__, "value": str(e),
                      "traceback": traceback.format_exc()})
    if out.getvalue():
        lines.insert(0, {"type": "stdout", "text": out.getvalue()})
    if err.getvalue():
        lines.insert(1, {"type": "stderr", "text": err.getvalue()})
    if value is not None:
        r = {"type": "result", "is_main_result": True}
        if isinstance(value, bytes) and value.startswith(b"\x89PNG"):
            r["png"] = base64.b64encode(value).decode()
            r["text"] = f"<PNG image, {len(value)} bytes>"
        else:
            r["text"] = repr(value)
        lines.append(r)
    lines.append({"type": "number_of_executions", "execution_count": COUNT})
    lines.append({"type": "end_of_execution"})
    return lines


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        if self.path != "/execute":
            self.send_error(404)
            return
        req = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        body = "".join(json.dumps(line) + "\n" for line in run(req["code"])).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")


ThreadingHTTPServer(("0.0.0.0", 49999), Handler).serve_forever()
