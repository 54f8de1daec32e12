"""The embedded API server through the official ``kubernetes`` client (and raw HTTP where the client
cannot express the request): CRUD, errors as Status objects, PATCH types, deletion, lists, discovery,
authentication and TLS."""

from __future__ import annotations

import json
import os
import stat

import pytest
import urllib3
from api_helpers import pod_manifest
from kubernetes import client
from kubernetes.client.rest import ApiException

pytestmark = pytest.mark.timeout(60)


def raw(kube, method, path, body=None, headers=None, token=True):
    """One HTTP request to the embedded server; returns (status, headers, parsed JSON or text)."""
    http = urllib3.PoolManager(ca_certs=kube.ca_file, cert_reqs="CERT_REQUIRED" if kube.ca_file else "CERT_NONE")
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    if token and kube.token:
        all_headers["Authorization"] = f"Bearer {kube.token}"
    data = body if isinstance(body, (bytes, str)) or body is None else json.dumps(body)
    response = http.request(method, kube.url + path, body=data, headers=all_headers, timeout=10, retries=False)
    http.clear()
    try:
        return response.status, response.headers, json.loads(response.data)
    except ValueError:
        return response.status, response.headers, response.data.decode()


def status_of(error: ApiException) -> dict:
    return json.loads(error.body)


def data(response) -> dict:
    return json.loads(response.data)


def test_create_read_list_delete_pod_with_official_client(core_v1):
    created = core_v1.create_namespaced_pod("default", pod_manifest("web", labels={"app": "web"}))
    assert created.metadata.uid and created.metadata.creation_timestamp and created.metadata.resource_version
    assert created.spec.containers[0].image_pull_policy == "IfNotPresent" and created.status.phase == "Pending"
    read = core_v1.read_namespaced_pod("web", "default")
    assert read.metadata.uid == created.metadata.uid
    listed = data(core_v1.list_namespaced_pod("default", _preload_content=False))
    assert listed["kind"] == "PodList" and listed["apiVersion"] == "v1"
    assert [p["metadata"]["name"] for p in listed["items"]] == ["web"]
    assert int(listed["metadata"]["resourceVersion"]) >= int(created.metadata.resource_version)
    core_v1.delete_namespaced_pod("web", "default")
    assert core_v1.list_namespaced_pod("default").items == []


def test_generate_name(core_v1):
    pod = core_v1.create_namespaced_pod("default", pod_manifest(None))
    assert pod.metadata.name.startswith("gen-") and pod.metadata.generate_name == "gen-"


def test_namespaces_nodes_services_secrets_configmaps_events(core_v1):
    names = [ns.metadata.name for ns in core_v1.list_namespace().items]
    assert "default" in names and "kube-system" in names
    core_v1.create_namespace({"metadata": {"name": "team-a"}})
    svc = core_v1.create_namespaced_service("team-a", {"metadata": {"name": "svc"},
                                                       "spec": {"ports": [{"port": 80}], "selector": {"a": "b"}}})
    assert svc.spec.cluster_ip and svc.spec.ports[0].target_port == 80
    secret = core_v1.create_namespaced_secret("team-a", {"metadata": {"name": "s"}, "stringData": {"k": "v"}})
    assert secret.data == {"k": "dg=="} and secret.type == "Opaque"
    cm = core_v1.create_namespaced_config_map("team-a", {"metadata": {"name": "c"}, "data": {"k": "v"}})
    assert core_v1.read_namespaced_config_map("c", "team-a").data == cm.data
    assert core_v1.list_node().items == []
    event = {"metadata": {"name": "e1"}, "involvedObject": {"kind": "Pod", "name": "x", "namespace": "team-a"},
             "reason": "Test", "message": "hello", "type": "Normal"}
    core_v1.create_namespaced_event("team-a", event)
    assert [e.reason for e in core_v1.list_namespaced_event("team-a").items] == ["Test"]


