"""Rules of master URLs and the cluster-manager registry."""

from __future__ import annotations

import pytest

from dask_k8s_backend.kube import master as master_mod
from dask_k8s_backend.config import load_settings
from dask_k8s_backend.embedded.manager import EmbeddedClusterManager
from dask_k8s_backend.kube.master import (
    KubeConnection, KubernetesClusterManager, parse_embedded_master, parse_k8s_master,
    resolve_manager,
)


@pytest.mark.parametrize("master, servers", [
    ("k8s://https://h:6443", ["https://h:6443"]),
    ("k8s://http://h:8080", ["http://h:8080"]),
    ("k8s://h:6443", ["https://h:6443"]),
    ("k8s://h", ["https://h"]),
    ("k8s://https://a:6443,https://b:6443", ["https://a:6443", "https://b:6443"]),
    ("k8s://https://a:6443, b:6443", ["https://a:6443", "https://b:6443"]),
    ("k8s://", []),
    ("k8s://https://[::1]:6443", ["https://[::1]:6443"]),
    ("k8s://https://h:6443/", ["https://h:6443"]),
])
def test_k8s_master_forms_give_api_server_urls(master, servers):
    assert parse_k8s_master(master) == servers
    assert isinstance(resolve_manager(master), KubernetesClusterManager)


@pytest.mark.parametrize("master, problem", [
    ("k8s:/x", "no registered cluster manager"),
    ("yarn://x", "no registered cluster manager"),
    ("spark://h:7077", "no registered cluster manager"),
    ("", "it is empty"),
    ("k8s://https://", "has no host"),
    ("k8s://https://h:notaport", "invalid port"),
    ("k8s://ftp://h:21", "must use http or https"),
    ("k8s://https://a:1,,https://b:2", "empty"),
    ("k8s://https://user:pw@h:1", "may not carry credentials"),
    ("embedded://?color=blue", "unknown option 'color'"),
    ("embedded://?nodes=many", "whole number"),
    ("embedded://?tls=maybe", "true or false"),
    ("embedded://?kubelet=docker", "process or simulated"),
    ("embedded://somehost", "no host or path"),
])
def test_bad_masters_quote_the_master_and_list_accepted_forms(master, problem):
    with pytest.raises(ValueError) as info:
        resolve_manager(master)
    text = str(info.value)
    assert f"Invalid master {master!r}" in text and problem in text
    assert "k8s://https://host:port" in text and "embedded://" in text


def test_embedded_query_maps_to_embedded_kubernetes_arguments():
    options = parse_embedded_master("embedded://?kubelet=simulated&nodes=3&cpu=4&memory=8Gi&tls=false&faults=true")
    assert options == {"kubelet": "simulated", "nodes": 3, "cpu": "4", "memory": "8Gi", "tls": False, "faults": True}
    assert parse_embedded_master("embedded://") == {}
    assert isinstance(resolve_manager("embedded://"), EmbeddedClusterManager)


def test_managers_come_from_the_entry_point_group():
    names = {m.name for m in master_mod.registered_managers()}
    assert {"kubernetes", "embedded"} <= names


class _EntryPoint:
    def __init__(self, name, cls):
        self.name, self.value, self._cls = name, f"tests:{cls.__name__}", cls

    def load(self):
        return self._cls


def test_a_master_two_managers_accept_is_an_error(monkeypatch):
    class Greedy:
        name = "greedy"

        def can_create(self, master):
            return True

    eps = [_EntryPoint("kubernetes", KubernetesClusterManager), _EntryPoint("greedy", Greedy)]
    monkeypatch.setattr(master_mod, "entry_points", lambda group: eps)
    with pytest.raises(ValueError, match="several cluster managers accept it: kubernetes, greedy"):
        resolve_manager("k8s://h:1")


def test_a_third_party_manager_is_found(monkeypatch):
    class Yarn:
        name = "yarn"

        def can_create(self, master):
            return master.startswith("yarn://")

    monkeypatch.setattr(master_mod, "entry_points", lambda group: [_EntryPoint("yarn", Yarn)])
    assert isinstance(resolve_manager("yarn://rm:8032"), Yarn)


def test_kubernetes_manager_connects_to_the_first_server_without_contacting_it():
    settings = load_settings({"authenticate.oauth-token": "tok"})
    connection = KubernetesClusterManager().connect("k8s://http://127.0.0.1:1,http://127.0.0.1:2", settings)
    try:
        assert connection.api_client.configuration.host == "http://127.0.0.1:1"
        assert connection.api_client.rest_client.servers == ["http://127.0.0.1:1", "http://127.0.0.1:2"]
        assert connection.embedded is None
        assert "tok" not in repr(connection)
    finally:
        connection.close()
        connection.close()  # idempotent


class _FakeEmbedded:
    """Stands in for EmbeddedKubernetes where only the hand-over of options and stop() matter."""

    instances: list[_FakeEmbedded] = []

    def __init__(self, kubeconfig_path, **options):
        self.options, self.kubeconfig, self.stops = options, kubeconfig_path, 0
        self.url = "http://127.0.0.1:9"

    def __enter__(self):
        return self

    def stop(self):
        self.stops += 1


def test_embedded_manager_starts_the_embedded_kubernetes_with_the_query_and_stops_it_on_close(monkeypatch, tmp_path):
    import yaml

    from dask_k8s_backend.kube.client import kubeconfig_for

    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(kubeconfig_for("http://127.0.0.1:9", "tok")))
    started: list[_FakeEmbedded] = []

    def factory(**options):
        started.append(_FakeEmbedded(str(path), **options))
        return started[-1]

    monkeypatch.setattr("dask_k8s_backend.embedded.manager.EmbeddedKubernetes", factory)
    master = "embedded://?kubelet=simulated&nodes=3"
    connection = resolve_manager(master).connect(master, load_settings())
    assert started[0].options == {"kubelet": "simulated", "nodes": 3}
    assert connection.scheduler_host == "127.0.0.1" and connection.kubeconfig == str(path)
    assert connection.api_client.configuration.host == "http://127.0.0.1:9"
    connection.close()
    connection.close()
    assert started[0].stops == 1


def test_embedded_master_runs_a_real_embedded_kubernetes():
    pytest.importorskip("dask_k8s_backend.embedded.cluster", reason="embedded Kubernetes facade not written yet")
    from kubernetes import client as k8s

    master = "embedded://?kubelet=simulated&nodes=2"
    connection = resolve_manager(master).connect(master, load_settings())
    try:
        nodes = k8s.CoreV1Api(connection.api_client).list_node().items
        assert len(nodes) == 2
    finally:
        connection.close()


def test_kube_connection_close_stops_embedded_even_if_client_close_fails():
    class Client:
        def close(self):
            raise RuntimeError("boom")

    embedded = _FakeEmbedded("x")
    connection = KubeConnection(api_client=Client(), master="embedded://", embedded=embedded)
    with pytest.raises(RuntimeError):
        connection.close()
    assert embedded.stops == 1
