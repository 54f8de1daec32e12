"""TLS in cluster deploy mode: the scheduler pod listens on tls:// with the app's own certificates.

End to end on the embedded Kubernetes (process kubelet): the Secret is created before the scheduler
pod and owned by it, the workers the in-pod backend creates use TLS too, a client without the
app's certificates is refused, ``from_name`` reconnects by reading the Secret, and close leaves
nothing behind.
"""

from __future__ import annotations

import base64
import json
import logging

import pytest
from distributed import Client

from dask_k8s_backend import KubeSparkCluster, labels
from dask_k8s_backend.cluster.tls_secret import secret_name

from k8s_helpers import app_pods

from .conftest import cluster_kwargs

pytestmark = pytest.mark.timeout(300)


def app_secrets(core_api, app_id: str) -> list[dict]:
    """The app's Secrets (by app-id label), as plain dicts."""
    response = core_api.list_namespaced_secret("default", label_selector=f"{labels.APP_ID}={app_id}",
                                               _preload_content=False)
    return json.loads(response.data)["items"]


def scheduler_pod(core_api, app_id: str) -> dict:
    [pod] = [p for p in app_pods(core_api, app_id) if p["metadata"]["labels"][labels.ROLE] == labels.ROLE_SCHEDULER]
    return pod


def key_lines(secret: dict) -> list[str]:
    """Lines of the Secret's private key, each long enough to be unmistakable in a log."""
    key = base64.b64decode(secret["data"]["tls.key"]).decode()
    return [line for line in key.splitlines() if len(line) > 20 and not line.startswith("-----")]


def test_tls_cluster_mode_create_compute_refuse_plain_reconnect_close(kube, core_api, caplog):
    caplog.set_level(logging.DEBUG)
    shown: list[str] = []
    kwargs = cluster_kwargs(kube)
    cluster = KubeSparkCluster(name="cm-tls", deploy_mode="cluster", shutdown_on_close=False,
                               security={"tls": True}, **kwargs)
    app_id = cluster.app.app_id
    try:
        cluster.scale(1)
        assert cluster.scheduler_address.startswith("tls://")
        with Client(cluster) as client:
            client.wait_for_workers(1, timeout=120)
            assert all(address.startswith("tls://") for address in client.scheduler_info()["workers"])
            assert client.submit(sum, [1, 2, 3]).result(timeout=60) == 6
        plain = cluster.scheduler_address.replace("tls://", "tcp://")
        with pytest.raises((OSError, TimeoutError)):
            Client(plain, timeout=3)  # no certificates: the TLS-only scheduler does not talk to it
        [secret] = app_secrets(core_api, app_id)
        assert secret["metadata"]["name"] == secret_name(cluster.app)
        pod = scheduler_pod(core_api, app_id)
        assert secret["metadata"]["ownerReferences"][0]["uid"] == pod["metadata"]["uid"]
        shown += [repr(cluster), repr(cluster.security), repr(cluster.settings),
                  core_api.read_namespaced_pod_log(pod["metadata"]["name"], "default")]
    finally:
        cluster.close()  # disconnects only: shutdown_on_close=False

    assert len(app_pods(core_api, app_id)) == 2 and len(app_secrets(core_api, app_id)) == 1

    again = KubeSparkCluster.from_name("cm-tls", **kwargs)  # TLS found from the pod, certificates from the Secret
    try:
        assert again.app.app_id == app_id and again.scheduler_address.startswith("tls://")
        with Client(again) as client:
            assert len(client.scheduler_info()["workers"]) == 1
            assert client.submit(lambda x: x * 2, 21).result(timeout=60) == 42
        shown += [repr(again), repr(again.security)]
    finally:
        again.close()
    assert app_pods(core_api, app_id) == [] and app_secrets(core_api, app_id) == []
    text = "\n".join(shown + [caplog.text])
    assert all(line not in text for line in key_lines(secret) + list(secret["data"].values()))
