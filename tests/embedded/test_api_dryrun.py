"""``dryRun=All`` on every write of the embedded API server: checked like the real write, never committed.

Driven by the official client (``dry_run="All"``) and by ``kubectl ... --dry-run=server``. Each test
proves that nothing was stored: the object is unchanged (or absent), the store's resourceVersion
did not move, and a watch from before the dry write first sees a later real write.
"""

from __future__ import annotations

import json
import queue
import threading

from urllib.parse import urlencode

import pytest
import urllib3
from api_helpers import pod_manifest
from kubernetes import watch as k8s_watch
from kubernetes.client.exceptions import ApiException

pytestmark = pytest.mark.timeout(60)


def configmap(name: str = "c", **data: str) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": dict(data)}


def error_of(excinfo) -> tuple[int, dict]:
    return excinfo.value.status, json.loads(excinfo.value.body)


def raw(kube, method: str, path: str, query: list[tuple[str, str]], body, content_type: str = "application/json"
        ) -> tuple[int, dict]:
    """One request as bytes on the wire (repeated query parameters, any patch type): (status, parsed body)."""
    http = urllib3.PoolManager(ca_certs=kube.ca_file)
    try:
        response = http.request(method, kube.url + path + "?" + urlencode(query), body=json.dumps(body),
                                headers={"Authorization": f"Bearer {kube.token}", "Content-Type": content_type},
                                timeout=10, retries=False)
        return response.status, json.loads(response.data)
    finally:
        http.clear()


class FirstEvent:
    """The first configmap watch event after ``resource_version``, read in a thread (bounded by the watch's timeout)."""

    def __init__(self, core_v1, resource_version: str) -> None:
        self._events: queue.Queue = queue.Queue()
        self._watch = k8s_watch.Watch()
        self._thread = threading.Thread(target=self._read, args=(core_v1, resource_version), daemon=True)
        self._thread.start()

    def _read(self, core_v1, resource_version: str) -> None:
        try:
            for event in self._watch.stream(core_v1.list_namespaced_config_map, "default",
                                            resource_version=resource_version, timeout_seconds=10):
                self._events.put((event["type"], event["object"].metadata.name))
                return
        except Exception as e:  # surfaces in get()
            self._events.put(("EXCEPTION", repr(e)))
        finally:
            self._watch.stop()

    def get(self) -> tuple[str, str]:
        event = self._events.get(timeout=15)
        self._thread.join(15)
        return event


@pytest.fixture
def nothing_committed(kube, core_v1):
    """``guard = nothing_committed()`` before the dry writes, ``guard()`` after them.

    ``guard()`` asserts the store's resourceVersion did not move, then makes a real write: the
    first event of a watch from the list's resourceVersion taken before the dry writes must be
    that real write, so no dry write produced an event.
    """
    def begin():
        start = core_v1.list_namespaced_config_map("default").metadata.resource_version
        store_rv = kube.store.resource_version
        first = FirstEvent(core_v1, start)

        def check() -> None:
            assert kube.store.resource_version == store_rv, "a dry run moved the resourceVersion"
            core_v1.create_namespaced_config_map("default", configmap("real-write"))
            assert first.get() == ("ADDED", "real-write"), "a dry run produced a watch event"

        return check

    return begin


# ------------------------------------------------------------------ create


def test_dry_run_create_returns_the_defaulted_object_and_stores_nothing(kube, core_v1, nothing_committed):
    guard = nothing_committed()
    created = core_v1.create_namespaced_pod("default", pod_manifest("p"), dry_run="All")
    assert created.metadata.name == "p" and created.metadata.uid and created.metadata.creation_timestamp
    assert not created.metadata.resource_version
    assert created.spec.restart_policy == "Always"  # defaulted as a real creation would be
    assert core_v1.list_namespaced_pod("default").items == []
    core_v1.create_namespaced_config_map("default", configmap("c"), dry_run="All")
    with pytest.raises(ApiException) as excinfo:
        core_v1.read_namespaced_config_map("c", "default")
    assert excinfo.value.status == 404
    guard()


