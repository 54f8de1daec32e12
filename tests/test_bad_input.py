"""The bad-input table of docs/reliability.md, one test per row.

Each bad input must give ONE error naming what is wrong and how to fix it, raised before any pod
is created, and leave nothing behind: after every test the embedded API server is asked (through
the official client) for pods and secrets carrying our app-id label, in every namespace.
"""

from __future__ import annotations

import socket
import warnings

import pytest

from dask_k8s_backend import KubeSparkCluster, labels
from dask_k8s_backend.kube.errors import ApiUnreachable, Unauthorized
from dask_k8s_backend.cluster.preflight import MissingPermissionsError, NamespaceNotFoundError

VIEWER_RULES = [{"verbs": ["get", "list", "watch"], "resources": ["pods"]}]


@pytest.fixture(scope="module")
def kube():
    from dask_k8s_backend.embedded.cluster import EmbeddedKubernetes

    with EmbeddedKubernetes(kubelet="simulated", nodes=1, users={"viewer": VIEWER_RULES}) as k:
        yield k


@pytest.fixture(scope="module")
def core_api(kube):
    from kubernetes import client, config

    api_client = config.new_client_from_config(config_file=kube.kubeconfig)
    yield client.CoreV1Api(api_client)
    api_client.close()


@pytest.fixture(autouse=True)
def nothing_left_behind(core_api):
    """Checked through the API after every row: no pod and no secret of any app exists."""
    yield
    for list_all in (core_api.list_pod_for_all_namespaces, core_api.list_secret_for_all_namespaces):
        assert list_all(label_selector=labels.APP_ID).items == []


def kwargs(kube, **extra):
    base = dict(master=f"k8s://{kube.url}", quiet=True, authenticate={"kubeconfig": kube.kubeconfig},
                api={"max-retries": 0, "connection-timeout": "2s"})
    for key, value in extra.items():
        base[key] = {**base[key], **value} if isinstance(base.get(key), dict) else value
    return base


# ---------------------------------------------------------------------------- master URL
@pytest.mark.parametrize("master, problem", [
    ("k8s:/x", "k8s:/x"), ("yarn://x", "yarn://x"), ("k8s://https://", "k8s://https://"),
])
def test_bad_master_url_is_quoted_with_the_accepted_forms(master, problem):
    with pytest.raises(ValueError) as info:
        KubeSparkCluster(master=master, quiet=True)
    assert problem in str(info.value) and "k8s://https://host:port" in str(info.value)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_api_server_names_the_server_and_what_to_check(kube):
    url = f"https://127.0.0.1:{_closed_port()}"
    with pytest.raises(ApiUnreachable, match="Could not reach the API server") as info:
        KubeSparkCluster(**kwargs(kube, master=f"k8s://{url}", authenticate={"kubeconfig": None,
                                                                            "oauth-token": kube.token}))
    assert url in str(info.value) and "master URL" in str(info.value)
    assert kube.token not in str(info.value)


def test_wrong_ca_says_to_set_the_ca_cert_file(kube, tmp_path):
    from dask_k8s_backend.cluster.tls_secret import generate_tls_material

    other_ca = tmp_path / "other-ca.crt"
    other_ca.write_text(generate_tls_material("elsewhere").ca_cert)
    with pytest.raises(ApiUnreachable, match="TLS verification") as info:
        KubeSparkCluster(**kwargs(kube, authenticate={"kubeconfig": None, "oauth-token": kube.token,
                                                      "ca-cert-file": str(other_ca)}))
    assert "ca-cert-file" in str(info.value) and kube.token not in str(info.value)


def test_explicit_master_takes_credentials_from_the_named_kubeconfig(kube):
    with KubeSparkCluster(**kwargs(kube)) as cluster:  # k8s://URL + authenticate.kubeconfig: no TLS error
        assert not cluster.refresh_status().executors


def test_401_says_to_check_the_token(kube):
    with pytest.raises(Unauthorized, match="oauth-token") as info:
        KubeSparkCluster(**kwargs(kube, authenticate={"kubeconfig": None, "oauth-token": "not-the-token",
                                                      "ca-cert-file": kube.ca_file}))
    assert "not-the-token" not in str(info.value) and kube.token not in str(info.value)


