"""Differential conformance: the same requests against the embedded API server and upstream's.

Each test runs on the ``target`` fixture: the embedded server always, the upstream kube-apiserver
when pytest gets ``--k8s-kubeconfig``. The expected answers are upstream's (kubernetes v1.36
source, cited per test), so a difference fails the embedded side and the upstream side checks the
expectation itself. Issue 14 found the first three differences: ``status.qosClass``, pagination
from one snapshot, and the ``sendInitialEvents`` end bookmark.
"""

from __future__ import annotations

import json

import pytest
from api_helpers import pod_manifest
from k8s_helpers import one_server_only_reason

# why the 410 tests cannot force their condition on upstream
NO_ETCD_ACCESS = "forcing a compaction of upstream's etcd needs etcd access the test does not have"

pytestmark = pytest.mark.timeout(60)


def pod_with(name: str, *resources: dict, init: dict | None = None) -> dict:
    """A pod with one container per ``resources`` dict (and one init container when ``init``)."""
    pod = pod_manifest(name)
    pod["spec"]["containers"] = [{"name": f"c{i}", "image": "busybox:1.36", "resources": r}
                                 for i, r in enumerate(resources)]
    if init is not None:
        pod["spec"]["initContainers"] = [{"name": "init", "image": "busybox:1.36", "resources": init}]
    return pod


GUARANTEED = {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "1Gi"}}


# Upstream: pkg/registry/core/pod/strategy.go podStrategy.PrepareForCreate sets status to
# {phase: Pending, qosClass: GetPodQOS(pod)}; pkg/apis/core/helper/qos/qos.go ComputePodQOS.
@pytest.mark.parametrize("containers, init, qos", [
    ([GUARANTEED], None, "Guaranteed"),
    ([{"limits": {"cpu": "500m", "memory": "256Mi"}}], None, "Guaranteed"),  # requests default to limits
    ([GUARANTEED, {"limits": {"cpu": "1", "memory": "1Gi"}}], None, "Guaranteed"),
    ([GUARANTEED], {"requests": {"cpu": "100m"}}, "Burstable"),  # init containers count
    ([{"requests": {"memory": "1Gi"}, "limits": {"memory": "1Gi"}}], None, "Burstable"),  # no cpu limit
    ([{"requests": {"cpu": "500m"}, "limits": {"cpu": "1", "memory": "1Gi"}}], None, "Burstable"),
    ([{}], None, "BestEffort"),
    ([{"requests": {"ephemeral-storage": "1Gi"}}], None, "BestEffort"),  # only cpu and memory count
    ([{"requests": {"cpu": "0", "memory": "0"}}], None, "BestEffort"),  # zero quantities do not count
], ids=["equal", "limits-only", "two-containers", "init-request", "memory-only", "request-below-limit",
        "none", "other-resource", "zero"])
def test_a_created_pod_has_the_qos_class_upstream_computes(target, containers, init, qos):
    created = target.core_v1.create_namespaced_pod(target.namespace, pod_with("q", *containers, init=init))
    assert created.status.qos_class == qos and created.status.phase == "Pending"
    assert target.core_v1.read_namespaced_pod("q", target.namespace).status.qos_class == qos


@pytest.mark.parametrize("pod_resources, container, qos", [
    ({"limits": {"cpu": "1", "memory": "1Gi"}}, {}, "Guaranteed"),  # pod requests default to its limits
    ({"requests": {"cpu": "500m"}}, {}, "Burstable"),
    ({"limits": {"cpu": "1", "memory": "1Gi"}}, {"requests": {"cpu": "500m"}}, "Burstable"),  # containers' requests first
    ({}, GUARANTEED, "BestEffort"),  # pod-level resources replace the containers'
], ids=["limits", "requests-only", "container-request", "empty"])
def test_pod_level_resources_decide_the_qos_class(target, pod_resources, container, qos):
    # Upstream ComputePodQOS with PodLevelResources (beta, on in v1.36) and defaults.go defaultPodRequests.
    pod = pod_with("l", container)
    pod["spec"]["resources"] = pod_resources
    assert target.core_v1.create_namespaced_pod(target.namespace, pod).status.qos_class == qos


