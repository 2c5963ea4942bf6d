"""Figures of the code-interpreter template through the unmodified
e2b-code-interpreter SDK against a running kilnd: Sandbox.create() of its
default template (code-interpreter-v1) and run_code("1+1") in a warm
context, each through kilnd's proxy.

    E2B_API_URL=http://127.0.0.1:3000 E2B_SANDBOX_URL=http://127.0.0.1:3000 \
    E2B_API_KEY=e2b_... python bench_code_interpreter.py [--creates 20] [--runs 200]
"""

import argparse
import statistics
import time

from e2b_code_interpreter import Sandbox


def pct(values, p):
    values = sorted(values)
    k = max(0, min(len(values) - 1, round(p / 100 * (len(values) - 1))))
    return values[k]


def line(what, ms):
    return (
        f"{what}: n={len(ms)} p50={pct(ms, 50):.1f} ms p99={pct(ms, 99):.1f} ms "
        f"mean={statistics.mean(ms):.1f} ms"
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--creates", type=int, default=20)
    ap.add_argument("--runs", type=int, default=200)
    args = ap.parse_args()

    Sandbox.create().kill()  # warm connections and caches
    create_ms, first_ms = [], []
    for _ in range(args.creates):
        t = time.perf_counter()
        sbx = Sandbox.create()
        create_ms.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        assert sbx.run_code("1+1").text == "2"
        first_ms.append((time.perf_counter() - t) * 1000)
        sbx.kill()
    print(line("Sandbox.create() (code-interpreter-v1)", create_ms))
    print(line("first run_code('1+1') after create (default context may still be starting)", first_ms))

    sbx = Sandbox.create()
    try:
        for _ in range(10):
            sbx.run_code("1+1")  # warm context and connection
        run_ms = []
        for _ in range(args.runs):
            t = time.perf_counter()
            r = sbx.run_code("1+1")
            run_ms.append((time.perf_counter() - t) * 1000)
            assert r.text == "2"
        print(line("run_code('1+1') in a warm context", run_ms))
    finally:
        sbx.kill()


if __name__ == "__main__":
    main()