def test_missing_object_is_404_not_found_status(core_v1):
    with pytest.raises(ApiException) as info:
        core_v1.read_namespaced_pod("ghost", "default")
    status = status_of(info.value)
    assert info.value.status == 404 and status["kind"] == "Status" and status["reason"] == "NotFound"
    assert status["details"] == {"name": "ghost", "kind": "pods"}


def test_duplicate_is_409_already_exists(core_v1):
    core_v1.create_namespaced_pod("default", pod_manifest("dup"))
    with pytest.raises(ApiException) as info:
        core_v1.create_namespaced_pod("default", pod_manifest("dup"))
    assert info.value.status == 409 and status_of(info.value)["reason"] == "AlreadyExists"


def test_invalid_pod_is_422_invalid_with_causes(core_v1):
    pod = pod_manifest("Bad_Name")
    pod["spec"]["containers"][0]["resources"] = {"limits": {"cpu": "fast"}}
    with pytest.raises(ApiException) as info:
        core_v1.create_namespaced_pod("default", pod)
    status = status_of(info.value)
    assert info.value.status == 422 and status["reason"] == "Invalid"
    fields = {c["field"] for c in status["details"]["causes"]}
    assert {"metadata.name", "spec.containers[0].resources.limits[cpu]"} <= fields


def test_pod_without_containers_is_422(core_v1):
    with pytest.raises(ApiException) as info:
        core_v1.create_namespaced_pod("default", {"metadata": {"name": "empty"}, "spec": {"containers": []}})
    assert info.value.status == 422 and "spec.containers: Required value" in status_of(info.value)["message"]


def test_put_with_stale_resource_version_is_409_conflict(core_v1):
    old = core_v1.create_namespaced_config_map("default", {"metadata": {"name": "c"}, "data": {"v": "1"}})
    fresh = core_v1.read_namespaced_config_map("c", "default")
    fresh.data = {"v": "2"}
    core_v1.replace_namespaced_config_map("c", "default", fresh)
    old.data = {"v": "3"}
    with pytest.raises(ApiException) as info:
        core_v1.replace_namespaced_config_map("c", "default", old)
    assert info.value.status == 409 and status_of(info.value)["reason"] == "Conflict"


def test_malformed_body_is_400(kube):
    code, _, body = raw(kube, "POST", "/api/v1/namespaces/default/pods", b"{not json")
    assert code == 400 and body["reason"] == "BadRequest"


def test_wrong_kind_in_body_is_400(kube):
    code, _, body = raw(kube, "POST", "/api/v1/namespaces/default/configmaps", pod_manifest("p"))
    assert code == 400 and "kind" in body["message"]


def test_unsupported_patch_type_is_415(kube, core_v1):
    core_v1.create_namespaced_pod("default", pod_manifest("p"))
    code, _, body = raw(kube, "PATCH", "/api/v1/namespaces/default/pods/p", {"metadata": {}},
                        headers={"Content-Type": "text/plain"})
    assert code == 415 and body["reason"] == "UnsupportedMediaType"


def test_a_body_in_a_media_type_the_server_cannot_decode_is_415_and_nothing_is_created(kube, core_v1):
    code, _, body = raw(kube, "POST", "/api/v1/namespaces/default/configmaps", b"\x00\x01",
                        headers={"Content-Type": "application/x-msgpack"})
    assert code == 415 and body["reason"] == "UnsupportedMediaType" and "application/json" in body["message"]
    assert core_v1.list_namespaced_config_map("default").items == []


def test_a_yaml_body_is_accepted_as_kubectl_and_curl_users_send_it(kube, core_v1):
    manifest = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: from-yaml\ndata:\n  answer: '42'\n"
    code, _, body = raw(kube, "POST", "/api/v1/namespaces/default/configmaps", manifest,
                        headers={"Content-Type": "application/yaml"})
    assert code == 201, body
    assert core_v1.read_namespaced_config_map("from-yaml", "default").data == {"answer": "42"}