def test_a_client_status_on_create_is_dropped_but_for_phase_and_qos(target):
    # Upstream PrepareForCreate replaces the whole status: what a client sends is not stored.
    pod = pod_with("s", {})
    pod["status"] = {"phase": "Running", "podIP": "10.0.0.9", "message": "client-made"}
    status = target.core_v1.create_namespaced_pod(target.namespace, pod).status
    assert (status.phase, status.pod_ip, status.message, status.qos_class) == ("Pending", None, None, "BestEffort")


def test_a_qos_class_sent_on_create_is_kept_even_when_wrong(target):
    # Upstream PrepareForCreate evaluates GetPodQOS(pod) on the pod as sent, before replacing its
    # status: a client's status.qosClass wins over the computed one.
    pod = pod_with("w", {})
    pod["status"] = {"qosClass": "Guaranteed"}
    assert target.core_v1.create_namespaced_pod(target.namespace, pod).status.qos_class == "Guaranteed"


def test_a_status_update_without_qos_class_keeps_it(target):
    # Upstream podStatusStrategy.PrepareForUpdate backfills an empty qosClass from the stored pod.
    target.core_v1.create_namespaced_pod(target.namespace, pod_with("k", GUARANTEED))
    pod = target.api_client.sanitize_for_serialization(target.core_v1.read_namespaced_pod("k", target.namespace))
    pod["metadata"].pop("resourceVersion")  # unconditional: upstream's scheduler may write the status meanwhile
    pod["status"] = {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                                                         "reason": "Unschedulable"}]}
    updated = target.core_v1.replace_namespaced_pod_status("k", target.namespace, pod)
    assert updated.status.qos_class == "Guaranteed"
    patched = target.core_v1.patch_namespaced_pod_status("k", target.namespace, {"status": {"qosClass": None}})
    assert patched.status.qos_class == "Guaranteed"


def test_a_status_update_cannot_change_the_qos_class(target):
    # Upstream ValidatePodStatusUpdate: ValidateImmutableField(status.qosClass) -> 422 Invalid.
    target.core_v1.create_namespaced_pod(target.namespace, pod_with("i", GUARANTEED))
    code, status = target.raw("PATCH", f"/api/v1/namespaces/{target.namespace}/pods/i/status",
                              body={"status": {"qosClass": "BestEffort"}}, content_type="application/merge-patch+json")
    assert code == 422 and status["reason"] == "Invalid"
    assert status["message"] == 'Pod "i" is invalid: status.qosClass: Invalid value: "BestEffort": field is immutable'
    assert status["details"]["causes"] == [{"reason": "FieldValueInvalid", "field": "status.qosClass",
                                            "message": 'Invalid value: "BestEffort": field is immutable'}]


# ------------------------------------------------------------------ pagination


def make_secrets(target, *names: str, labels: dict | None = None) -> None:
    for name in names:
        target.core_v1.create_namespaced_secret(target.namespace, {"metadata": {"name": name, "labels": labels or {}},
                                                                   "stringData": {"v": "1"}})


def list_secrets(target, **query) -> tuple[int, dict]:
    return target.raw("GET", f"/api/v1/namespaces/{target.namespace}/secrets", query={k: str(v) for k, v in query.items()})


def names(body: dict) -> list[str]:
    return [item["metadata"]["name"] for item in body["items"]]


