"""Preflight refusals through the real HTTP API, before any pod exists (embedded, or upstream with --k8s-kubeconfig)."""

from __future__ import annotations

import json
import logging
import subprocess
import warnings

import pytest
from distributed import Client
from kubernetes import client, config

from dask_k8s_backend import KubeSparkCluster
from dask_k8s_backend.cluster.preflight import MissingPermissionsError, NamespaceNotFoundError
from dask_k8s_backend.cluster.preflight_access import CLIENT_MODE_PERMISSIONS, OPTIONAL_PERMISSIONS, POD_LOGS

from k8s_helpers import wait_until

from .conftest import cluster_kwargs, user_name, worker_pods

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("permission", CLIENT_MODE_PERMISSIONS, ids=lambda p: f"{p.verb}-{p.full_resource}")
def test_each_missing_permission_is_refused_before_any_pod_exists(kube, core_api, permission):
    before = worker_pods(core_api, kube.namespace)
    with pytest.raises(MissingPermissionsError) as info:
        KubeSparkCluster(n_workers=2, **cluster_kwargs(kube, kube.kubeconfig_for(user_name(permission))))
    assert info.value.missing == (permission,)
    message = str(info.value)
    assert f"  - {permission.describe()}" in message
    assert f'resources: ["{permission.full_resource}"]\n    verbs: ["{permission.verb}"]' in message  # the Role
    assert f"namespace: {kube.namespace}" in message and "nothing was created" in message
    assert worker_pods(core_api, kube.namespace) == before


def test_every_missing_permission_is_listed_in_one_error(kube, core_api):
    with pytest.raises(MissingPermissionsError) as info:
        KubeSparkCluster(n_workers=1, **cluster_kwargs(kube, kube.kubeconfig_for("nothing")))
    assert info.value.missing == CLIENT_MODE_PERMISSIONS  # the required ones only: optional ones never refuse
    listed = [line for line in str(info.value).splitlines() if line.startswith("  - ") and "apiGroups" not in line]
    assert listed == [f"  - {p.describe()}" for p in CLIENT_MODE_PERMISSIONS]
    assert 'resources: ["pods"]\n    verbs: ["create", "list", "watch", "delete", "deletecollection", "patch"]' in str(info.value)
    assert "pods/log" not in str(info.value)
    assert worker_pods(core_api, kube.namespace) == []


def backend_warnings(caplog, recorded) -> list[str]:
    """What the user is shown as a warning: our loggers' warnings and our UserWarnings."""
    logged = [r.getMessage() for r in caplog.records
              if r.name.startswith("dask_k8s_backend") and r.levelno >= logging.WARNING]
    return logged + [str(w.message) for w in recorded if issubclass(w.category, UserWarning)]


@pytest.mark.parametrize("permission", OPTIONAL_PERMISSIONS, ids=lambda p: f"{p.verb}-{p.full_resource}")
def test_a_missing_optional_permission_starts_the_cluster_with_one_warning(kube, core_api, permission, caplog):
    with caplog.at_level(logging.DEBUG), warnings.catch_warnings(record=True) as recorded:
        warnings.simplefilter("always")
        with KubeSparkCluster(n_workers=1, **cluster_kwargs(kube, kube.kubeconfig_for(user_name(permission)))) as cluster:
            cluster.wait_for_workers(1, timeout=60)
            shown = backend_warnings(caplog, recorded)
    assert len(shown) == 1, shown
    assert "lacks 1 optional permission(s)" in shown[0] and f"  - {permission.describe()}" in shown[0]
    assert f'resources: ["{permission.full_resource}"]\n    verbs: ["{permission.verb}"]' in shown[0]  # the Role
    assert cluster.missing_optional_permissions == (permission,)


def test_logs_without_pods_log_permission_say_what_to_ask_for(kube, core_api):
    with KubeSparkCluster(n_workers=1, **cluster_kwargs(kube, kube.kubeconfig_for(user_name(POD_LOGS)))) as cluster:
        cluster.wait_for_workers(1, timeout=60)
        with pytest.raises(MissingPermissionsError) as info:
            cluster.logs(1)
        message = str(info.value)
        assert message.startswith("cluster.logs(1): your credentials may not read pod logs (get pods/log)")
        assert "ask for it in your Role" in message and 'resources: ["pods/log"]' in message
        assert info.value.missing == (POD_LOGS,)
        logs = cluster.get_logs()  # the rest of get_logs still works; the workers' part says what is missing
        assert "may not read pod logs (get pods/log)" in str(logs["workers"])
        assert cluster.status_table  # everything else works


def test_a_forbidden_pod_log_found_only_at_use_is_explained_the_same_way(kube, core_api):
    """Where the preflight could not ask (or a cluster-mode scheduler pod's account lacks it), the 403 at use
    gets the same explanation."""
    with KubeSparkCluster(n_workers=1, **cluster_kwargs(kube, kube.kubeconfig_for(user_name(POD_LOGS)))) as cluster:
        cluster.wait_for_workers(1, timeout=60)
        cluster.missing_optional_permissions = ()  # as if the preflight had not been able to ask
        with pytest.raises(MissingPermissionsError, match=r"^cluster.logs\(1\): your credentials may not read pod logs"):
            cluster.logs(1)


