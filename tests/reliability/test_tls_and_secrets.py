"""Dask comm TLS on the embedded Kubernetes, and no secret in logs, reprs, errors or the widget."""

from __future__ import annotations

import logging

import pytest
from distributed import Client

from dask_k8s_backend import KubeSparkCluster, labels
from dask_k8s_backend.cluster.tls_secret import generate_tls_material, scheduler_security
from dask_k8s_backend.pods.tls_env import secret_name

from .scenarios import app_pods, cluster_kwargs

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(120)]


def _secrets(kube, app_id):
    items, _, _ = kube.store.list("secrets", "default", label_selector=f"{labels.APP_ID}={app_id}")
    return items


def test_tls_cluster_computes_over_tls_and_refuses_plain_clients(kube):
    with KubeSparkCluster(**cluster_kwargs(kube, n_workers=2, security={"tls": True})) as cluster, \
            Client(cluster) as client:
        client.wait_for_workers(2, timeout=60)
        assert cluster.scheduler_address.startswith("tls://")
        assert all(address.startswith("tls://") for address in client.scheduler_info()["workers"])
        assert client.submit(sum, [1, 2, 3]).result(timeout=30) == 6
        assert [s["metadata"]["name"] for s in _secrets(kube, cluster.app.app_id)] == [secret_name(cluster.app)]
        intruder = scheduler_security(generate_tls_material("intruder"))  # valid TLS, another app's CA
        with pytest.raises((OSError, TimeoutError)):
            Client(cluster.scheduler_address, security=intruder, timeout=3)
        app_id = cluster.app.app_id
    assert _secrets(kube, app_id) == [] and app_pods(kube, app_id) == []


def test_token_and_tls_key_never_appear_in_logs_reprs_or_the_widget(kube, caplog):
    caplog.set_level(logging.DEBUG)
    shown: list[str] = []
    with KubeSparkCluster(**cluster_kwargs(kube, n_workers=1, security={"tls": True})) as cluster, \
            Client(cluster) as client:
        client.wait_for_workers(1, timeout=60)
        client.submit(sum, [1, 2]).result(timeout=30)
        key_pem = _secrets(kube, cluster.app.app_id)[0]["data"]  # base64 in the API's form
        stored = kube.store.get("secrets", "default", secret_name(cluster.app))
        executor = cluster.executors()[0]["id"]
        shown += [repr(cluster), str(cluster), cluster._repr_html_(), cluster.status_table, repr(cluster.settings),
                  repr(cluster.security), repr(cluster.connection), repr(kube), cluster.logs(executor)]
        app_id = cluster.app.app_id
    shown += [caplog.text] + [r.getMessage() for r in caplog.records]
    secrets = [kube.token] + list(key_pem.values()) + _pem_bodies(stored)
    text = "\n".join(shown)
    assert all(s and s not in text for s in secrets)
    assert app_pods(kube, app_id) == []


def _pem_bodies(secret: dict) -> list[str]:
    """Lines of the private key (decoded), each long enough to be unmistakable."""
    import base64

    key = base64.b64decode(secret["data"]["tls.key"]).decode()
    return [line for line in key.splitlines() if len(line) > 20 and not line.startswith("-----")]


def test_embedded_api_server_is_local_tls_token_only_with_a_private_kubeconfig(kube):
    import os
    import ssl
    import stat
    import urllib.error
    import urllib.request
    from urllib.parse import urlsplit

    parts = urlsplit(kube.url)
    assert parts.scheme == "https" and parts.hostname == "127.0.0.1"
    assert stat.S_IMODE(os.stat(kube.kubeconfig).st_mode) == 0o600
    assert kube.token not in repr(kube)
    context = ssl.create_default_context(cafile=kube.ca_file)
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"{kube.url}/api/v1/namespaces/default/pods", context=context, timeout=5)
    assert info.value.code == 401
    info.value.close()