def test_later_pages_are_served_from_the_first_pages_snapshot(target):
    # Upstream: every page of a limit/continue list is read at the resourceVersion in the token
    # (apiserver pkg/storage/interfaces.go ValidateListOptions, continue.go), with
    # remainingItemCount = objects after the page when there is no selector (PrepareContinueToken).
    make_secrets(target, "s-a", "s-b", "s-c", "s-d", "s-e")
    code, first = list_secrets(target, limit=2)
    assert code == 200 and names(first) == ["s-a", "s-b"] and first["metadata"]["remainingItemCount"] == 3
    list_rv = first["metadata"]["resourceVersion"]
    make_secrets(target, "s-bb", "s-z")
    target.core_v1.patch_namespaced_secret("s-c", target.namespace, {"metadata": {"labels": {"changed": "yes"}}})
    target.core_v1.delete_namespaced_secret("s-d", target.namespace)
    code, second = list_secrets(target, limit=2, **{"continue": first["metadata"]["continue"]})
    assert code == 200 and names(second) == ["s-c", "s-d"]
    assert not second["items"][0]["metadata"].get("labels")  # as it was when the first page was served
    assert second["metadata"]["resourceVersion"] == list_rv and second["metadata"]["remainingItemCount"] == 1
    code, third = list_secrets(target, limit=2, **{"continue": second["metadata"]["continue"]})
    assert code == 200 and names(third) == ["s-e"]
    assert set(third["metadata"]) == {"resourceVersion"}  # no continue, no remainingItemCount on the last page
    _, now = list_secrets(target)
    assert names(now) == ["s-a", "s-b", "s-bb", "s-c", "s-e", "s-z"]


def test_a_table_page_keeps_the_lists_metadata(target):
    # Upstream rest/table.go: a Table (kubectl get) carries the list's resourceVersion, continue and remainingItemCount.
    make_secrets(target, "a", "b", "c")
    code, table = target.raw("GET", f"/api/v1/namespaces/{target.namespace}/secrets", query={"limit": "1"},
                             accept="application/json;as=Table;v=v1;g=meta.k8s.io")
    assert code == 200 and table["kind"] == "Table" and [r["object"]["metadata"]["name"] for r in table["rows"]] == ["a"]
    assert set(table["metadata"]) == {"resourceVersion", "continue", "remainingItemCount"}
    assert table["metadata"]["remainingItemCount"] == 2


def test_a_selector_page_has_a_continue_but_no_remaining_count(target):
    # Upstream PrepareContinueToken: remainingItemCount only for an empty predicate; the cacher's
    # GetList gives a token whenever objects follow the page's last one, matching or not.
    make_secrets(target, "a", "b", labels={"keep": "yes"})
    make_secrets(target, "c", labels={"keep": "no"})
    code, first = list_secrets(target, limit=2, labelSelector="keep=yes")
    assert code == 200 and names(first) == ["a", "b"]
    assert first["metadata"].get("continue") and "remainingItemCount" not in first["metadata"]
    code, rest = list_secrets(target, limit=2, labelSelector="keep=yes", **{"continue": first["metadata"]["continue"]})
    assert code == 200 and rest["items"] == [] and "continue" not in rest["metadata"]