def test_unknown_path_is_404(kube):
    code, _, body = raw(kube, "GET", "/api/v1/widgets")
    assert code == 404 and body["kind"] == "Status"


@pytest.mark.parametrize("content_type, patch, expected_labels", [
    ("application/merge-patch+json", {"metadata": {"labels": {"a": None, "b": "2"}}}, {"b": "2"}),
    ("application/strategic-merge-patch+json", {"metadata": {"labels": {"b": "2"}}}, {"a": "1", "b": "2"}),
    ("application/json-patch+json", [{"op": "replace", "path": "/metadata/labels/a", "value": "9"}], {"a": "9"}),
])
def test_patch_content_types(kube, core_v1, content_type, patch, expected_labels):
    core_v1.create_namespaced_pod("default", pod_manifest("p", labels={"a": "1"}))
    code, _, body = raw(kube, "PATCH", "/api/v1/namespaces/default/pods/p", patch,
                        headers={"Content-Type": content_type})
    assert code == 200 and body["metadata"]["labels"] == expected_labels


def test_strategic_merge_of_containers_by_name_via_official_client(core_v1):
    core_v1.create_namespaced_pod("default", pod_manifest("p"))
    patched = core_v1.patch_namespaced_pod("p", "default", {"spec": {"containers": [{"name": "main",
                                                                                      "image": "busybox:1.37"}]}})
    assert [(c.name, c.image) for c in patched.spec.containers] == [("main", "busybox:1.37")]


def test_patch_of_pod_spec_fields_that_are_immutable_is_422(core_v1):
    core_v1.create_namespaced_pod("default", pod_manifest("p"))
    with pytest.raises(ApiException) as info:
        core_v1.patch_namespaced_pod("p", "default", {"spec": {"restartPolicy": "Never"}})
    assert info.value.status == 422


def test_status_subresource_changes_only_status(core_v1):
    core_v1.create_namespaced_pod("default", pod_manifest("p"))
    patched = core_v1.patch_namespaced_pod_status("p", "default", {"status": {"phase": "Running"},
                                                                   "metadata": {"labels": {"x": "y"}}})
    assert patched.status.phase == "Running" and not patched.metadata.labels
    assert core_v1.read_namespaced_pod_status("p", "default").status.phase == "Running"
    patched = core_v1.patch_namespaced_pod("p", "default", {"status": {"phase": "Failed"}})
    assert patched.status.phase == "Running"


def test_delete_running_pod_gracefully_then_finalize(kube, core_v1):
    core_v1.create_namespaced_pod("default", pod_manifest("p"))
    kube.store.mutate("pods", "default", "p", lambda p: p["spec"].__setitem__("nodeName", "n1"))
    deleted = data(core_v1.delete_namespaced_pod("p", "default", grace_period_seconds=7, _preload_content=False))
    assert deleted["metadata"]["deletionGracePeriodSeconds"] == 7 and deleted["metadata"]["deletionTimestamp"]
    assert core_v1.read_namespaced_pod("p", "default").metadata.deletion_timestamp
    kube.store.finalize_deletion("pods", "default", "p")
    assert core_v1.list_namespaced_pod("default").items == []


def test_delete_with_grace_zero_removes_a_running_pod_at_once(kube, core_v1):
    core_v1.create_namespaced_pod("default", pod_manifest("p"))
    kube.store.mutate("pods", "default", "p", lambda p: p["spec"].__setitem__("nodeName", "n1"))
    core_v1.delete_namespaced_pod("p", "default", grace_period_seconds=0)
    assert core_v1.list_namespaced_pod("default").items == []


def test_delete_of_configmap_returns_success_status(core_v1):
    core_v1.create_namespaced_config_map("default", {"metadata": {"name": "c"}})
    status = core_v1.delete_namespaced_config_map("c", "default")
    assert status["status"] == "Success" and status["details"]["name"] == "c"


