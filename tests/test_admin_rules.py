"""`status` and `gc` rules on hand-made pods and Leases: an app is dead when its heartbeat Lease
expired or was released; gc without an app id takes dead apps (and lease-less apps whose pods all
finished), never a live one."""

from __future__ import annotations

from dask_k8s_backend import labels
from dask_k8s_backend.kube import app_lease
from dask_k8s_backend.ops.admin import format_apps, group_by_app, select_dead_apps, select_garbage

NOW = 10_000.0


def pod(app_id: str, name: str, phase: str) -> dict:
    return {"metadata": {"name": name, "namespace": "ns", "labels": {labels.APP_ID: app_id, labels.APP_NAME: "n",
                                                                     labels.ROLE: "worker"}},
            "status": {"phase": phase}}


def lease(app_id: str, renewed: float) -> dict:
    built = app_lease.build_lease(app_id=app_id, app_name="n", holder="h", duration=30, now=renewed)
    built["metadata"]["namespace"] = "ns"
    return built


def test_gc_takes_dead_apps_and_finished_lease_less_ones_never_a_live_one():
    pods = [pod("live", "l-1", "Pending"), pod("dead", "d-1", "Pending"), pod("old", "o-1", "Succeeded"),
            pod("old-running", "r-1", "Running")]
    apps = group_by_app(pods, [lease("live", NOW - 5), lease("dead", NOW - 95)])
    assert [a.app_id for a in select_dead_apps(apps, None, NOW)] == ["dead", "old"]
    assert [p["metadata"]["name"] for p in select_garbage(apps, "live", NOW)] == ["l-1"]  # named: taken


def test_an_app_with_only_a_lease_is_listed_and_status_says_alive_or_dead():
    apps = group_by_app([pod("live", "l-1", "Running")], [lease("live", NOW - 3), lease("gone", NOW - 300)])
    text = format_apps(apps, NOW)
    assert "app gone (n) namespace ns: {}, dead (no heartbeat for 300 s" in text
    assert "app live (n) namespace ns: {'Running': 1}, alive (heartbeat 3 s ago)" in text
