"""Faults only a real control plane shows, each on its own UpstreamKubernetes started here (two process nodes).

- kube-apiserver restarted while a pod on a process node agent finishes: the kubelet's status
  write made while the server was down is written again, so the pod's Failed phase lands.
- a node agent SIGKILLed under a worker pod, then ``close()``: the pod, which no kubelet will ever
  confirm deleted, is force-deleted once its node is unreachable, so no pod of the app is left.

Marked slow (a control plane start and a node going unreachable take about two minutes on two
cores): run with ``--run-slow``. Skipped with the reason when the upstream binaries cannot be built.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "ci"))

from upstream.binaries import BuildError, ensure_built  # noqa: E402
from upstream.chaos import app_pods, cluster_kwargs, core_api, wait_for  # noqa: E402
from upstream.control_plane import NodeOptions, UpstreamKubernetes  # noqa: E402

from dask_k8s_backend import KubeSparkCluster  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

NAMESPACE = "default"
NODE_UNREACHABLE = 20 + 2 + 10  # kube-controller-manager's node-monitor grace + period (ci/upstream/flags.py), slack


@pytest.fixture(scope="module")
def kube() -> Iterator[UpstreamKubernetes]:
    try:
        bin_dir = ensure_built()
    except BuildError as e:
        pytest.skip(f"the upstream binaries cannot be built here: {e}")
    with UpstreamKubernetes(nodes=NodeOptions(count=2, kubelet="process"), bin_dir=bin_dir) as kube:
        yield kube


def exit_when_the_api_server_is_down(name: str, node: str) -> dict:
    """A pod whose container exits with 3 as soon as the API server stops answering: mid-restart, for sure."""
    code = ("import os, socket, sys, time\n"
            "address = (os.environ['KUBERNETES_SERVICE_HOST'], int(os.environ['KUBERNETES_SERVICE_PORT']))\n"
            "while True:\n"
            "    try:\n"
            "        socket.create_connection(address, timeout=1).close()\n"
            "    except OSError:\n"
            "        sys.exit(3)\n"
            "    time.sleep(0.05)\n")
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"nodeName": node, "restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                     "containers": [{"name": "main", "image": "python:3.11", "command": ["python", "-c", code]}]}}


def exit_code(pod: Any) -> int | None:
    for status in pod.status.container_statuses or []:
        if status.state and status.state.terminated:
            return status.state.terminated.exit_code
    return None


def test_a_status_written_while_the_api_server_restarts_lands_after_it_returns(kube):
    api = core_api(kube)
    api.create_namespaced_pod(NAMESPACE, exit_when_the_api_server_is_down("ends-in-outage", "node-1"))
    try:
        def phase() -> str:
            return api.read_namespaced_pod("ends-in-outage", NAMESPACE).status.phase

        wait_for("the pod Running", phase, timeout=90, interval=0.25, until=lambda p: p == "Running")
        outage = kube.restart_apiserver()
        wait_for("the pod's Failed phase after the restart", phase, timeout=45, interval=0.25,
                 until=lambda p: p == "Failed")
        pod = api.read_namespaced_pod("ends-in-outage", NAMESPACE)
        assert exit_code(pod) == 3, f"outage {outage:.1f} s; the container's exit code was not kept: {pod.status}"
    finally:
        api.delete_namespaced_pod("ends-in-outage", NAMESPACE, grace_period_seconds=0)


def test_close_leaves_no_pod_on_a_node_whose_agent_was_sigkilled(kube, caplog):
    api = core_api(kube)
    with KubeSparkCluster(**cluster_kwargs(kube, n_workers=2)) as cluster:
        app_id = cluster.app.app_id
        pods = wait_for("2 Running worker pods", lambda: app_pods(api, app_id), timeout=120, interval=0.25,
                        until=lambda ps: len(ps) == 2 and all(p.status.phase == "Running" for p in ps))
        victim = pods[0].spec.node_name
        kube.kill_node_agent(victim)
        closing = threading.Thread(target=cluster.close, name="close", daemon=True)
        started = time.monotonic()
        closing.start()
        closing.join(timeout=90)
        assert not closing.is_alive(), "close() did not return within 90 s"
    left = app_pods(api, app_id)
    assert not left, (f"{len(left)} pod(s) left {time.monotonic() - started:.0f} s after close with node {victim} "
                      f"dead: {[(p.metadata.name, p.spec.node_name, p.metadata.deletion_timestamp) for p in left]}")
    assert any("force" in r.getMessage() and victim in r.getMessage() for r in caplog.records), \
        "no log line said why a pod was force-deleted"
