"""Fixtures for the embedded API server tests: a started ``EmbeddedKubernetes`` and clients for it.

``kube`` starts an EmbeddedKubernetes with no kubelets (the API server's own behaviour; the
kubelet suites bring their own nodes) and, on teardown, fails the test if the server left a
thread, a listening port or a child process behind. ``core_v1`` is the official client's
``CoreV1Api`` configured from the kubeconfig the embedded cluster wrote; ``kubectl`` runs the
default kubectl against it (skipped with a reason when kubectl is not installed). ``target`` is a
differential test's server: the embedded one, then upstream's when pytest gets ``--k8s-kubeconfig``.
``kubectl_matrix`` runs a real kubectl against a ``target``: the default one on PATH and the oldest
and newest of the versioned ``kubectl.1.NN`` installed beside it (ids ``kubectl-1.27`` ...).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
from kubectl_binaries import KUBECTL_VERSIONS, find_kubectl, kubectl_id
from kubernetes import client, config


def _threads() -> set[threading.Thread]:
    return set(threading.enumerate())


def _children() -> set[int]:
    return {p.pid for p in psutil.Process(os.getpid()).children(recursive=True)
            if p.status() != psutil.STATUS_ZOMBIE}


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def assert_nothing_leaked(threads_before: set, children_before: set, port: int) -> None:
    """Threads, processes and the listening port are all gone (bounded wait: threads end asynchronously)."""
    deadline = time.monotonic() + 5
    while True:
        threads = [t for t in _threads() - threads_before if t.is_alive()]
        children = _children() - children_before
        if not threads and not children or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert not threads, f"threads left after EmbeddedKubernetes.stop(): {threads}"
    assert not children, f"processes left after EmbeddedKubernetes.stop(): {children}"
    assert not _port_open(port), f"port {port} still accepts connections after EmbeddedKubernetes.stop()"


@pytest.fixture
def make_kube():
    """Factory: ``make_kube(**options)`` starts an EmbeddedKubernetes that is stopped and leak-checked."""
    from dask_k8s_backend.embedded.cluster import EmbeddedKubernetes

    started = []
    threads_before, children_before = _threads(), _children()

    def make(**options):
        options.setdefault("kubelet", None)
        kube = EmbeddedKubernetes(**options).start()
        started.append(kube)
        return kube

    yield make
    for kube in started:
        kube.stop()
    for kube in started:
        assert_nothing_leaked(threads_before, children_before, kube.apiserver.port)


@pytest.fixture
def kube(make_kube):
    """A started EmbeddedKubernetes (TLS, token, no nodes, fault injection available)."""
    return make_kube(faults=True)


@pytest.fixture
def api_client(kube):
    from kubernetes import config

    client = config.new_client_from_config(config_file=kube.kubeconfig)
    yield client
    client.close()


@pytest.fixture
def core_v1(api_client):
    """The official client's CoreV1Api for ``kube``."""
    from kubernetes import client

    return client.CoreV1Api(api_client)


@pytest.fixture
def kubectl(kube):
    """``kubectl(*args, input=None) -> CompletedProcess`` against ``kube``; skips when kubectl is absent."""
    binary = shutil.which("kubectl")
    if binary is None:
        pytest.skip("kubectl is not on PATH; install kubectl v1.32 to run the kubectl conformance tests")

    def run(*args: str, input: str | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run([binary, "--kubeconfig", kube.kubeconfig, *args], input=input, capture_output=True,
                              text=True, timeout=timeout)

    return run


class Target:
    """One API server a differential test talks to: the embedded one, or the upstream kube-apiserver.

    Both get the same requests; each test asserts what upstream answers (its source cited in the
    test), so a difference fails on the embedded side. ``namespace`` is fresh per test.
    """

    def __init__(self, name: str, api_client: client.ApiClient, namespace: str, kube: Any = None) -> None:
        self.name = name  # "embedded" or "upstream"
        self.kube = kube  # the EmbeddedKubernetes behind an embedded target (its store), else None
        self.api_client = api_client
        self.core_v1 = client.CoreV1Api(api_client)
        self.namespace = namespace

    def raw(self, method: str, path: str, query: dict | None = None, body=None, stream: bool = False,
            content_type: str = "application/json", accept: str = "application/json"):
        """``(code, parsed JSON)`` of one request (any code; no exception); ``stream``: the open urllib3 response."""
        method, url, headers, body, _ = self.api_client.param_serialize(
            method, path, query_params=list((query or {}).items()), body=body,
            header_params={"Accept": accept, "Content-Type": content_type}, auth_settings=["BearerToken"])
        response = self.api_client.call_api(method, url, header_params=headers, body=body,
                                            _request_timeout=None if stream else 30)
        if stream:
            return response.status, response.response
        return response.status, json.loads(response.read())


def _upstream_target(kubeconfig: str) -> tuple[client.ApiClient, str]:
    api_client = config.new_client_from_config(config_file=kubeconfig)
    namespace = f"conformance-{uuid.uuid4().hex[:8]}"
    client.CoreV1Api(api_client).create_namespace({"metadata": {"name": namespace}})
    return api_client, namespace


@pytest.fixture(params=["embedded", "upstream"])
def target(request, make_kube):
    """The same test against the embedded API server and, with ``--k8s-kubeconfig``, upstream's."""
    if request.param == "embedded":
        kube = make_kube()
        api_client = config.new_client_from_config(config_file=kube.kubeconfig)
        client.CoreV1Api(api_client).create_namespace({"metadata": {"name": "conformance"}})
        yield Target("embedded", api_client, "conformance", kube)
        api_client.close()
        return
    kubeconfig = request.config.getoption("--k8s-kubeconfig")
    if not kubeconfig:
        pytest.skip("upstream side of a differential test: pass --k8s-kubeconfig of an upstream kube-apiserver "
                    "(python ci/upstream_k8s.py up --kubeconfig F --nodes 0)")
    api_client, namespace = _upstream_target(kubeconfig)
    yield Target("upstream", api_client, namespace)
    try:
        client.CoreV1Api(api_client).delete_namespace(namespace)
    finally:
        api_client.close()


@dataclass(frozen=True)
class Kubectl:
    """One kubectl binary bound to a ``target``'s kubeconfig and namespace; call it with kubectl's arguments."""

    binary: str
    kubeconfig: str
    namespace: str
    target: Target
    cache_dir: str  # per test: kubectl caches discovery per host:port, and embedded servers reuse ports

    def argv(self, *args: str, kubeconfig: str | None = None) -> list[str]:
        return [self.binary, "--kubeconfig", kubeconfig or self.kubeconfig, "--namespace", self.namespace,
                "--cache-dir", self.cache_dir, *args]

    def __call__(self, *args: str, input: str | None = None, timeout: float = 30,
                 kubeconfig: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(*args, kubeconfig=kubeconfig), input=input, capture_output=True, text=True,
                              timeout=timeout)


@pytest.fixture(params=KUBECTL_VERSIONS, ids=kubectl_id)
def kubectl_binary(request) -> str:
    """The path of one kubectl version (a failure under CI=true when missing, a skip elsewhere)."""
    return find_kubectl(request.param)


@pytest.fixture
def kubectl_matrix(target: Target, kubectl_binary: str, request, tmp_path: Path) -> Kubectl:
    """A kubectl version against a ``target`` server, in the target's fresh namespace."""
    if target.kube is not None:
        kubeconfig = target.kube.kubeconfig
    else:
        kubeconfig = request.config.getoption("--k8s-kubeconfig")
    return Kubectl(kubectl_binary, kubeconfig, target.namespace, target, str(tmp_path / "kubectl-cache"))
