"""A client-mode driver is SIGKILLed while its worker pods are Pending: no death-timeout ends them,
but its heartbeat Lease expires, `status` says the app is dead and `gc` without --app removes them."""

from __future__ import annotations

import pytest

from .scenarios import run_client_kill_while_pending

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(180)]


def test_pending_pods_of_a_sigkilled_client_are_gone_after_gc_once_its_heartbeat_expired(kube):
    report = run_client_kill_while_pending(kube, pending=2)

    assert report.left_by_early_gc == 2, report  # alive: gc leaves it alone
    assert report.dead_after_seconds <= report.lease_duration + 10, report
    assert "deleting lease default/" in report.gc_output and "2 pod(s) deleted" in report.gc_output, report.gc_output
    assert report.pods_leaked == 0