def test_finalizers_via_api(core_v1):
    core_v1.create_namespaced_config_map("default", {"metadata": {"name": "c", "finalizers": ["x.io/hold"]}})
    core_v1.delete_namespaced_config_map("c", "default")
    assert core_v1.read_namespaced_config_map("c", "default").metadata.deletion_timestamp
    core_v1.patch_namespaced_config_map("c", "default", {"metadata": {"finalizers": None}})
    with pytest.raises(ApiException) as info:
        core_v1.read_namespaced_config_map("c", "default")
    assert info.value.status == 404


def test_deletecollection_with_label_selector(core_v1):
    for i, group in enumerate(["a", "a", "b"]):
        core_v1.create_namespaced_pod("default", pod_manifest(f"p{i}", labels={"g": group}))
    core_v1.delete_collection_namespaced_pod("default", label_selector="g=a")
    assert [p.metadata.name for p in core_v1.list_namespaced_pod("default").items] == ["p2"]


def test_owner_reference_background_garbage_collection(core_v1):
    owner = core_v1.create_namespaced_config_map("default", {"metadata": {"name": "owner"}})
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}
    core_v1.create_namespaced_pod("default", {**pod_manifest("dep"),
                                              "metadata": {"name": "dep", "ownerReferences": [ref]}})
    core_v1.delete_namespaced_config_map("owner", "default", propagation_policy="Background")
    assert core_v1.list_namespaced_pod("default").items == []


def test_owner_reference_orphan_keeps_dependents(core_v1):
    owner = core_v1.create_namespaced_config_map("default", {"metadata": {"name": "owner"}})
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}
    core_v1.create_namespaced_pod("default", {**pod_manifest("dep"),
                                              "metadata": {"name": "dep", "ownerReferences": [ref]}})
    core_v1.delete_namespaced_config_map("owner", "default", propagation_policy="Orphan")
    assert core_v1.read_namespaced_pod("dep", "default").metadata.owner_references is None


@pytest.mark.parametrize("selector, expected", [
    ("app=a", ["a1", "a2"]), ("app!=a", ["b1"]), ("app in (a,b),tier", ["a2"]), ("app notin (a)", ["b1"]),
    ("!tier", ["a1", "b1"]),
])
def test_list_with_label_selectors(core_v1, selector, expected):
    core_v1.create_namespaced_pod("default", pod_manifest("a1", labels={"app": "a"}))
    core_v1.create_namespaced_pod("default", pod_manifest("a2", labels={"app": "a", "tier": "x"}))
    core_v1.create_namespaced_pod("default", pod_manifest("b1", labels={"app": "b"}))
    assert [p.metadata.name for p in core_v1.list_namespaced_pod("default", label_selector=selector).items] == expected


def test_list_with_field_selectors(kube, core_v1):
    for name in ("p1", "p2", "p3"):
        core_v1.create_namespaced_pod("default", pod_manifest(name))
    kube.store.mutate("pods", "default", "p2", lambda p: p["spec"].__setitem__("nodeName", "n1"))
    kube.store.mutate("pods", "default", "p3", lambda p: p["status"].__setitem__("phase", "Failed"), status_only=True)

    def names(selector):
        return [p.metadata.name for p in core_v1.list_pod_for_all_namespaces(field_selector=selector).items]

    assert names("spec.nodeName=n1") == ["p2"]
    assert names("status.phase!=Failed,metadata.namespace==default") == ["p1", "p2"]
    assert names("metadata.name=p3") == ["p3"]
    with pytest.raises(ApiException) as info:
        names("spec.bogus=1")
    assert info.value.status == 400


def test_list_pagination_with_limit_and_continue(core_v1):
    for i in range(7):
        core_v1.create_namespaced_config_map("default", {"metadata": {"name": f"c{i}"}})
    names, token, pages = [], None, 0
    while True:
        page = core_v1.list_namespaced_config_map("default", limit=3, _continue=token)
        names += [c.metadata.name for c in page.items]
        pages += 1
        token = page.metadata._continue
        if not token:
            break
    assert names == [f"c{i}" for i in range(7)] and pages == 3


