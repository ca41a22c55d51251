"""pytest plugin: one JSON line per test outcome, appended as each test finishes.

    PYTHONPATH=scripts FASTGAN_PYTEST_JSONL=tests.jsonl python -m pytest -p pytest_jsonl ...

Lines:

* ``{"event": "collected", "count": N}`` once collection is done (the selected tests);
* ``{"event": "test", "nodeid", "when", "outcome", "duration_s", "message"}`` for a test's call
  phase, and for a setup or teardown phase that did not pass. ``outcome`` is passed | failed |
  skipped | error (a setup or teardown failure); ``message`` is the first 2,000 characters of the
  failure or the skip reason.

The file is flushed after every line, so a run killed by a time limit keeps every outcome reported
before it, and ``count`` minus the tests reported says how many never finished. Under pytest-xdist
only the controller writes (the workers' reports reach it through xdist); ``--collect-only`` writes
nothing.
"""
from __future__ import annotations

import json
import os

import pytest

_path: str | None = None
_counted = False


def _write(line: dict) -> None:
    with open(_path, "a") as f:
        f.write(json.dumps(line) + "\n")
        f.flush()


def pytest_configure(config):
    global _path
    if hasattr(config, "workerinput") or config.option.collectonly:   # xdist workers: the controller writes
        return
    _path = os.environ.get("FASTGAN_PYTEST_JSONL") or None


def _collected(n: int) -> None:
    global _counted
    if _path is not None and not _counted:
        _counted = True
        _write({"event": "collected", "count": n})


def pytest_collection_finish(session):
    if not hasattr(session.config, "workerinput") and not session.config.pluginmanager.hasplugin("dsession"):
        _collected(len(session.items))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node, ids):
    _collected(len(ids))


def _message(report) -> str | None:
    if report.passed:
        return None
    if report.skipped and isinstance(report.longrepr, tuple):      # (file, line, reason)
        return str(report.longrepr[2])[:2000]
    return str(report.longreprtext or "")[:2000] or None


def pytest_runtest_logreport(report):
    if _path is None or (report.when != "call" and report.passed):
        return
    outcome = report.outcome if report.when == "call" else ("skipped" if report.skipped else "error")
    _write({"event": "test", "nodeid": report.nodeid, "when": report.when, "outcome": outcome,
            "duration_s": round(float(getattr(report, "duration", 0.0)), 3), "message": _message(report)})
