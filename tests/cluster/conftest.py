"""Fixtures for KubeSparkCluster tests: an embedded Kubernetes reached as a real cluster.

Clusters in these tests use ``master="k8s://<url>"`` with the embedded server's kubeconfig, so
the path a real cluster takes (client factory, TLS, token) is the one tested, and the API
server outlives each cluster: "no pods left after close" is checked through the API.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes import utils as k8s_utils
from kubernetes.utils import FailToCreateError

from dask_k8s_backend.kube.master import version_is_embedded

from k8s_helpers import assert_no_worker_processes_left, merge_kwargs


@dataclass
class ExternalKubernetes:
    """A cluster named with --k8s-master: the same tests, a real (or separately started) Kubernetes."""

    master: str
    kubeconfig: str | None
    image: str | None
    namespace: str

    service_account: str | None = None

    @property
    def url(self) -> str:
        return self.master.removeprefix("k8s://")


RBAC_YAML = Path(__file__).resolve().parents[2] / "deploy" / "rbac.yaml"


def install_rbac_yaml(kubeconfig: str | None, namespace: str) -> str | None:
    """Apply deploy/rbac.yaml in ``namespace`` (as a user deploying us would); returns its ServiceAccount.

    On a real API server, RBAC is enforced: a cluster-mode scheduler pod runs with its service
    account's token, so the tests give it exactly the Role the project ships, nothing more. A
    separately started embedded server serves no RBAC objects (its pods use the kubeconfig): None.
    """
    api = k8s_config.new_client_from_config(config_file=kubeconfig)
    account = None
    try:
        if version_is_embedded(api):
            return None
        for doc in yaml.safe_load_all(RBAC_YAML.read_text()):
            doc["metadata"]["namespace"] = namespace
            for subject in doc.get("subjects") or []:
                subject["namespace"] = namespace
            if doc["kind"] == "ServiceAccount":
                account = doc["metadata"]["name"]
            try:
                k8s_utils.create_from_dict(api, doc, namespace=namespace)
            except FailToCreateError as e:
                if any(getattr(x, "status", None) != 409 for x in e.api_exceptions):
                    raise
    finally:
        api.close()
    return account


@pytest.fixture(scope="module")
def kube(request):
    master = request.config.getoption("--k8s-master")
    if master:
        kubeconfig = request.config.getoption("--k8s-kubeconfig") or os.environ.get("KUBECONFIG")
        namespace = request.config.getoption("--k8s-namespace")
        yield ExternalKubernetes(master=master, kubeconfig=kubeconfig, image=request.config.getoption("--k8s-image"),
                                 namespace=namespace, service_account=install_rbac_yaml(kubeconfig, namespace))
        return
    from dask_k8s_backend.embedded.cluster import EmbeddedKubernetes

    with EmbeddedKubernetes(kubelet="process", nodes=1, cpu="16", memory="32Gi") as k:
        yield k


@pytest.fixture
def core_api(kube):
    api_client = k8s_config.new_client_from_config(config_file=kube.kubeconfig)
    yield k8s_client.CoreV1Api(api_client)
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
    if getattr(kube, "service_account", None):
        kwargs["worker"] = {**kwargs["worker"], "service-account": kube.service_account}
    return merge_kwargs(kwargs, extra)


@pytest.fixture(autouse=True)
def no_leaked_worker_processes():
    """Every test must end with no worker process of ours still running."""
    yield
    assert_no_worker_processes_left()
