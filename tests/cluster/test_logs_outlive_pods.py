"""Logs that outlive pods: a failed executor's last lines are served by cluster.logs(id) after its
pod was deleted; get_logs() has no traceback for executors removed by scale-down; with
executor.delete-on-termination false, close() leaves the finished pods (labelled inactive) for
`status` to list and `gc` to remove."""

from __future__ import annotations

import logging

import pytest
from distributed import Client

from dask_k8s_backend import KubeSparkCluster, labels
from dask_k8s_backend.ops.admin import collect_garbage, format_apps, group_by_app, list_project_pods

from k8s_helpers import app_pods, wait_until

from .conftest import cluster_kwargs

pytestmark = pytest.mark.timeout(240)


def test_logs_of_a_deleted_failed_executor_return_its_last_lines(kube, core_api):
    with KubeSparkCluster(n_workers=1, **cluster_kwargs(kube)) as cluster, Client(cluster) as client:
        client.wait_for_workers(1, timeout=120)
        pod = cluster.executors()[0]["pod"]

        def say_then_kill_the_pods_main_process() -> None:  # defined here: pickled by value
            import os
            import threading

            print("last words of executor one", flush=True)
            # the nanny is the container's main process: killing it fails the pod (137), once run() answered
            threading.Timer(0.5, os.kill, (os.getppid(), 9)).start()

        client.run(say_then_kill_the_pods_main_process)
        ns = cluster.app.namespace
        wait_until(lambda: pod not in {p["metadata"]["name"] for p in app_pods(core_api, cluster.app.app_id, ns)},
                   timeout=60, what=f"pod {pod} deleted")
        text = cluster.logs(1)
        assert "last words of executor one" in text
        assert "kept when its pod was deleted" in text


def test_get_logs_has_no_traceback_for_executors_removed_by_scale_down(kube, caplog):
    with KubeSparkCluster(n_workers=2, **cluster_kwargs(kube)) as cluster:
        cluster.wait_for_workers(2, timeout=120)
        cluster.scale(0)
        wait_until(lambda: not cluster.scheduler_info["workers"] and not cluster.refresh_status().target, timeout=60,
                   what="scale-down")
        with caplog.at_level(logging.WARNING):
            logs = cluster.get_logs()
        assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records]
        assert "Scheduler" in logs


def test_the_log_of_an_executor_gone_without_a_kept_log_is_a_key_error_and_no_traceback(kube, core_api, caplog):
    """What get_logs() meets when a scale-down deletes a pod between its status and its log read."""
    with KubeSparkCluster(n_workers=1, **cluster_kwargs(kube)) as cluster:
        cluster.wait_for_workers(1, timeout=120)
        executor = cluster.executors()[0]["id"]
        app_id, ns = cluster.app.app_id, cluster.app.namespace
        cluster.scale(0)
        wait_until(lambda: not app_pods(core_api, app_id, ns), timeout=60, what="the pod deleted by scale-down")
        with caplog.at_level(logging.WARNING), pytest.raises(KeyError, match=f"executor {executor}"):
            cluster.logs(executor)
        assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records]


def test_close_keeps_finished_pods_without_delete_on_termination_for_status_and_gc(kube, core_api):
    kwargs = cluster_kwargs(kube, executor={"delete-on-termination": False})
    with KubeSparkCluster(n_workers=1, **kwargs) as cluster:
        cluster.wait_for_workers(1, timeout=120)
        app_id, ns = cluster.app.app_id, cluster.app.namespace
    kept = app_pods(core_api, app_id, ns)
    assert kept and all(p["metadata"]["labels"].get(labels.INACTIVE) == "true" for p in kept)
    api_client = core_api.api_client
    namespace = kept[0]["metadata"]["namespace"]
    assert app_id in format_apps(group_by_app(list_project_pods(api_client, namespace)))
    collect_garbage(api_client, namespace, None, dry_run=False, say=lambda line: None)
    wait_until(lambda: not app_pods(core_api, app_id, ns), timeout=30, what="kept pods removed by gc")