def test_discovery_endpoints(api_client, kube):
    assert client.VersionApi(api_client).get_code().minor == "32"
    assert client.CoreApi(api_client).get_api_versions().versions == ["v1"]
    resources = {r.name: r for r in client.CoreV1Api(api_client).get_api_resources().resources}
    assert resources["pods"].namespaced and not resources["nodes"].namespaced
    assert {"pods/status", "pods/log"} <= set(resources)
    assert "watch" in resources["pods"].verbs
    code, _, groups = raw(kube, "GET", "/apis")
    assert code == 200 and groups["kind"] == "APIGroupList"


def test_requests_without_a_valid_token_are_401(kube):
    code, _, body = raw(kube, "GET", "/api/v1/pods", token=False)
    assert code == 401 and body["reason"] == "Unauthorized"
    code, _, body = raw(kube, "GET", "/api/v1/pods", token=False, headers={"Authorization": "Bearer wrong"})
    assert code == 401


def test_authenticated_answers_carry_the_flow_control_headers_of_their_flow(kube):
    """As kube-apiserver's APF filter: clients read them as "this server does its own flow control"."""
    from dask_k8s_backend.embedded.api.rest.flow_control import FLOW_SCHEMA_HEADER, PRIORITY_LEVEL_HEADER

    code, headers, _ = raw(kube, "GET", "/api/v1/pods")
    missing, missing_headers, _ = raw(kube, "GET", "/api/v1/namespaces/default/pods/none")
    _, probe_headers, _ = raw(kube, "GET", "/healthz", token=False)
    assert code == 200 and missing == 404
    schemas = {headers[FLOW_SCHEMA_HEADER], missing_headers[FLOW_SCHEMA_HEADER], probe_headers[FLOW_SCHEMA_HEADER]}
    assert len(schemas) == 1 and headers[PRIORITY_LEVEL_HEADER] not in schemas  # admin and probes: exempt
    _, refused_headers, _ = raw(kube, "GET", "/api/v1/pods", token=False)
    assert FLOW_SCHEMA_HEADER not in refused_headers  # 401 comes before classification, as upstream


def test_restricted_users_fall_to_the_global_default_flow():
    from dask_k8s_backend.embedded.api.rest.flow_control import flow_of
    from dask_k8s_backend.embedded.api.authz import ADMIN, Identity, PolicyRule

    viewer = Identity("viewer", rules=(PolicyRule.from_dict({"verbs": ["get"], "resources": ["pods"]}),))
    assert flow_of(ADMIN, "/api/v1/pods") == "exempt" and flow_of(viewer, "/livez") == "exempt"
    assert flow_of(viewer, "/api/v1/pods") == "global-default"


def test_kubeconfig_is_private_and_token_is_not_in_repr(kube):
    mode = stat.S_IMODE(os.stat(kube.kubeconfig).st_mode)
    assert mode == 0o600
    assert kube.token in open(kube.kubeconfig).read()
    assert kube.token not in repr(kube) and kube.token not in repr(kube.apiserver)
    assert kube.url.startswith("https://127.0.0.1:")


def test_plain_http_without_tls_needs_no_token(make_kube):
    kube = make_kube(tls=False)
    assert kube.url.startswith("http://") and kube.token is None
    code, _, body = raw(kube, "GET", "/api/v1/namespaces")
    assert code == 200 and body["kind"] == "NamespaceList"


def test_stop_is_idempotent_and_async_context_manager_works(make_kube):
    import asyncio

    from dask_k8s_backend.embedded.cluster import EmbeddedKubernetes

    kube = make_kube()
    kube.stop()
    kube.stop()

    async def use() -> str:
        async with EmbeddedKubernetes(kubelet=None) as k:
            return k.url

    assert asyncio.run(use()).startswith("https://")
