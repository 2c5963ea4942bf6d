"""Shared by the Python suites' conftests: when a test fails, its report
gets the warnings and errors (else the last lines) of every kilnd log the
suite started, so a failure in CI says what kilnd saw without the log file.

Use: `from pytest_kilnd_logs import pytest_runtest_makereport, watch` in a
conftest (with tests/ on sys.path), then `watch(log_path)` per kilnd."""

import pathlib

import pytest

LOGS: list = []
MAX_LINES = 40


def watch(log) -> None:
    p = pathlib.Path(log)
    if p not in LOGS:
        LOGS.append(p)


def tail(log: pathlib.Path) -> str:
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    notable = [l for l in lines if " WARN " in l or " ERROR " in l or "panicked" in l]
    return "\n".join((notable or lines)[-MAX_LINES:])


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if not rep.failed:
        return
    for log in LOGS:
        text = tail(log)
        if text:
            rep.sections.append((f"kilnd log {log} (warnings and errors, last {MAX_LINES})", text))
