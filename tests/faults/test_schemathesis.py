"""schemathesis (PyPI) against kilnd's own OpenAPI document (GET
/openapi.json): generated requests to every operation, with a valid API
key, bounded in examples and time. No 5xx, kilnd does not crash, and every
sandbox the fuzzing created is killed; the host is clean afterwards."""

import json
import os
import pathlib
import re
import subprocess
import sys

import httpx

from harness import new_kilnd, wait_host_clean

TAG = "fs"
MAX_EXAMPLES = int(os.environ.get("KILN_FUZZ_EXAMPLES", "10"))
MAX_TIME = int(os.environ.get("KILN_FUZZ_SECONDS", "40"))


def test_no_server_errors_on_generated_requests(tmp_path):
    k = new_kilnd(tmp_path, TAG, "10.244.0.0", KILN_MAX_TIMEOUT="300")
    k.start()
    try:
        schema = httpx.get(f"{k.url}/openapi.json", timeout=10)
        assert schema.status_code == 200
        checked_in = pathlib.Path(__file__).resolve().parents[2] / "docs" / "openapi.json"
        assert schema.json()["paths"].keys() == json.loads(checked_in.read_text())["paths"].keys()
        st = pathlib.Path(sys.executable).with_name("schemathesis")
        # A second attempt only when schemathesis itself broke (no summary).
        for seed in ("7", "8"):
            run = subprocess.run(
                [
                    str(st), "run", f"{k.url}/openapi.json",
                    "--checks", "not_a_server_error",
                    "--header", f"X-API-KEY: {k.key}",
                    "--max-examples", str(MAX_EXAMPLES),
                    "--max-time", str(MAX_TIME),
                    "--request-timeout", "30",
                    "--workers", "2",
                    "--seed", seed,
                    "--no-shrink",
                ],
                capture_output=True,
                text=True,
                timeout=MAX_TIME + 120,
                env={**os.environ, "NO_COLOR": "1"},
                cwd=tmp_path,  # its .schemathesis/ cache stays out of the repo
            )
            out = run.stdout + run.stderr
            print(out[-6000:])
            # "Runtime Error" is schemathesis's own (seen: hypothesis failing
            # to describe one of its lambdas); anything else is kilnd's.
            if "generated," in out and "Runtime Error" not in out:
                break
        assert k.proc.poll() is None, f"kilnd died under fuzzing:\n{k.log_tail()}"
        assert httpx.get(f"{k.url}/health", timeout=5).status_code == 200
        for kilnd_fault in ("Network Error", "Timeout Error", "Server error", "not_a_server_error"):
            assert kilnd_fault not in out.split("SUMMARY")[-1], f"schemathesis: {kilnd_fault}:\n{out[-6000:]}"
        assert run.returncode == 0 or "Runtime Error" in out, f"schemathesis found failures:\n{out[-6000:]}"
        m = re.search(r"(\d+) generated, (\d+) passed", out)
        assert m and int(m.group(1)) > 0 and m.group(1) == m.group(2), f"not every generated case passed:\n{out[-3000:]}"
    finally:
        if k.proc is not None and k.proc.poll() is None:
            k.kill_all()
        code = k.stop()
    assert code == 0
    left = wait_host_clean(TAG, tmp_path)
    assert not left, f"left on the host: {left}"
