"""Workers deleted (API, kubectl) and SIGKILLed at random every 1-3 s while a computation runs."""

from __future__ import annotations

import shutil

import pytest

from .scenarios import run_kill_chaos

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(240)]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="needs kubectl on PATH")
def test_random_kills_during_a_computation_lose_nothing_and_recover_to_target(kube):
    report = run_kill_chaos(kube, seed=7, target=4, kills=6)

    assert len(report.kills) == 6, report
    assert {method for _, method, _ in report.kills} == {"api-delete", "kubectl-delete", "sigkill"}
    assert report.result_correct, report
    assert report.recovery_seconds <= 15, report
    assert report.executor_ids_reused == [], report
    # every kill was replaced, and nothing else was created
    assert report.pods_created <= report.target + len(report.kills), report
    assert report.pods_leaked == 0, report
