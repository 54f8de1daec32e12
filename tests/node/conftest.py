"""Fixtures for the node agent's integration tests: a real API server and agents joined to it over HTTP.

``api`` is the API server the agents join: the upstream kube-apiserver when pytest gets
``--k8s-kubeconfig`` (e.g. the one ``python ci/upstream_k8s.py up`` wrote), otherwise an
EmbeddedKubernetes started without kubelets (``kubelet=None``), reached only through its URL and
kubeconfig, like any other server. ``make_agent`` starts :class:`NodeAgent`s on it and, on
teardown, stops them and checks that their Node is gone and that none of their threads is left.
Every wait is bounded and, where the server can say when something happened, a watch.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import psutil
import pytest
from node_helpers import NAMESPACE, Api, unique

from dask_k8s_backend.kube.errors import NotFound
from dask_k8s_backend.embedded.node.agent.node_agent import NodeAgent
from dask_k8s_backend.embedded.node.agent.options import parse_node_options


@pytest.fixture(scope="module")
def api(request) -> Iterator[Api]:
    kubeconfig = request.config.getoption("--k8s-kubeconfig")
    if kubeconfig:
        api = Api(kubeconfig, upstream=True)
        # ServiceAccount admission refuses pods until the serviceaccount controller made `default`
        api.wait_for(f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts", "default", bool, 60, "the default account")
        yield api
        api.http.close()
        return
    from dask_k8s_backend.embedded.cluster import EmbeddedKubernetes

    with EmbeddedKubernetes(kubelet=None) as kube:
        api = Api(kube.kubeconfig, upstream=False)
        yield api
        api.http.close()


def _children() -> set[int]:
    alive = set()
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                alive.add(child.pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def _agent_threads(name: str, port: int) -> list[threading.Thread]:
    """Live threads of one agent: its kubelet, pod watch, lease, events and kubelet endpoint."""
    return [t for t in threading.enumerate() if t.is_alive() and (
        t.name.endswith(f"-{name}") or f"-{name}-" in t.name or t.name == f"kubelet-server-{port}")]


@pytest.fixture
def make_agent(api: Api, tmp_path: Path) -> Iterator[Callable[..., NodeAgent]]:
    """``make_agent(kubelet="process", **options)``: a started agent with a unique node name."""
    agents: list[NodeAgent] = []
    children_before = _children()

    def make(kubelet: str = "process", lease_duration: int = 40, kubelet_options: dict | None = None,
             **options: Any) -> NodeAgent:
        name = options.pop("name", unique("agent"))
        parsed = parse_node_options(kubeconfig=api.kubeconfig, name=name, kubelet=kubelet, **options)
        agent = NodeAgent(parsed, work_dir=tmp_path / name, lease_duration=lease_duration,
                          kubelet_options=kubelet_options)
        agents.append(agent)
        return agent.start()

    yield make
    stopped = []
    for agent in agents:
        port = agent.server.port if agent.server is not None else -1
        _delete_pods_of(api, agent.options.name)
        agent.stop()
        stopped.append((agent.options.name, port))
    for name, port in stopped:
        assert api.get(f"/api/v1/nodes/{name}") is None, f"node {name} still exists after the agent stopped"
        deadline = time.monotonic() + 5  # threads end just after stop() returns
        while _agent_threads(name, port) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _agent_threads(name, port), f"threads of node {name} left: {_agent_threads(name, port)}"
    assert not _children() - children_before, f"processes left after the agents stopped: {_children() - children_before}"


def _delete_pods_of(api: Api, node: str) -> None:
    """Remove the node's pods at once (finished pods are never collected on their own below 12500)."""
    pods = api.http.request("GET", "/api/v1/pods", query={"fieldSelector": f"spec.nodeName={node}"})
    for pod in pods.get("items") or []:
        meta = pod["metadata"]
        try:
            api.http.request("DELETE", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                             body={"gracePeriodSeconds": 0})
        except NotFound:
            pass