def test_dry_run_create_with_generate_name_returns_a_name_that_is_not_taken(kube, core_v1):
    created = core_v1.create_namespaced_pod("default", pod_manifest(None), dry_run="All")
    assert created.metadata.name.startswith("gen-") and len(created.metadata.name) == len("gen-") + 5
    assert core_v1.list_namespaced_pod("default").items == []


def test_dry_run_create_still_fails_as_the_real_one(kube, core_v1):
    core_v1.create_namespaced_config_map("default", configmap("c"))
    with pytest.raises(ApiException) as excinfo:
        core_v1.create_namespaced_config_map("default", configmap("c"), dry_run="All")
    assert error_of(excinfo)[0] == 409 and error_of(excinfo)[1]["reason"] == "AlreadyExists"
    bad = pod_manifest("Bad_Name")
    with pytest.raises(ApiException) as excinfo:
        core_v1.create_namespaced_pod("default", bad, dry_run="All")
    code, status = error_of(excinfo)
    assert code == 422 and status["reason"] == "Invalid" and "metadata.name" in status["message"]


def test_dry_run_pod_creation_goes_through_quota_admission_without_taking_quota(kube, core_v1):
    core_v1.create_namespaced_resource_quota("default", {"metadata": {"name": "q"}, "spec": {"hard": {"pods": "1"}}})
    core_v1.create_namespaced_pod("default", pod_manifest("dry"), dry_run="All")
    core_v1.create_namespaced_pod("default", pod_manifest("real"))  # the dry run took nothing
    with pytest.raises(ApiException) as excinfo:
        core_v1.create_namespaced_pod("default", pod_manifest("over"), dry_run="All")
    code, status = error_of(excinfo)
    assert code == 403 and "exceeded quota: q" in status["message"]


# ------------------------------------------------------------------ update and patch


def test_dry_run_replace_returns_the_update_and_keeps_the_stored_version(kube, core_v1, nothing_committed):
    stored = core_v1.create_namespaced_config_map("default", configmap("c", a="1"))
    guard = nothing_committed()
    stored.data = {"a": "2"}
    updated = core_v1.replace_namespaced_config_map("c", "default", stored, dry_run="All")
    assert updated.data == {"a": "2"}
    assert updated.metadata.resource_version == stored.metadata.resource_version
    assert core_v1.read_namespaced_config_map("c", "default").data == {"a": "1"}
    guard()


def test_dry_run_replace_reports_conflicts_and_invalid_updates(kube, core_v1):
    stored = core_v1.create_namespaced_config_map("default", configmap("c", a="1"))
    core_v1.patch_namespaced_config_map("c", "default", {"data": {"a": "changed"}})
    stored.data = {"a": "stale"}
    with pytest.raises(ApiException) as excinfo:
        core_v1.replace_namespaced_config_map("c", "default", stored, dry_run="All")
    assert error_of(excinfo)[0] == 409 and error_of(excinfo)[1]["reason"] == "Conflict"
    core_v1.create_namespaced_pod("default", pod_manifest("p"))
    pod = core_v1.read_namespaced_pod("p", "default")
    pod.spec.containers[0].name = "renamed"  # pod spec is immutable
    with pytest.raises(ApiException) as excinfo:
        core_v1.replace_namespaced_pod("p", "default", pod, dry_run="All")
    assert error_of(excinfo)[0] == 422


def test_dry_run_status_replace_and_patch(kube, core_v1, nothing_committed):
    core_v1.create_namespaced_pod("default", pod_manifest("p"))
    guard = nothing_committed()
    pod = core_v1.read_namespaced_pod("p", "default")
    pod.status.phase = "Running"
    assert core_v1.replace_namespaced_pod_status("p", "default", pod, dry_run="All").status.phase == "Running"
    patched = core_v1.patch_namespaced_pod_status("p", "default", {"status": {"phase": "Failed"}}, dry_run="All")
    assert patched.status.phase == "Failed"
    assert core_v1.read_namespaced_pod("p", "default").status.phase == "Pending"
    guard()


