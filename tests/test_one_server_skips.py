"""The end-of-run list of tests that run on one API server only: which skips it picks, and its text."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from k8s_helpers import one_server_only_reason, one_server_skips

pytest_plugins = ["pytester"]

TESTS = Path(__file__).parent


def skipped(nodeid: str, reason: str) -> SimpleNamespace:
    return SimpleNamespace(nodeid=nodeid, longrepr=("t.py", 3, f"Skipped: {reason}"))


def test_only_skips_saying_they_run_on_one_server_are_listed_once_each():
    why = one_server_only_reason("embedded", "reads the embedded store")
    reports = [skipped("t.py::a", why), skipped("t.py::a", why), skipped("t.py::b", "slow: run with --run-slow"),
               SimpleNamespace(nodeid="t.py::c", longrepr=None)]
    assert one_server_skips(reports) == [("t.py::a", "runs on the embedded API server only: reads the embedded store")]


def test_the_run_ends_with_the_list(pytester):
    pytester.syspathinsert(str(TESTS))  # for k8s_helpers
    pytester.makeconftest((TESTS / "conftest.py").read_text())  # our hook, in a run of its own
    pytester.makepyfile(test_x=f"""
        import pytest

        def test_upstream_only():
            pytest.skip({one_server_only_reason("upstream", "needs a real quota controller")!r})

        def test_plain():
            pytest.skip("not today")
    """)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["*= runs on one server only =*",
                                 "test_x.py::test_upstream_only: runs on the upstream API server only: needs a real "
                                 "quota controller"])
    assert "not today" not in result.stdout.str().split("runs on one server only")[1]
