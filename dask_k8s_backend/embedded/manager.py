"""The ``embedded://`` cluster manager: starts an embedded Kubernetes in this process for one connection.

Registered under the ``dask_k8s_backend.cluster_managers`` entry point like any third-party manager, so
:mod:`dask_k8s_backend.kube.master` finds it by name and the rest of the package never imports
``embedded`` (docs/contracts.md, Layout).
"""

from __future__ import annotations

from dataclasses import replace

from ..config import AuthSettings, Settings
from ..kube.client import create_api_client
from ..kube.master import KubeConnection, parse_embedded_master
from .cluster import EmbeddedKubernetes


class EmbeddedClusterManager:
    """``embedded://`` masters: start an embedded Kubernetes in this process."""

    name = "embedded"

    def can_create(self, master: str) -> bool:
        return master.startswith("embedded://")

    def connect(self, master: str, settings: Settings) -> KubeConnection:
        options = parse_embedded_master(master)
        kube = EmbeddedKubernetes(**options).__enter__()  # the contract's way to start it
        try:
            embedded_settings = _embedded_auth(settings, kube.kubeconfig)
            api_client = create_api_client([], embedded_settings)
        except BaseException:
            kube.stop()
            raise
        return KubeConnection(api_client=api_client, master=master, embedded=kube, scheduler_host="127.0.0.1",
                              kubeconfig=kube.kubeconfig)

    def __repr__(self) -> str:
        return "EmbeddedClusterManager()"


def _embedded_auth(settings: Settings, kubeconfig: str | None) -> Settings:
    """The user's settings, but authenticated by the embedded Kubernetes' own kubeconfig."""
    return replace(settings, authenticate=AuthSettings(kubeconfig=kubeconfig))