@pytest.mark.parametrize("content_type, body", [
    ("application/strategic-merge-patch+json", {"metadata": {"labels": {"x": "1"}}}),
    ("application/merge-patch+json", {"metadata": {"labels": {"x": "1"}}}),
    ("application/json-patch+json", [{"op": "add", "path": "/metadata/labels", "value": {"x": "1"}}]),
])
def test_dry_run_patch_of_every_type(kube, core_v1, nothing_committed, content_type, body):
    core_v1.create_namespaced_config_map("default", configmap("c"))
    guard = nothing_committed()
    code, patched = raw(kube, "PATCH", "/api/v1/namespaces/default/configmaps/c", [("dryRun", "All")], body,
                        content_type)
    assert code == 200 and patched["metadata"]["labels"] == {"x": "1"}
    assert core_v1.read_namespaced_config_map("c", "default").metadata.labels is None
    guard()


def test_dry_run_patch_still_validates(kube, core_v1):
    core_v1.create_namespaced_config_map("default", configmap("c"))
    with pytest.raises(ApiException) as excinfo:
        core_v1.patch_namespaced_config_map("c", "default", {"metadata": {"labels": {"bad key!": "x"}}},
                                            dry_run="All")
    assert error_of(excinfo)[0] == 422


# ------------------------------------------------------------------ delete


def test_dry_run_delete_of_an_unscheduled_pod_returns_it_and_keeps_it(kube, core_v1, nothing_committed):
    core_v1.create_namespaced_pod("default", pod_manifest("p"))
    guard = nothing_committed()
    answer = core_v1.delete_namespaced_pod("p", "default", dry_run="All")
    assert answer.metadata.name == "p" and answer.metadata.deletion_timestamp is None
    assert core_v1.read_namespaced_pod("p", "default").metadata.deletion_timestamp is None
    guard()


def test_dry_run_delete_of_a_running_pod_shows_the_graceful_mark_only(kube, core_v1, nothing_committed):
    core_v1.create_namespaced_pod("default", pod_manifest("p", nodeName="n1"))
    guard = nothing_committed()
    answer = core_v1.delete_namespaced_pod("p", "default", dry_run="All", grace_period_seconds=7)
    assert answer.metadata.deletion_timestamp is not None and answer.metadata.deletion_grace_period_seconds == 7
    assert core_v1.read_namespaced_pod("p", "default").metadata.deletion_timestamp is None
    guard()
    core_v1.delete_namespaced_pod("p", "default", grace_period_seconds=0)  # the dry run left no pending state
    assert core_v1.list_namespaced_pod("default").items == []


def test_dry_run_delete_keeps_dependents_and_namespaces(kube, core_v1, nothing_committed):
    owner = core_v1.create_namespaced_config_map("default", configmap("owner"))
    dependent = configmap("dependent")
    dependent["metadata"]["ownerReferences"] = [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner",
                                                 "uid": owner.metadata.uid}]
    core_v1.create_namespaced_config_map("default", dependent)
    core_v1.create_namespace({"metadata": {"name": "team"}})
    guard = nothing_committed()
    for policy in ("Background", "Foreground", "Orphan"):
        core_v1.delete_namespaced_config_map("owner", "default", dry_run="All", propagation_policy=policy)
    code, answer = raw(kube, "DELETE", "/api/v1/namespaces/team", [("dryRun", "All")], {})
    assert code == 200 and answer["status"]["phase"] == "Terminating" and answer["metadata"]["deletionTimestamp"]
    assert core_v1.read_namespace("team").status.phase == "Active"
    assert core_v1.read_namespaced_config_map("dependent", "default").metadata.owner_references
    guard()


def test_dry_run_delete_collection_keeps_everything(kube, core_v1, nothing_committed):
    for name in ("a", "b"):
        core_v1.create_namespaced_config_map("default", configmap(name))
    guard = nothing_committed()
    core_v1.delete_collection_namespaced_config_map("default", dry_run="All")
    assert sorted(c.metadata.name for c in core_v1.list_namespaced_config_map("default").items) == ["a", "b"]
    guard()


