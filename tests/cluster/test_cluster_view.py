"""The cluster view (issue 17): distributed's cluster look with our app, worker groups and executors,
always current (after scale, adapt and close), in the terminal, in a live widget and in a real browser.

The browser test renders ``_repr_html_()`` of a cluster with two groups, one Running and one Pending on
an Unschedulable request, in headless Chromium; the screenshot is kept in $DASK_K8S_ARTIFACTS.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import pytest

from dask_k8s_backend import KubeSparkCluster
from dask_k8s_backend.pods.exits import parse_memory_quantity

from browser import artifacts_dir, chromium_or_skip, render
from k8s_helpers import wait_until

from .conftest import cluster_kwargs

pytestmark = pytest.mark.timeout(240)

PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>KubeSparkCluster view</title></head>
<body style="font-family: sans-serif; font-size: 13px; margin: 16px;">
{body}
<script>document.querySelectorAll("details").forEach(d => d.open = true);</script>
</body></html>
"""


def node_memory_bytes(core_api) -> int:
    nodes = core_api.list_node().items
    return max(parse_memory_quantity(n.status.allocatable["memory"]) for n in nodes)


def group_row(dom: str, group: str) -> str:
    match = re.search(rf'<tr class="k8s-group" data-group="{group}">(.*?)</tr>', dom, re.S)
    assert match, f"no row for worker group {group!r} in:\n{dom}"
    return match.group(1)


def cells(row: str) -> list[str]:
    return [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]


def test_browser_shows_both_groups_and_the_pending_reason(kube, core_api):
    chromium_or_skip()  # before a cluster is started: CI fails here when chromium is missing
    # More memory than any node has: Unschedulable, and kept Pending (no fast verdict) so the view shows it.
    too_big = 2 * node_memory_bytes(core_api)
    with KubeSparkCluster(**cluster_kwargs(kube, allocation={"unrecoverable-pending-confirm": None})) as cluster:
        cluster.scale(1)
        cluster.wait_for_workers(1, timeout=120)
        cluster.add_worker_group("big", worker_cores=1, worker_memory=f"{too_big // 2**20}MiB")
        cluster.scale(1, group="big")
        wait_until(lambda: "Unschedulable" in str(cluster.refresh_status().pending_reasons), timeout=60,
                   what="the big group's pod to be Unschedulable")
        body = cluster._repr_html_()

    out = artifacts_dir()
    page = out / "cluster-view.html"
    page.write_text(PAGE.format(body=body))
    screenshot = out / "cluster-view.png"
    dom = render(page, screenshot)
    print(f"cluster view screenshot: {screenshot}")

    assert cells(group_row(dom, "default"))[:6] == ["default", "1", "0", "1", "1", "0"]
    assert cells(group_row(dom, "big"))[:6] == ["big", "1", "1", "0", "0", "0"]
    pending = re.search(r'<ul class="k8s-pending".*?</ul>', dom, re.S)
    assert pending and "Unschedulable" in pending.group(0) and "Insufficient memory" in pending.group(0), dom
    assert dom.count('class="k8s-executor"') == 2
    assert "KubeSparkCluster" in dom and "Dashboard:" in dom
    assert screenshot.stat().st_size > 10_000  # a page was painted, not a blank


def test_views_stay_current_after_scale_and_close(kube):
    cluster = KubeSparkCluster(**cluster_kwargs(kube))
    try:
        cluster.scale(2)
        cluster.wait_for_workers(2, timeout=120)
        assert cells(group_row(cluster._repr_html_(), "default"))[:5] == ["default", "2", "0", "2", "2"]
        table = cluster.status_table
        assert re.search(r"^default\s+2\s+0\s+2\s+2\s+0$", table, re.M), table
        assert f"master: {cluster.connection.master}" in table and "dashboard: http" in table

        cluster.scale(0)  # read fresh when rendered: never "target 0" beside the old Running pods
        wait_until(lambda: cells(group_row(cluster._repr_html_(), "default"))[:5] == ["default", "0", "0", "0", "0"],
                   timeout=60, what="the view to show the scale-down")
    finally:
        cluster.close()
    view = cluster._repr_html_()
    assert "k8s-closed" in view and "Running" not in view and "k8s-group" not in view


def test_the_widget_refreshes_itself(kube):
    pytest.importorskip("ipywidgets")
    with KubeSparkCluster(**cluster_kwargs(kube)) as cluster:
        widget = cluster._widget()
        status_pane = widget.children[0]
        assert "Executors (0)" in status_pane.value
        cluster.scale(1)  # nobody renders: distributed's periodic refresh must pick it up
        wait_until(lambda: "Executors (1)" in status_pane.value, timeout=30, what="the widget to show the executor")
        wait_until(lambda: ">Running<" in status_pane.value, timeout=120, what="the widget to show it Running")
        scaling_pane = widget.children[1].children[0]  # distributed's Scaling tab: our groups' policies
        cluster.adapt(minimum=1, maximum=2)
        wait_until(lambda: "default: adaptive 1–2" in scaling_pane.value, timeout=30, what="the Scaling tab")
    assert "k8s-closed" in status_pane.value and "Executors (" not in status_pane.value


def test_pending_and_failed_executors_are_highlighted_and_escaped():
    from dask_k8s_backend.cluster.status_view import ClusterStatus, render_cluster_status_html

    status = ClusterStatus.from_dict({
        "app_id": "a1", "app_name": "demo", "namespace": "ns", "master": "k8s://h", "groups": ["default"],
        "targets": {"default": 2}, "errors": {"default": "Worker group 'default' stopped <now>"},
        "executors": [
            {"id": 1, "pod": "p-1", "group": "default", "phase": "Pending", "reason": "Unschedulable: <no node>"},
            {"id": 2, "pod": "p-2", "group": "default", "phase": "Failed", "reason": "OOMKilled"},
        ],
    })
    view = render_cluster_status_html(status, now=0)
    assert html.escape("Unschedulable: <no node>") in view and "<no node>" not in view
    assert re.search(r'class="k8s-executor" data-phase="Pending" style="background-color: #fff3cd', view)
    assert re.search(r'class="k8s-executor" data-phase="Failed" style="background-color: #f8d7da', view)
    assert 'class="k8s-verdict" data-group="default"' in view and "stopped &lt;now&gt;" in view
    assert "cluster.logs(1)" in view and "kubectl logs -n ns p-1" in view


def test_a_missing_chromium_fails_in_ci_and_skips_elsewhere(monkeypatch):
    import browser

    monkeypatch.setattr(browser.shutil, "which", lambda name: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="chromium is not installed.*ci/install_chromium.sh"):
        browser.chromium_or_skip()
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception):
        browser.chromium_or_skip()
