"""An owner for every app, and a heartbeat: each app's Lease owns its worker pods and is renewed by
the backend; a SIGKILLed client's Pending pods (which no death-timeout ends) are removed by `gc`
without an app id once its heartbeat has expired."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from kubernetes import client as k8s_client

from dask_k8s_backend import KubeSparkCluster, labels
from dask_k8s_backend.kube import app_lease

from k8s_helpers import app_pods, wait_until

from .conftest import cluster_kwargs

pytestmark = pytest.mark.timeout(240)

FAST_HEARTBEAT = {"lease-renew-interval": "1s", "lease-duration": "3s"}
NOWHERE = {"node-selector": {"dask-k8s-backend-test/no-such-node": "true"}}  # Pending, and not a fast verdict


def namespace_of(kube) -> str:
    return getattr(kube, "namespace", None) or "default"


def app_leases(core_api, app_id: str, namespace: str = "default") -> list[dict]:
    coordination = k8s_client.CoordinationV1Api(core_api.api_client)
    response = coordination.list_namespaced_lease(namespace, label_selector=f"{labels.APP_ID}={app_id}",
                                                  _preload_content=False)
    return json.loads(response.data)["items"]


def test_the_apps_lease_owns_its_pods_is_renewed_and_goes_at_close(kube, core_api):
    with KubeSparkCluster(n_workers=1, **cluster_kwargs(kube, scheduler=FAST_HEARTBEAT, worker=NOWHERE)) as cluster:
        app_id, ns = cluster.app.app_id, namespace_of(kube)
        wait_until(lambda: app_pods(core_api, app_id, ns), timeout=30, what="the worker pod")
        (lease,) = app_leases(core_api, app_id, ns)
        (pod,) = app_pods(core_api, app_id, ns)
        assert pod["metadata"]["ownerReferences"] == [
            {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "name": lease["metadata"]["name"],
             "uid": lease["metadata"]["uid"], "controller": True}]
        first = app_lease.parse_time(lease["spec"]["renewTime"])
        wait_until(lambda: app_lease.parse_time(app_leases(core_api, app_id, ns)[0]["spec"]["renewTime"]) > first,
                   timeout=10, what="a renewal")
        assert app_lease.is_alive(app_leases(core_api, app_id, ns)[0], time.time())
    assert app_leases(core_api, app_id, ns) == []
    wait_until(lambda: not app_pods(core_api, app_id, ns), timeout=30, what="no pod left after close")


CLIENT = textwrap.dedent("""
    import sys, time
    from dask_k8s_backend import KubeSparkCluster
    kwargs = eval(sys.argv[1])
    cluster = KubeSparkCluster(n_workers=2, **kwargs)
    print(cluster.app.app_id, flush=True)
    time.sleep(600)
""")


def gc_command(kube, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "KUBECONFIG": kube.kubeconfig}
    return subprocess.run([sys.executable, "-m", "dask_k8s_backend", *args, "--master", "k8s://", "--namespace",
                           namespace_of(kube)], env=env, capture_output=True, text=True, timeout=60)


def status_line(kube, app_id: str) -> str:
    """The app's header line in `python -m dask_k8s_backend status` ("" when not listed)."""
    lines = gc_command(kube, "status").stdout.splitlines()
    return next((line for line in lines if line.startswith(f"app {app_id} ")), "")


def test_a_sigkilled_clients_pending_pods_are_gone_after_gc_once_its_heartbeat_expired(kube, core_api, tmp_path):
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    kwargs = cluster_kwargs(kube, scheduler=FAST_HEARTBEAT, worker=NOWHERE)
    proc = subprocess.Popen([sys.executable, str(script), repr(kwargs)], stdout=subprocess.PIPE, text=True)
    ns = namespace_of(kube)
    try:
        app_id = proc.stdout.readline().strip()
        assert app_id, "the client printed no app id"
        wait_until(lambda: len(app_pods(core_api, app_id, ns)) == 2, timeout=60, what="two Pending pods")
        assert gc_command(kube, "gc").returncode == 0
        assert len(app_pods(core_api, app_id, ns)) == 2  # alive: gc leaves it alone
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    wait_until(lambda: "dead" in status_line(kube, app_id), timeout=30, what="status saying the app is dead")
    result = gc_command(kube, "gc")
    assert result.returncode == 0, result.stderr
    assert "deleting lease" in result.stdout
    wait_until(lambda: not app_pods(core_api, app_id, ns), timeout=30, what="the dead app's Pending pods deleted")
    assert app_leases(core_api, app_id, ns) == []