def test_a_limited_list_at_a_resource_version_is_that_versions_state(target):
    # Upstream ValidateListOptions (legacy case): limit > 0 with resourceVersion N > 0 lists exactly at N.
    make_secrets(target, "x", "y")
    _, before = list_secrets(target)
    make_secrets(target, "z")
    target.core_v1.delete_namespaced_secret("x", target.namespace)
    code, old = list_secrets(target, limit=10, resourceVersion=before["metadata"]["resourceVersion"])
    assert code == 200 and names(old) == ["x", "y"] and old["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    code, exact = list_secrets(target, resourceVersion=before["metadata"]["resourceVersion"], resourceVersionMatch="Exact")
    assert code == 200 and names(exact) == ["x", "y"]


def test_resource_version_zero_ignores_the_limit(target):
    # Upstream cacher computeListLimit: "the limit is ignored for requests that set RV == 0".
    make_secrets(target, "a", "b", "c")
    code, body = list_secrets(target, limit=1, resourceVersion=0)
    assert code == 200 and names(body) == ["a", "b", "c"] and "continue" not in body["metadata"]


@pytest.mark.parametrize("query, message", [
    ({"continue": "not-a-token"}, "invalid continue token: continue key is not valid"),
    ({"limit": 1, "resourceVersion": "1", "continue": "eyJ2IjoibWV0YS5rOHMuaW8vdjEiLCJydiI6NSwic3RhcnQiOiJhXHUwMDAwIn0"},
     "specifying resource version is not allowed when using continue"),
])
def test_bad_continue_requests_are_400(target, query, message):
    code, status = list_secrets(target, **query)
    assert code == 400 and status["reason"] == "BadRequest" and status["message"].startswith(message)


@pytest.mark.parametrize("query, message", [
    ({"resourceVersion": "abc"},
     'invalid resource version: resourceVersion: Invalid value: "abc": strconv.ParseUint: parsing "abc": invalid syntax'),
    ({"resourceVersion": "-5"},
     'invalid resource version: resourceVersion: Invalid value: "-5": strconv.ParseUint: parsing "-5": invalid syntax'),
    ({"limit": "x"}, 'strconv.ParseInt: parsing "x": invalid syntax'),
])
def test_unparsable_list_options_are_upstreams_400(target, query, message):
    code, status = list_secrets(target, **query)
    assert (code, status["reason"], status["message"]) == (400, "BadRequest", message)


def test_a_negative_limit_lists_everything(target):
    make_secrets(target, "a", "b")
    code, body = list_secrets(target, limit=-1)
    assert code == 200 and names(body) == ["a", "b"] and set(body["metadata"]) == {"resourceVersion"}


@pytest.mark.parametrize("query", [{"resourceVersion": "99999999"}, {"resourceVersion": "99999999", "limit": "1"}])
def test_a_list_at_a_version_the_server_has_not_reached_is_504(target, query):
    # Upstream storage.NewTooLargeResourceVersionError (cacher waitUntilFreshAndBlock; it waits up to 3 s first).
    code, status = list_secrets(target, **query)
    assert code == 504 and status["reason"] == "Timeout"
    assert status["message"].startswith("Timeout: Too large resource version: 99999999, current: ")
    assert status["details"] == {"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
                                 "retryAfterSeconds": 1}


def test_a_continue_token_whose_version_was_compacted_is_410_with_a_token_for_the_rest(target):
    # Upstream etcd3 errors.go handleCompactedErrorForPaging: 410 Expired, the inconsistentContinue
    # message, and metadata.continue with rv -1 (continue at the latest version from the same key).
    if target.name == "upstream":
        pytest.skip(one_server_only_reason("embedded", NO_ETCD_ACCESS))
    make_secrets(target, "a", "b", "c")
    _, first = list_secrets(target, limit=1)
    make_secrets(target, "bb")
    target.kube.store.compact()
    code, status = list_secrets(target, limit=1, **{"continue": first["metadata"]["continue"]})
    assert (code, status["kind"], status["reason"], status["code"]) == (410, "Status", "Expired", 410)
    assert status["message"].startswith("The provided continue parameter is too old to display a consistent list")
    code, rest = list_secrets(target, **{"continue": status["metadata"]["continue"]})
    assert code == 200 and names(rest) == ["b", "bb", "c"]


def test_a_list_at_a_compacted_resource_version_is_410(target):
    if target.name == "upstream":
        pytest.skip(one_server_only_reason("embedded", NO_ETCD_ACCESS))
    _, before = list_secrets(target)
    make_secrets(target, "a")
    target.kube.store.compact()
    code, status = list_secrets(target, limit=5, resourceVersion=before["metadata"]["resourceVersion"])
    assert (code, status["reason"], status["message"]) == (410, "Expired", "The resourceVersion for the provided list is too old.")


def test_list_options_upstream_refuses_are_422_on_list_options(target):
    # Upstream apimachinery internalversion/validation ValidateListOptions, via NewInvalid(ListOptions.meta.k8s.io).
    code, status = list_secrets(target, sendInitialEvents="true")
    assert code == 422 and status["reason"] == "Invalid"
    assert status["message"] == ('ListOptions.meta.k8s.io "" is invalid: sendInitialEvents: Forbidden: '
                                 "sendInitialEvents is forbidden for list")
    assert status["details"] == {"group": "meta.k8s.io", "kind": "ListOptions", "causes": [
        {"reason": "FieldValueForbidden", "message": "Forbidden: sendInitialEvents is forbidden for list",
         "field": "sendInitialEvents"}]}


# ------------------------------------------------------------------ watch: initial events

WATCH_LIST = {"sendInitialEvents": "true", "resourceVersionMatch": "NotOlderThan", "allowWatchBookmarks": "true"}


class Watch:
    """A raw watch on the target's secrets: events one at a time, as a client reads them."""

    def __init__(self, target, query: dict) -> None:
        code, self.response = target.raw("GET", f"/api/v1/namespaces/{target.namespace}/secrets",
                                         query={**query, "watch": "true", "timeoutSeconds": "20"}, stream=True)
        assert code == 200, self.response.read()
        self._chunks = self.response.read_chunked()
        self._buffer = b""

    def next(self) -> dict:
        while b"\n" not in self._buffer:
            self._buffer += next(self._chunks)
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def until(self, predicate) -> list[dict]:
        """Events up to and including the first that satisfies ``predicate``."""
        events = [self.next()]
        while not predicate(events[-1]):
            events.append(self.next())
        return events

    def close(self) -> None:
        self.response.shutdown()  # end the connection; release_conn would drain the stream until its timeout
        self.response.close()


def summary(event: dict) -> tuple[str, str | None, str | None]:
    meta = event["object"]["metadata"]
    return event["type"], meta.get("name"), (meta.get("annotations") or {}).get("k8s.io/initial-events-end")


def is_added(name: str):
    return lambda event: event["type"] == "ADDED" and event["object"]["metadata"].get("name") == name


def test_send_initial_events_ends_with_the_annotated_bookmark_then_streams_changes(target):
    # Upstream cacher: initial events, then the BOOKMARK annotated k8s.io/initial-events-end "true"
    # at the state's resourceVersion (cacher.go setInitialEventsEndBookmarkIfRequested,
    # cache_watcher.go processInterval), then the changes.
    make_secrets(target, "b", "a")
    watch = Watch(target, WATCH_LIST)
    try:
        initial = watch.until(lambda e: e["type"] == "BOOKMARK")
        assert [summary(e) for e in initial] == [("ADDED", "a", None), ("ADDED", "b", None), ("BOOKMARK", None, "true")]
        end_rv = int(initial[-1]["object"]["metadata"]["resourceVersion"])
        assert end_rv >= max(int(e["object"]["metadata"]["resourceVersion"]) for e in initial[:2])
        make_secrets(target, "c")
        later = watch.until(is_added("c"))
        assert [e["type"] for e in later if e["type"] != "BOOKMARK"] == ["ADDED"]
        assert int(later[-1]["object"]["metadata"]["resourceVersion"]) > end_rv
    finally:
        watch.close()


def test_initial_events_without_bookmarks_have_no_end_marker(target):
    # Upstream isListWatchRequest: the end bookmark needs sendInitialEvents and allowWatchBookmarks.
    make_secrets(target, "a")
    watch = Watch(target, {"sendInitialEvents": "true", "resourceVersionMatch": "NotOlderThan"})
    try:
        assert summary(watch.next()) == ("ADDED", "a", None)
        make_secrets(target, "b")
        assert [summary(e) for e in watch.until(is_added("b"))] == [("ADDED", "b", None)]
    finally:
        watch.close()


def test_without_initial_events_a_watch_starts_now(target):
    make_secrets(target, "old")
    watch = Watch(target, {"sendInitialEvents": "false", "resourceVersionMatch": "NotOlderThan",
                           "allowWatchBookmarks": "true"})
    try:
        make_secrets(target, "new")
        events = [e for e in watch.until(is_added("new")) if e["type"] != "BOOKMARK"]
        assert [summary(e) for e in events] == [("ADDED", "new", None)]
    finally:
        watch.close()


def test_a_legacy_watch_with_bookmarks_gets_initial_events_and_the_end_marker(target):
    # Upstream SetListOptionsDefaults (WatchList is on in v1.36): a watch from resourceVersion ""
    # without sendInitialEvents is defaulted to sendInitialEvents=true, resourceVersionMatch=NotOlderThan.
    make_secrets(target, "a")
    watch = Watch(target, {"allowWatchBookmarks": "true"})
    try:
        assert [summary(e) for e in watch.until(lambda e: e["type"] == "BOOKMARK")] == [
            ("ADDED", "a", None), ("BOOKMARK", None, "true")]
    finally:
        watch.close()


@pytest.mark.parametrize("query, cause", [
    ({"sendInitialEvents": "true"},
     ("resourceVersionMatch", "Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan")),
    ({"resourceVersionMatch": "NotOlderThan", "resourceVersion": "5"},
     ("resourceVersionMatch", "Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents is "
                              "provided")),
    ({"sendInitialEvents": "true", "resourceVersionMatch": "Exact"},
     ("resourceVersionMatch", "Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan")),
])
def test_watch_options_upstream_refuses_are_422(target, query, cause):
    # Upstream apimachinery internalversion/validation validateWatchOptions.
    code, status = target.raw("GET", f"/api/v1/namespaces/{target.namespace}/secrets",
                              query={**query, "watch": "true", "timeoutSeconds": "1"})
    assert code == 422 and status["reason"] == "Invalid" and status["details"]["kind"] == "ListOptions"
    assert (cause[0], cause[1]) in [(c["field"], c["message"]) for c in status["details"]["causes"]]
    assert status["message"].startswith('ListOptions.meta.k8s.io "" is invalid: ')


# ------------------------------------------------------------------ Status bodies


def failure(code: int, reason: str, message: str, details: dict) -> dict:
    """A Status as upstream's apierrors builds it (apimachinery pkg/api/errors/errors.go)."""
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "details": details, "code": code}


