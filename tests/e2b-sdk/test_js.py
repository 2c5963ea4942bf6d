"""Runs js/sdk.test.mjs with the npm `e2b` SDK on Node against kilnd."""

import os
import pathlib
import shutil
import subprocess

import pytest

HERE = pathlib.Path(__file__).parent
NPM_E2B = os.environ.get("KILN_E2E_NPM_E2B", "e2b")
# A directory where `npm install e2b` was already run (for machines where the
# test itself cannot reach the registry).
NPM_PREFIX = os.environ.get("KILN_E2E_NPM_PREFIX")


def test_js_sdk(kilnd, tmp_path):
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.fail("node and npm are needed for the JS SDK test")
    version = subprocess.check_output(["node", "--version"], text=True).strip()
    assert version.startswith("v20."), f"expected Node 20, found {version}"
    if NPM_PREFIX:
        tmp_path = pathlib.Path(NPM_PREFIX)
    else:
        subprocess.run(["npm", "init", "-y"], cwd=tmp_path, check=True, capture_output=True)
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--silent", NPM_E2B],
            cwd=tmp_path,
            check=True,
        )
    shutil.copy(HERE / "js" / "sdk.test.mjs", tmp_path / "sdk.test.mjs")
    env = dict(os.environ, E2B_API_URL=kilnd.url, E2B_SANDBOX_URL=kilnd.url, E2B_API_KEY=kilnd.key)
    r = subprocess.run(
        ["node", "--test", "sdk.test.mjs"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stdout + r.stderr