def test_dry_run_delete_of_a_missing_object_is_not_found(kube, core_v1):
    with pytest.raises(ApiException) as excinfo:
        core_v1.delete_namespaced_config_map("missing", "default", dry_run="All")
    assert excinfo.value.status == 404


# ------------------------------------------------------------------ the dryRun parameter


@pytest.mark.parametrize("method, path, options_kind", [
    ("POST", "/api/v1/namespaces/default/configmaps", "CreateOptions"),
    ("PUT", "/api/v1/namespaces/default/configmaps/c", "UpdateOptions"),
    ("PATCH", "/api/v1/namespaces/default/configmaps/c", "PatchOptions"),
    ("DELETE", "/api/v1/namespaces/default/configmaps/c", "DeleteOptions"),
])
def test_any_dry_run_value_but_all_is_invalid_as_in_kube_apiserver(kube, core_v1, method, path, options_kind):
    core_v1.create_namespaced_config_map("default", configmap("c"))
    rv = kube.store.resource_version
    content_type = "application/merge-patch+json" if method == "PATCH" else "application/json"
    code, status = raw(kube, method, path, [("dryRun", "All"), ("dryRun", "Server")], configmap("c", a="1"),
                       content_type)
    assert code == 422 and status["reason"] == "Invalid" and status["details"]["kind"] == options_kind
    assert status["message"] == (f'{options_kind}.meta.k8s.io "" is invalid: dryRun: Unsupported value: '
                                 '[]string{"All", "Server"}: supported values: "All"')
    assert kube.store.resource_version == rv


def test_dry_run_given_twice_as_all_is_a_dry_run(kube, core_v1):
    code, created = raw(kube, "POST", "/api/v1/namespaces/default/configmaps", [("dryRun", "All"), ("dryRun", "All")],
                        configmap("c"))
    assert code == 201 and created["metadata"]["name"] == "c"
    assert core_v1.list_namespaced_config_map("default").items == []


def test_dry_run_in_a_delete_options_body(kube, core_v1):
    core_v1.create_namespaced_config_map("default", configmap("c"))
    core_v1.delete_namespaced_config_map("c", "default", body={"dryRun": ["All"]})
    assert core_v1.read_namespaced_config_map("c", "default").metadata.name == "c"
    with pytest.raises(ApiException) as excinfo:
        core_v1.delete_namespaced_config_map("c", "default", body={"dryRun": ["Everything"]})
    assert excinfo.value.status == 422


# ------------------------------------------------------------------ kubectl --dry-run=server


def ok(result):
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_kubectl_create_apply_delete_with_server_dry_run(kube, kubectl, core_v1):
    rv = kube.store.resource_version
    manifest = json.dumps(configmap("c", a="1"))
    out = json.loads(ok(kubectl("create", "-f", "-", "--dry-run=server", "-o", "json", input=manifest)))
    assert out["metadata"]["uid"] and out["data"] == {"a": "1"}
    assert core_v1.list_namespaced_config_map("default").items == []
    assert kube.store.resource_version == rv
    ok(kubectl("create", "-f", "-", input=manifest))
    manifest = json.dumps(configmap("c", a="2"))
    out = json.loads(ok(kubectl("apply", "-f", "-", "--dry-run=server", "-o", "json", input=manifest)))
    assert out["data"] == {"a": "2"}
    assert core_v1.read_namespaced_config_map("c", "default").data == {"a": "1"}
    assert "(server dry run)" in ok(kubectl("delete", "configmap", "c", "--dry-run=server"))
    assert core_v1.read_namespaced_config_map("c", "default").data == {"a": "1"}


def test_kubectl_server_dry_run_reports_invalid_objects(kubectl, core_v1):
    manifest = json.dumps(pod_manifest("Bad_Name"))
    result = kubectl("create", "-f", "-", "--dry-run=server", input=manifest)
    assert result.returncode != 0 and "is invalid" in result.stderr
    assert core_v1.list_namespaced_pod("default").items == []