def test_not_found_is_upstreams_status(target):
    code, body = target.raw("GET", f"/api/v1/namespaces/{target.namespace}/pods/ghost")
    assert (code, body) == (404, failure(404, "NotFound", 'pods "ghost" not found', {"name": "ghost", "kind": "pods"}))


def test_creating_in_a_missing_namespace_is_upstreams_not_found(target):
    code, body = target.raw("POST", "/api/v1/namespaces/no-such-namespace/pods", body=pod_with("p", {}))
    assert (code, body) == (404, failure(404, "NotFound", 'namespaces "no-such-namespace" not found',
                                         {"name": "no-such-namespace", "kind": "namespaces"}))


def test_already_exists_is_upstreams_status(target):
    path = f"/api/v1/namespaces/{target.namespace}/secrets"
    assert target.raw("POST", path, body={"metadata": {"name": "dup"}})[0] == 201
    code, body = target.raw("POST", path, body={"metadata": {"name": "dup"}})
    assert (code, body) == (409, failure(409, "AlreadyExists", 'secrets "dup" already exists',
                                         {"name": "dup", "kind": "secrets"}))


def test_a_stale_update_is_upstreams_conflict(target):
    make_secrets(target, "s")
    path = f"/api/v1/namespaces/{target.namespace}/secrets/s"
    _, current = target.raw("GET", path)
    assert target.raw("PUT", path, body={**current, "data": {"v": "Mg=="}})[0] == 200
    code, body = target.raw("PUT", path, body={**current, "data": {"v": "Mw=="}})
    assert (code, body) == (409, failure(
        409, "Conflict", 'Operation cannot be fulfilled on secrets "s": the object has been modified; please apply '
                         "your changes to the latest version and try again", {"name": "s", "kind": "secrets"}))


