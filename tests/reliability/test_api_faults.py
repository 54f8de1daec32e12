"""The API server drops watches, answers 20% of requests with 429/503 and is unreachable for 10 s."""

from __future__ import annotations

import pytest

from .scenarios import run_api_faults

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(240)]


def test_backend_survives_api_faults_without_duplicate_pods_and_catches_up(kube):
    report = run_api_faults(kube, seed=11, target=3, outage=10.0, error_rate=0.2)

    assert report.errors_injected >= 5 and report.watch_drops > 0, report
    assert report.pods_created <= report.target + report.replacements, report
    assert report.executor_ids_reused == [], report
    assert report.caught_up_seconds <= 30, report
    assert report.result_correct, report
    assert report.pods_leaked == 0, report
