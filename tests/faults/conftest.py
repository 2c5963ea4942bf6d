"""The fault suite: each module starts its own kilnd (own data dir, port,
runtime tag and subnet) through tests/security/harness.py, breaks something
(kilnd itself, an agent, the disk, the API's input), and checks what is
left: the store, the running sandboxes, the host."""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "security"))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from pytest_kilnd_logs import pytest_runtest_makereport  # noqa: E402,F401 (a hook)
