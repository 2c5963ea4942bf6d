"""Closing-note figures through the Python SDK against a running kilnd:
Sandbox.create() p50/p99 over N creates, and commands.run("true") p50.

    E2B_API_URL=http://127.0.0.1:3000 E2B_SANDBOX_URL=http://127.0.0.1:3000 \
    E2B_API_KEY=e2b_... python bench.py [--creates 100] [--runs 100] [--no-run]

--no-run measures creates only (for runtimes without an agent).
"""

import argparse
import statistics
import time

from e2b import Sandbox


def pct(values, p):
    values = sorted(values)
    k = max(0, min(len(values) - 1, round(p / 100 * (len(values) - 1))))
    return values[k]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--creates", type=int, default=100)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--no-run", action="store_true")
    args = ap.parse_args()

    Sandbox.create().kill()  # warm connections and caches
    create_ms = []
    for _ in range(args.creates):
        t = time.perf_counter()
        sbx = Sandbox.create()
        create_ms.append((time.perf_counter() - t) * 1000)
        sbx.kill()
    print(
        f"Sandbox.create(): n={len(create_ms)} p50={pct(create_ms, 50):.1f} ms "
        f"p99={pct(create_ms, 99):.1f} ms mean={statistics.mean(create_ms):.1f} ms"
    )
    if args.no_run:
        return
    sbx = Sandbox.create()
    try:
        sbx.commands.run("true")
        run_ms = []
        for _ in range(args.runs):
            t = time.perf_counter()
            sbx.commands.run("true")
            run_ms.append((time.perf_counter() - t) * 1000)
        print(
            f'commands.run("true"): n={len(run_ms)} p50={pct(run_ms, 50):.1f} ms '
            f"p99={pct(run_ms, 99):.1f} ms"
        )
    finally:
        sbx.kill()


if __name__ == "__main__":
    main()
