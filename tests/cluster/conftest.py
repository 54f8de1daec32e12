"""Fixtures for KubeSparkCluster tests: an embedded Kubernetes reached as a real cluster.

Clusters in these tests use ``master="k8s://<url>"`` with the embedded server's kubeconfig, so
the path a real cluster takes (client factory, TLS, token) is the one tested, and the API
server outlives each cluster: "no pods left after close" is checked through the API.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import pytest

from k8s_helpers import assert_no_worker_processes_left, merge_kwargs


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
    return merge_kwargs(kwargs, extra)


@pytest.fixture(autouse=True)
def no_leaked_worker_processes():
    """Every test must end with no worker process of ours still running."""
    yield
    assert_no_worker_processes_left()