def test_the_role_in_deploy_rbac_yaml_is_enough_to_run_client_mode(kube, core_api):
    """On upstream the identity is deploy/rbac.yaml's own ServiceAccount, applied as shipped: RBAC is real."""
    kwargs = cluster_kwargs(kube, kube.kubeconfig_for("rbac-yaml"))
    with KubeSparkCluster(n_workers=1, **kwargs) as cluster:  # preflight: SelfSubjectAccessReviews, quotas, LimitRanges
        cluster.wait_for_workers(1, timeout=60)  # create, list and watch pods
        assert cluster.missing_optional_permissions == ()  # the Role has the optional ones too
        with Client(cluster) as client:
            assert client.submit(sum, [1, 2, 3]).result(timeout=60) == 6
        cluster.scale(2)
        cluster.wait_for_workers(2, timeout=60)
        cluster.scale(1)  # delete pods
        wait_until(lambda: len(live_worker_pods(core_api, kube.namespace, cluster.app.app_id)) == 1, timeout=60,
                   what="scale(1) to delete a worker pod")
        assert cluster.logs(1) is not None  # pods/log
        app_id = cluster.app.app_id
    assert cluster.pods_left_after_close == 0  # deletecollection
    assert [p for p in worker_pods(core_api, kube.namespace) if p["metadata"]["labels"]["dask-k8s-backend/app-id"] == app_id] == []


def live_worker_pods(core_api, namespace: str, app_id: str) -> list[dict]:
    """The app's worker pods that are not being deleted."""
    return [p for p in worker_pods(core_api, namespace)
            if p["metadata"]["labels"]["dask-k8s-backend/app-id"] == app_id and not p["metadata"].get("deletionTimestamp")]


def test_a_missing_namespace_is_refused_before_any_pod_exists(kube, core_api):
    with pytest.raises(NamespaceNotFoundError, match="namespace 'nowhere'.*kubectl create namespace nowhere"):
        KubeSparkCluster(n_workers=1, **cluster_kwargs(kube, namespace="nowhere"))
    namespaces = {n.metadata.name for n in core_api.list_namespace().items}
    assert "nowhere" not in namespaces



def test_kubectl_auth_can_i_answers_from_the_restricted_users_rules(kube):
    config = kube.kubeconfig_for("no-create-pods")

    def can_i(verb: str, resource: str, *extra: str) -> str:
        done = subprocess.run(["kubectl", "--kubeconfig", config, "auth", "can-i", verb, resource, "-n", kube.namespace,
                               *extra],
                              capture_output=True, text=True, timeout=30)
        return done.stdout.strip()

    assert can_i("create", "pods") == "no"
    assert can_i("watch", "pods") == "yes"
    assert can_i("get", "pods", "--subresource=log") == "yes"
    assert can_i("get", "pods") == "no"  # the restricted rules grant get on pods/log only


def test_kubectl_auth_can_i_list_shows_the_restricted_users_rules_not_everything(kube):
    done = subprocess.run(["kubectl", "--kubeconfig", kube.kubeconfig_for("no-create-pods"), "auth", "can-i", "--list",
                           "-n", kube.namespace], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    verbs: dict[str, set[str]] = {}
    for line in done.stdout.splitlines()[1:]:  # "Resources  Non-Resource URLs  Resource Names  Verbs"
        if line and not line.startswith(" "):
            resource, verb_list = line.split()[0], line[line.rindex("[") + 1:line.rindex("]")]
            verbs.setdefault(resource, set()).update(verb_list.split())
    assert "*.*" not in verbs, done.stdout
    assert verbs["pods"] == {"list", "watch", "delete", "deletecollection", "patch"}  # not create
    assert verbs["pods/log"] == {"get"}
    assert verbs["selfsubjectaccessreviews.authorization.k8s.io"] == {"create"}  # every identity may ask


def test_a_restricted_token_gets_kube_apiservers_403_for_what_its_rules_do_not_grant(kube):
    api_client = config.new_client_from_config(config_file=kube.kubeconfig_for("no-delete-pods"))
    try:
        core = client.CoreV1Api(api_client)
        assert core.list_namespaced_pod(kube.namespace, limit=1).items is not None  # granted
        with pytest.raises(client.ApiException) as info:
            core.delete_namespaced_pod("anything", kube.namespace)
        assert info.value.status == 403
        status = json.loads(info.value.body)
        assert (status["code"], status["reason"], status["details"]) == (403, "Forbidden", {"name": "anything", "kind": "pods"})
        assert status["message"] == (f'pods "anything" is forbidden: User "{kube.user_name("no-delete-pods")}" cannot '
                                     f'delete resource "pods" in API group "" in the namespace "{kube.namespace}"')
        with pytest.raises(client.ApiException) as info:
            core.list_namespaced_pod("kube-system")  # rules are namespaced
        assert info.value.status == 403
    finally:
        api_client.close()


def test_a_denied_subresource_names_the_object_by_its_resource_and_the_subresource_in_the_sentence(kube):
    api_client = config.new_client_from_config(config_file=kube.kubeconfig_for(user_name(POD_LOGS)))
    try:
        with pytest.raises(client.ApiException) as info:
            client.CoreV1Api(api_client).read_namespaced_pod_log("anything", kube.namespace)  # denied before looked up
    finally:
        api_client.close()
    status = json.loads(info.value.body)
    assert (status["code"], status["details"]) == (403, {"name": "anything", "kind": "pods"})
    assert status["message"] == (f'pods "anything" is forbidden: User "{kube.user_name(user_name(POD_LOGS))}" cannot '
                                 f'get resource "pods/log" in API group "" in the namespace "{kube.namespace}"')
