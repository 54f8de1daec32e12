"""The process holding the scheduler (client mode) is SIGKILLed: workers exit, gc cleans up."""

from __future__ import annotations

import pytest

from .scenarios import run_scheduler_kill

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(180)]


def test_workers_exit_after_their_scheduler_dies_and_gc_deletes_what_is_left(kube):
    report = run_scheduler_kill(kube, workers=2)

    assert report.exit_seconds <= report.death_timeout + 15, report
    assert "2 pod(s) deleted" in report.gc_output, report.gc_output
    assert "deleting secret default/dask-tls-" in report.gc_output, report.gc_output  # the app used TLS
    assert report.pods_leaked == 0
    status_lines = report.status_output.splitlines()
    assert any(line.startswith("app ") for line in status_lines), report.status_output
    assert sum("-exec-" in line for line in status_lines) == 2, report.status_output
