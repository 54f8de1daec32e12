"""benchmarks/public_path.py's own rules: alternation, the summary, and one small run through ``k8s://``.

The "Through k8s:// to a separate server" figures in docs/performance.md come from this script.
The small run also proves the fix end to end: with a client-side limit of 1 request per second, 20
pods through ``k8s://`` would take 20 s if the limit still applied after the embedded server's
API Priority and Fairness headers.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import public_path  # noqa: E402

pytestmark = pytest.mark.timeout(120)


def run(kind: str, seconds: float | None, target: int = 100) -> public_path.Run:
    return public_path.Run(kind, target, seconds, running=target, requests=target + 2, creates=target)


def test_kinds_alternate_abba_so_load_drift_hits_all():
    kinds = ["inproc", "k8s", "cluster"]
    assert [public_path.order_of(i, kinds) for i in range(3)] == [kinds, kinds[::-1], kinds]


def test_summary_gives_min_median_max_and_the_ratio_of_medians_to_the_first_kind():
    runs = [run("inproc", 4.0), run("inproc", 6.0), run("inproc", 5.0),
            run("k8s", 2.0), run("k8s", None), run("k8s", 3.0), run("k8s", 4.0)]
    figures = public_path.summary(runs, ["inproc", "k8s"], 100)
    assert (figures["inproc"]["min"], figures["inproc"]["median"], figures["inproc"]["max"]) == (4.0, 5.0, 6.0)
    assert figures["k8s"]["runs"] == 3 and figures["k8s"]["ratio_to_inproc"] == pytest.approx(0.6)


def test_a_small_run_through_k8s_is_not_held_by_the_client_side_rate_limit(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(public_path, "OVERRIDES", {})
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "unset"))  # restored after the test; the run sets its own
    record = tmp_path / "record.json"
    args = public_path.parse(["--targets", "20", "--repeat", "1", "--kinds", "k8s", "--json", str(record),
                              "--set", "api.qps=1", "--set", "api.burst=1"])
    assert asyncio.run(public_path.main(args)) == 0
    data = json.loads(record.read_text())
    (only,) = data["runs"]
    assert only["running"] == 20 and only["creates"] == 20 and only["seconds"] < 10
    assert data["overrides"] == {"api.qps": "1", "api.burst": "1"} and "k8s" in capsys.readouterr().out
    assert not [p for p in psutil.Process().children(recursive=True) if "embedded" in " ".join(p.cmdline())]


def test_the_request_counter_loses_no_count_across_threads_and_unpatches_the_client():
    import threading

    from dask_k8s_backend.kube.client import ResilientRESTClient

    original = ResilientRESTClient.request
    with public_path._count_requests() as counter:
        assert ResilientRESTClient.request is not original
        threads = [threading.Thread(target=lambda: [counter.add("POST", "/api/v1/namespaces/d/pods")
                                                    for _ in range(2000)]) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert counter.total == counter.creates == 16000
    assert ResilientRESTClient.request is original