def test_an_invalid_pod_is_upstreams_invalid_with_every_cause(target):
    # Upstream NewInvalid: "<Kind> \"<name>\" is invalid: [<field>: <error>, ...]", one typed cause per error.
    pod = pod_manifest("bad")
    pod["spec"]["containers"] = [{"name": "a"}, {"name": "a", "image": "busybox:1.36"}]
    code, body = target.raw("POST", f"/api/v1/namespaces/{target.namespace}/pods", body=pod)
    image = {"reason": "FieldValueRequired", "message": "Required value", "field": "spec.containers[0].image"}
    duplicate = {"reason": "FieldValueDuplicate", "message": 'Duplicate value: "a"', "field": "spec.containers[1].name"}
    assert code == 422 and body["reason"] == "Invalid" and body["kind"] == "Status" and body["code"] == 422
    assert {k: v for k, v in body["details"].items() if k != "causes"} == {"name": "bad", "kind": "Pod"}
    assert image in body["details"]["causes"] and duplicate in body["details"]["causes"]
    assert body["message"].startswith('Pod "bad" is invalid: [') and body["message"].endswith("]")
    assert "spec.containers[0].image: Required value" in body["message"]
    assert 'spec.containers[1].name: Duplicate value: "a"' in body["message"]


def test_a_pods_generation_counts_spec_changes_and_the_start_of_its_deletion(target):
    # Upstream podStrategy.PrepareForCreate (generation 1), updatePodGeneration (spec changes only),
    # rest.BeforeDelete / registry store (the first deletionTimestamp bumps a set generation).
    pods, ns = target.core_v1, target.namespace
    pod = pod_with("g", {})
    pod["metadata"]["generation"] = 7  # a client cannot choose it
    assert pods.create_namespaced_pod(ns, pod).metadata.generation == 1
    assert pods.patch_namespaced_pod("g", ns, {"metadata": {"labels": {"a": "b"}}}).metadata.generation == 1
    patched = pods.patch_namespaced_pod("g", ns, {"spec": {"containers": [{"name": "c0", "image": "busybox:1.37"}]}})
    assert patched.metadata.generation == 2
    assert pods.patch_namespaced_pod("g", ns, {"metadata": {"generation": 9}}).metadata.generation == 2
    pods.patch_namespaced_pod("g", ns, {"metadata": {"finalizers": ["example.com/hold"]}})
    deleting = pods.delete_namespaced_pod("g", ns)
    assert deleting.metadata.deletion_timestamp and deleting.metadata.generation == 3
    assert pods.patch_namespaced_pod("g", ns, {"metadata": {"finalizers": None}}).metadata.generation == 3


