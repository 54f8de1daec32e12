"""Fixtures for the embedded API server tests: a started ``EmbeddedKubernetes`` and clients for it.

``kube`` starts an EmbeddedKubernetes with no kubelets (the API server's own behaviour; the
kubelet suites bring their own nodes) and, on teardown, fails the test if the server left a
thread, a listening port or a child process behind. ``core_v1`` is the official client's
``CoreV1Api`` configured from the kubeconfig the embedded cluster wrote; ``kubectl`` runs the
real kubectl against it (skipped with a reason when kubectl is not installed).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time

import psutil
import pytest


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
