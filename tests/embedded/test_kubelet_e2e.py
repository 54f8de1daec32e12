"""Kubelet and scheduler behaviour seen through the official client against ``EmbeddedKubernetes``.

The store-level suites (test_kubelet_process.py, test_scheduler_store.py) cover the rules; these
few tests prove the same facts reach a real client unchanged: phases and exit codes, pod logs,
downward-API env, graceful deletion, and Unschedulable then scheduled.
"""

from __future__ import annotations

import json
import os
import time

import psutil
import pytest
from kubelet_fixtures import wait_for

cluster_module = pytest.importorskip("dask_k8s_backend.embedded.cluster")
kubernetes = pytest.importorskip("kubernetes")

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module", params=[True, False], ids=["warm", "exec"])
def kube(request):
    """One embedded Kubernetes per runtime: the warm one (forked containers) and plain exec."""
    before = {p.pid for p in psutil.Process(os.getpid()).children(recursive=True)}
    with cluster_module.EmbeddedKubernetes(kubelet="process", nodes=1, cpu="2", memory="4Gi",
                                           warm_runtime=request.param) as k:
        yield k
    left = [p for p in psutil.Process(os.getpid()).children(recursive=True)
            if p.pid not in before and p.status() != psutil.STATUS_ZOMBIE]
    assert left == [], f"processes left after EmbeddedKubernetes stopped: {left}"


@pytest.fixture
def api(kube):
    from kubernetes import client, config

    api_client = config.new_client_from_config(config_file=kube.kubeconfig)
    yield client.CoreV1Api(api_client)
    api_client.close()


def manifest(name, code, cpu="100m", env=None):
    container = {"name": "main", "image": "python:3.11", "command": ["python", "-c", code],
                 "resources": {"requests": {"cpu": cpu}}}
    if env:
        container["env"] = env
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"restartPolicy": "Never", "containers": [container]}}


def read(api, name):
    from kubernetes.client.rest import ApiException

    try:
        return json.loads(api.read_namespaced_pod(name, "default", _preload_content=False).data)
    except ApiException as e:
        if e.status == 404:
            return None
        raise


def phase(api, name):
    pod = read(api, name)
    return pod and pod["status"].get("phase")


def test_a_pod_runs_and_its_log_and_exit_code_reach_the_client(api):
    env = [{"name": "MY_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]
    api.create_namespaced_pod("default", manifest("e2e-ok", "import os; print('ip', os.environ['MY_IP'])", env=env))
    wait_for(lambda: phase(api, "e2e-ok") == "Succeeded", timeout=30)
    pod = read(api, "e2e-ok")
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
    assert api.read_namespaced_pod_log("e2e-ok", "default").strip() == f"ip {pod['status']['podIP']}"
    api.create_namespaced_pod("default", manifest("e2e-bad", "raise SystemExit(5)"))
    wait_for(lambda: phase(api, "e2e-bad") == "Failed", timeout=30)
    assert read(api, "e2e-bad")["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 5
    for name in ("e2e-ok", "e2e-bad"):
        api.delete_namespaced_pod(name, "default")


def test_graceful_deletion_through_the_client_stops_the_process(api):
    code = "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(0)); time.sleep(60)"
    api.create_namespaced_pod("default", manifest("e2e-term", code))
    wait_for(lambda: phase(api, "e2e-term") == "Running", timeout=30)
    started = time.monotonic()
    api.delete_namespaced_pod("e2e-term", "default", grace_period_seconds=20)
    wait_for(lambda: read(api, "e2e-term") is None, timeout=15)
    assert time.monotonic() - started < 10  # the process honoured SIGTERM; no wait for the grace period


def test_unschedulable_then_scheduled_through_the_client(api):
    api.create_namespaced_pod("default", manifest("e2e-hog", "import time; time.sleep(2)", cpu="1500m"))
    wait_for(lambda: phase(api, "e2e-hog") == "Running", timeout=30)
    api.create_namespaced_pod("default", manifest("e2e-wait", "print('ran')", cpu="1"))

    def unschedulable():
        pod = read(api, "e2e-wait")
        conditions = {c["type"]: c for c in pod["status"].get("conditions") or []}
        return conditions.get("PodScheduled", {}).get("reason") == "Unschedulable" and conditions["PodScheduled"]

    assert wait_for(unschedulable, timeout=15)["message"] == "0/1 nodes are available: 1 Insufficient cpu."
    wait_for(lambda: phase(api, "e2e-wait") == "Succeeded", timeout=30)
    events = json.loads(api.list_namespaced_event("default", _preload_content=False).data)["items"]
    assert "FailedScheduling" in [e["reason"] for e in events if e["involvedObject"]["name"] == "e2e-wait"]
    for name in ("e2e-hog", "e2e-wait"):
        api.delete_namespaced_pod(name, "default")