@pytest.mark.parametrize("given, added", [
    ([], ["node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"]),
    ([{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"}],
     ["node.kubernetes.io/unreachable"]),
    ([{"operator": "Exists"}], []),  # tolerates every taint
    ([{"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoSchedule"}],
     ["node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"]),
])
def test_a_created_pod_tolerates_not_ready_and_unreachable_nodes_for_300_seconds(target, given, added):
    # Upstream admission plugin DefaultTolerationSeconds (plugin/pkg/admission/defaulttolerationseconds).
    pod = pod_with("t", {})
    pod["spec"]["tolerations"] = given
    created = target.api_client.sanitize_for_serialization(target.core_v1.create_namespaced_pod(target.namespace, pod))
    assert created["spec"].get("tolerations", []) == given + [
        {"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300} for key in added]


@pytest.mark.parametrize("resource, body, status", [
    ("resourcequotas", {"spec": {"hard": {"pods": "5"}}, "status": {"hard": {"pods": "1"}}}, {}),
    ("services", {"spec": {"ports": [{"port": 80}]}, "status": {"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}}},
     {"loadBalancer": {}}),
    ("persistentvolumeclaims", {"spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
                                "status": {"phase": "Bound"}}, {"phase": "Pending"}),
])
def test_a_clients_status_on_create_is_replaced_by_the_starting_status(target, resource, body, status):
    # Upstream PrepareForCreate of the resourcequota, service and persistentvolumeclaim strategies.
    code, created = target.raw("POST", f"/api/v1/namespaces/{target.namespace}/{resource}",
                               body={"metadata": {"name": "x"}, **body})
    assert code == 201 and created["status"] == status


def test_a_namespace_starts_active_whatever_status_it_was_sent_with(target):
    name = f"{target.namespace}-child"
    code, created = target.raw("POST", "/api/v1/namespaces", body={"metadata": {"name": name},
                                                                   "status": {"phase": "Terminating"}})
    try:
        assert code == 201 and created["status"] == {"phase": "Active"}
        assert created["spec"] == {"finalizers": ["kubernetes"]}
    finally:
        target.raw("DELETE", f"/api/v1/namespaces/{name}")


def test_watch_events_through_a_selector_and_a_finalized_deletion(target):
    # Upstream cache_watcher convertToWatchEvent: an object that stops matching is DELETED with its
    # last matching version; registry store Update (ShouldDeleteDuringUpdate): removing the last
    # finalizer of a deleting object deletes it as stored, one DELETED event without a MODIFIED.
    _, listed = list_secrets(target)
    watch = Watch(target, {"resourceVersion": listed["metadata"]["resourceVersion"], "labelSelector": "keep=yes"})
    path = f"/api/v1/namespaces/{target.namespace}/secrets/a"

    def patch(body: dict) -> None:
        assert target.raw("PATCH", path, body=body, content_type="application/merge-patch+json")[0] == 200

    try:
        make_secrets(target, "a", labels={"keep": "yes"})
        patch({"metadata": {"labels": {"keep": "no"}}})
        patch({"metadata": {"labels": {"keep": "yes"}, "finalizers": ["example.com/hold"]}})
        assert target.raw("DELETE", path)[0] == 200
        patch({"metadata": {"finalizers": None}})
        seen = []
        for event in watch.until(lambda e: e["type"] == "DELETED" and e["object"]["metadata"].get("deletionTimestamp")):
            meta = event["object"]["metadata"]
            seen.append((event["type"], meta["labels"]["keep"], bool(meta.get("deletionTimestamp")), meta.get("finalizers")))
        assert seen == [("ADDED", "yes", False, None), ("DELETED", "yes", False, None),
                        ("ADDED", "yes", False, ["example.com/hold"]), ("MODIFIED", "yes", True, ["example.com/hold"]),
                        ("DELETED", "yes", True, ["example.com/hold"])]
    finally:
        watch.close()


@pytest.mark.parametrize("path", ["/api/v1/foos", "/api/v1/namespaces/default/foos",
                                  "/api/v1/namespaces/default/pods/x/bogus", "/api/v2"])
def test_a_path_the_server_does_not_serve_is_upstreams_bare_not_found(target, path):
    code, body = target.raw("GET", path)
    assert (code, body) == (404, failure(404, "NotFound", "the server could not find the requested resource", {}))


def test_a_watch_from_a_compacted_version_ends_with_upstreams_expired_error(target):
    # Upstream watch_cache.go getAllEventsSinceLocked: an ERROR event carrying 410 Expired
    # "too old resource version: <asked> (<oldest it can start from>)".
    if target.name == "upstream":
        pytest.skip(one_server_only_reason("embedded", NO_ETCD_ACCESS))
    _, listed = list_secrets(target)
    make_secrets(target, "a")
    floor = target.kube.store.compact()
    watch = Watch(target, {"resourceVersion": listed["metadata"]["resourceVersion"]})
    try:
        event = watch.next()
    finally:
        watch.close()
    expired = failure(410, "Expired", f"too old resource version: {listed['metadata']['resourceVersion']} ({floor})", {})
    del expired["details"]  # NewResourceExpired has none
    assert event == {"type": "ERROR", "object": expired}


def test_a_list_across_namespaces_is_in_etcd_key_order(target):
    # Upstream lists in key order, "<namespace>/<name>": "ns-b/x" comes before "ns/x" ('-' < '/').
    other = f"{target.namespace}-b"
    target.core_v1.create_namespace({"metadata": {"name": other}})
    try:
        mark = {"order-test": target.namespace}
        make_secrets(target, "x", labels=mark)
        target.core_v1.create_namespaced_secret(other, {"metadata": {"name": "x", "labels": mark}})
        code, body = target.raw("GET", "/api/v1/secrets", query={"labelSelector": f"order-test={target.namespace}",
                                                                 "limit": "1"})
        assert code == 200 and [i["metadata"]["namespace"] for i in body["items"]] == [other]
        code, rest = target.raw("GET", "/api/v1/secrets", query={"labelSelector": f"order-test={target.namespace}",
                                                                 "limit": "1", "continue": body["metadata"]["continue"]})
        assert code == 200 and [i["metadata"]["namespace"] for i in rest["items"]] == [target.namespace]
    finally:
        target.core_v1.delete_namespace(other)
