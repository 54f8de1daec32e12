"""Fixtures for KubeSparkCluster tests: an embedded Kubernetes reached as a real cluster.

Clusters in these tests use ``master="k8s://<url>"`` with the embedded server's kubeconfig, so
the path a real cluster takes (client factory, TLS, token) is the one tested, and the API
server outlives each cluster: "no pods left after close" is checked through the API.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any, Callable

import psutil
import pytest

from dask_k8s_backend import labels


@dataclass
class ExternalKubernetes:
    """A cluster named with --k8s-master: the same tests, a real (or separately started) Kubernetes."""

    master: str
    kubeconfig: str | None
    image: str | None
    namespace: str

    @property
    def url(self) -> str:
        return self.master.removeprefix("k8s://")


@pytest.fixture(scope="module")
def kube(request):
    master = request.config.getoption("--k8s-master")
    if master:
        yield ExternalKubernetes(
            master=master,
            kubeconfig=request.config.getoption("--k8s-kubeconfig") or os.environ.get("KUBECONFIG"),
            image=request.config.getoption("--k8s-image"),
            namespace=request.config.getoption("--k8s-namespace"),
        )
        return
    from dask_k8s_backend.embedded.cluster import EmbeddedKubernetes

    with EmbeddedKubernetes(kubelet="process", nodes=1, cpu="16", memory="32Gi") as k:
        yield k


@pytest.fixture
def core_api(kube):
    from kubernetes import client, config

    api_client = config.new_client_from_config(config_file=kube.kubeconfig)
    yield client.CoreV1Api(api_client)
    api_client.close()


def cluster_kwargs(kube, **extra: Any) -> dict[str, Any]:
    """Keyword arguments for a small, fast KubeSparkCluster on the test's Kubernetes."""
    kwargs: dict[str, Any] = dict(
        master=getattr(kube, "master", None) or f"k8s://{kube.url}",
        worker_memory="512MiB",
        quiet=True,
        executor={"delete-grace-period": "5s"},
        worker={"death-timeout": "20s"},
    )
    if kube.kubeconfig:
        kwargs["authenticate"] = {"kubeconfig": kube.kubeconfig}
    if getattr(kube, "image", None):
        kwargs["image"] = kube.image
    if getattr(kube, "namespace", None):
        kwargs["namespace"] = kube.namespace
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(kwargs.get(key), dict):
            kwargs[key] = {**kwargs[key], **value}
        else:
            kwargs[key] = value
    return kwargs


def app_pods(core_api, app_id: str, namespace: str = "default") -> list[dict]:
    response = core_api.list_namespaced_pod(
        namespace, label_selector=f"{labels.APP_ID}={app_id}", _preload_content=False
    )
    return json.loads(response.data)["items"]


def wait_until(condition: Callable[[], Any], timeout: float = 60, interval: float = 0.1, what: str = "condition") -> Any:
    """Poll a condition that has no event to await, with a deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


@pytest.fixture(autouse=True)
def no_leaked_worker_processes():
    """Every test must end with no worker process of ours still running."""
    yield
    me = psutil.Process(os.getpid())

    def workers() -> list[psutil.Process]:
        out = []
        for child in me.children(recursive=True):
            try:
                if "dask" in " ".join(child.cmdline()) and "worker" in " ".join(child.cmdline()):
                    out.append(child)
            except psutil.Error:
                continue
        return out

    wait_until(lambda: not workers(), timeout=30, what="worker processes to exit")