def test_403_names_verb_resource_and_namespace_and_the_role_to_grant(kube):
    with pytest.raises(MissingPermissionsError) as info:
        KubeSparkCluster(**kwargs(kube, authenticate={"kubeconfig": kube.kubeconfig_for("viewer")}))
    message = str(info.value)
    assert "create" in message and "pods" in message and "default" in message
    assert "kind: Role" in message or "Role" in message


def test_missing_namespace_is_named(kube):
    with pytest.raises(NamespaceNotFoundError, match="no-such-namespace"):
        KubeSparkCluster(**kwargs(kube, namespace="no-such-namespace"))


# ---------------------------------------------------------------------------- worker settings
@pytest.mark.parametrize("extra, key", [
    (dict(worker_memory="lots"), "k8s-backend.worker.memory"),
    (dict(worker_memory="-1Gi"), "k8s-backend.worker.memory"),
    (dict(worker_cores=0), "k8s-backend.worker.cores"),
    (dict(worker_cores="two"), "k8s-backend.worker.cores"),
])
def test_invalid_worker_memory_or_cores_names_the_key_and_an_example(kube, extra, key):
    with pytest.raises(ValueError, match=key) as info:
        KubeSparkCluster(**kwargs(kube, **extra))
    assert "such as" in str(info.value) or "greater than zero" in str(info.value)


@pytest.mark.parametrize("n", [-1, 2.5, "3", True])
def test_negative_or_non_integer_worker_count_is_refused_before_start(kube, n):
    with pytest.raises(ValueError, match="whole number of workers"):
        KubeSparkCluster(**kwargs(kube, n_workers=n))


@pytest.fixture(scope="module")
def running(kube):
    with KubeSparkCluster(**kwargs(kube)) as cluster:
        yield cluster


@pytest.mark.parametrize("n", [-1, 2.5, "3"])
def test_negative_or_non_integer_scale_is_refused_and_creates_nothing(running, n):
    with pytest.raises(ValueError, match=r"scale\(n\).*whole number"):
        running.scale(n)
    assert running.refresh_status().targets.get("default", 0) == 0


def test_adapt_minimum_above_maximum_is_refused(running):
    with pytest.raises(ValueError, match=r"minimum=5, maximum=2.*minimum <= maximum"):
        running.adapt(minimum=5, maximum=2)


# ---------------------------------------------------------------------------- pod templates
def test_missing_pod_template_file_is_named(kube, tmp_path):
    with pytest.raises(ValueError, match="pod-template.*does not exist"):
        KubeSparkCluster(**kwargs(kube, pod_template=str(tmp_path / "missing.yaml")))


def test_pod_template_with_invalid_yaml_is_refused(kube, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("spec: [containers: {\n")
    with pytest.raises(ValueError, match="pod-template"):
        KubeSparkCluster(**kwargs(kube, pod_template=str(path)))


@pytest.mark.parametrize("template, problem", [
    ({"kind": "Deployment", "spec": {}}, "kind 'Deployment'"),
    ({"spec": {"containers": []}}, "container"),
    ({"spec": {}}, "container"),
])
def test_pod_template_problems_are_named(kube, template, problem):
    with pytest.raises(ValueError, match=problem):
        KubeSparkCluster(**kwargs(kube, pod_template=template))


def test_pod_template_container_name_not_found_lists_the_containers(kube):
    template = {"spec": {"containers": [{"name": "main"}, {"name": "sidecar"}]}}
    with pytest.raises(ValueError, match="main") as info:
        KubeSparkCluster(**kwargs(kube, pod_template=template, worker={"pod-template-container-name": "worker"}))
    assert "worker" in str(info.value)


# ---------------------------------------------------------------------------- credentials / keys
def test_both_oauth_token_and_token_file_is_refused_without_showing_the_token(kube, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("file-secret-value")
    with pytest.raises(ValueError, match="oauth-token and .*oauth-token-file are both set") as info:
        KubeSparkCluster(**kwargs(kube, authenticate={"oauth-token": "inline-secret-value",
                                                      "oauth-token-file": str(token_file)}))
    assert "secret-value" not in str(info.value)


def test_unknown_config_key_warns_with_the_closest_valid_key(kube):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ValueError, match="yarn://"):  # the warning comes first, from validation
            KubeSparkCluster(master="yarn://x", quiet=True, worker={"memroy": "2GiB"})
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert any("k8s-backend.worker.memroy" in m and "did you mean 'k8s-backend.worker.memory'" in m for m in messages)
