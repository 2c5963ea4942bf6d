"""Closing-note figures for the code interpreter, measured with the real SDK:
run_code("1+1") in a warm default Python context, and creating a new Python
context (kernel start included). Not a test: prints figures.

    KILN_INTERPRETER_BIN=... JUPYTER_PATH=... python tests/interpreter/bench.py [N]
"""

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

from e2b import ConnectionConfig
from e2b_code_interpreter import Sandbox
from packaging.version import Version

sys.path.insert(0, os.path.dirname(__file__))
from conftest import _free_port  # noqa: E402


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    binary = os.environ.get("KILN_INTERPRETER_BIN", "target/debug/kiln-interpreter")
    proc = subprocess.Popen(
        [binary, "--listen", f"127.0.0.1:{port}", "--cwd", tempfile.mkdtemp()],
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 30
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=1)
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.05)
        sbx = Sandbox(
            sandbox_id="bench",
            envd_version=Version("0.5.7"),
            envd_access_token=None,
            sandbox_domain=None,
            connection_config=ConnectionConfig(sandbox_url=url, api_key="e2b_" + "0" * 40),
        )
        for _ in range(20):
            assert sbx.run_code("1+1").text == "2"
        runs = []
        for _ in range(n):
            t = time.perf_counter()
            sbx.run_code("1+1")
            runs.append((time.perf_counter() - t) * 1000)
        # With a spare kernel ready (the server keeps one; it is refilled in
        # the background, so wait a little between creates) ...
        creates = []
        for _ in range(5):
            time.sleep(1.5)
            t = time.perf_counter()
            ctx = sbx.create_code_context()
            creates.append((time.perf_counter() - t) * 1000)
            sbx.remove_code_context(ctx)
        # ... and without: a kernel started on demand (another cwd).
        cold = []
        for _ in range(5):
            t = time.perf_counter()
            ctx = sbx.create_code_context(cwd="/tmp")
            cold.append((time.perf_counter() - t) * 1000)
            sbx.remove_code_context(ctx)
        print(f"run_code('1+1') warm, {n} runs: p50 {statistics.median(runs):.2f} ms, "
              f"p90 {pct(runs, 90):.2f} ms, p99 {pct(runs, 99):.2f} ms")
        print(f"create_code_context() python, spare kernel ready, 5 runs: p50 "
              f"{statistics.median(creates):.1f} ms, max {max(creates):.1f} ms")
        print(f"create_code_context(cwd=...) python, kernel started on demand, 5 runs: p50 "
              f"{statistics.median(cold):.0f} ms, min {min(cold):.0f} ms, max {max(cold):.0f} ms")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)


if __name__ == "__main__":
    main()
