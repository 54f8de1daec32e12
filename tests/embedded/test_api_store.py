"""ObjectStore rules (docs/contracts.md), driven directly: no HTTP, a fake clock."""

from __future__ import annotations

import pytest
from api_helpers import pod_manifest

from dask_k8s_backend.embedded.status import StatusError
from dask_k8s_backend.embedded.store.object_store import ObjectStore


class FakeClock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store():
    return ObjectStore(clock=FakeClock())


def code_of(fn, *args, **kwargs) -> tuple[int, str]:
    with pytest.raises(StatusError) as info:
        fn(*args, **kwargs)
    return info.value.code, info.value.reason


def running(store, name="p", **meta):
    pod = pod_manifest(name)
    pod["metadata"].update(meta)
    store.create("pods", "default", pod)
    store.mutate("pods", "default", name, lambda p: p["spec"].__setitem__("nodeName", "n1"))
    store.mutate("pods", "default", name, lambda p: p["status"].__setitem__("phase", "Running"), status_only=True)
    return store.get("pods", "default", name)


def test_default_and_kube_system_namespaces_exist(store):
    names = {ns["metadata"]["name"] for ns in store.list("namespaces")[0]}
    assert {"default", "kube-system"} <= names


def test_create_sets_uid_creation_timestamp_and_increasing_resource_versions(store):
    a = store.create("pods", "default", pod_manifest("a"))
    b = store.create("pods", "default", pod_manifest("b"))
    assert a["metadata"]["uid"] != b["metadata"]["uid"]
    assert a["metadata"]["creationTimestamp"] == "2027-01-15T08:00:00Z"
    assert int(b["metadata"]["resourceVersion"]) > int(a["metadata"]["resourceVersion"])
    assert store.resource_version == b["metadata"]["resourceVersion"]


def test_generate_name_gets_a_random_suffix(store):
    a = store.create("pods", "default", pod_manifest(None))
    b = store.create("pods", "default", pod_manifest(None))
    assert a["metadata"]["name"].startswith("gen-") and len(a["metadata"]["name"]) == len("gen-") + 5
    assert a["metadata"]["name"] != b["metadata"]["name"]


def test_callers_get_copies_that_cannot_change_the_store(store):
    created = store.create("pods", "default", pod_manifest("a"))
    created["metadata"]["labels"] = {"changed": "yes"}
    store.get("pods", "default", "a")["spec"]["containers"].clear()
    assert "labels" not in store.get("pods", "default", "a")["metadata"]
    assert store.get("pods", "default", "a")["spec"]["containers"]


def test_duplicate_name_is_409_already_exists(store):
    store.create("pods", "default", pod_manifest("a"))
    assert code_of(store.create, "pods", "default", pod_manifest("a")) == (409, "AlreadyExists")


def test_missing_namespace_is_404(store):
    assert code_of(store.create, "pods", "nope", pod_manifest("a")) == (404, "NotFound")


@pytest.mark.parametrize("mutation, field", [
    (lambda p: p["metadata"].__setitem__("name", "Not_Valid"), "metadata.name"),
    (lambda p: p["spec"].__setitem__("containers", []), "spec.containers"),
    (lambda p: p["spec"]["containers"][0].__setitem__("name", "BAD NAME"), "spec.containers[0].name"),
    (lambda p: p["spec"]["containers"].append({"name": "main", "image": "x"}), "spec.containers[1].name"),
    (lambda p: p["spec"]["containers"][0].__setitem__("resources", {"limits": {"memory": "lots"}}),
     "spec.containers[0].resources.limits[memory]"),
    (lambda p: p["spec"]["containers"][0].__setitem__("resources", {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}),
     "spec.containers[0].resources.requests"),
])
def test_invalid_pods_are_422_with_the_field_named(store, mutation, field):
    pod = pod_manifest("a")
    mutation(pod)
    with pytest.raises(StatusError) as info:
        store.create("pods", "default", pod)
    assert (info.value.code, info.value.reason) == (422, "Invalid")
    assert field in [c["field"] for c in info.value.details["causes"]]


def test_replace_with_stale_resource_version_is_409_conflict(store):
    old = store.create("configmaps", "default", {"metadata": {"name": "c"}, "data": {"a": "1"}})
    store.replace("configmaps", "default", "c", {**old, "data": {"a": "2"}})
    assert code_of(store.replace, "configmaps", "default", "c", {**old, "data": {"a": "3"}}) == (409, "Conflict")


def test_replace_of_a_pod_keeps_its_status_and_status_only_keeps_its_spec(store):
    pod = running(store)
    pod["status"]["phase"] = "Failed"
    pod["metadata"]["labels"] = {"x": "1"}
    after = store.replace("pods", "default", "p", pod)
    assert after["status"]["phase"] == "Running" and after["metadata"]["labels"] == {"x": "1"}
    pod = store.get("pods", "default", "p")
    pod["status"]["phase"] = "Succeeded"
    pod["spec"]["nodeName"] = "elsewhere"
    after = store.replace("pods", "default", "p", pod, status_only=True)
    assert after["status"]["phase"] == "Succeeded" and after["spec"]["nodeName"] == "n1"


def test_pod_spec_is_immutable_except_images(store):
    pod = store.create("pods", "default", pod_manifest("a"))
    pod["spec"]["containers"][0]["image"] = "busybox:1.37"
    assert store.replace("pods", "default", "a", pod)["spec"]["containers"][0]["image"] == "busybox:1.37"
    pod = store.get("pods", "default", "a")
    pod["spec"]["restartPolicy"] = "Never"
    assert code_of(store.replace, "pods", "default", "a", pod) == (422, "Invalid")


def test_an_unchanged_mutation_does_not_bump_the_resource_version(store):
    pod = store.create("pods", "default", pod_manifest("a"))
    after = store.mutate("pods", "default", "a", lambda p: None)
    assert after["metadata"]["resourceVersion"] == pod["metadata"]["resourceVersion"]


def test_listeners_see_every_change_in_resource_version_order(store):
    seen = []
    unsubscribe = store.add_listener(lambda t, o: seen.append((t, o["metadata"]["name"], o["metadata"]["resourceVersion"])))
    store.create("pods", "default", pod_manifest("a"))
    store.mutate("pods", "default", "a", lambda p: p["metadata"].__setitem__("labels", {"x": "1"}))
    store.delete("pods", "default", "a")
    unsubscribe()
    store.create("pods", "default", pod_manifest("b"))
    assert [(t, n) for t, n, _ in seen] == [("ADDED", "a"), ("MODIFIED", "a"), ("DELETED", "a")]
    versions = [int(rv) for _, _, rv in seen]
    assert versions == sorted(versions) and len(set(versions)) == 3


def test_events_since_replays_history_and_too_old_is_410_gone():
    store = ObjectStore(history_size=3)
    start = store.resource_version
    for name in "abcde":
        store.create("configmaps", "default", {"metadata": {"name": name}})
    recent = store.events_since(str(int(store.resource_version) - 2))
    assert [(t, o["metadata"]["name"]) for t, o in recent] == [("ADDED", "d"), ("ADDED", "e")]
    assert code_of(store.events_since, start) == (410, "Expired")


def test_unscheduled_pod_is_removed_at_once(store):
    store.create("pods", "default", pod_manifest("a"))
    store.delete("pods", "default", "a")
    assert code_of(store.get, "pods", "default", "a") == (404, "NotFound")


def test_running_pod_gets_a_deletion_timestamp_until_the_kubelet_finalizes(store):
    running(store, "a")
    marked = store.delete("pods", "default", "a", grace_period_seconds=10)
    assert marked["metadata"]["deletionTimestamp"] == "2027-01-15T08:00:10Z"
    assert marked["metadata"]["deletionGracePeriodSeconds"] == 10
    assert store.get("pods", "default", "a")
    store.finalize_deletion("pods", "default", "a")
    assert code_of(store.get, "pods", "default", "a") == (404, "NotFound")


def test_running_pod_with_grace_zero_and_finished_pods_are_removed_at_once(store):
    running(store, "a")
    store.delete("pods", "default", "a", grace_period_seconds=0)
    running(store, "b")
    store.mutate("pods", "default", "b", lambda p: p["status"].__setitem__("phase", "Succeeded"), status_only=True)
    store.delete("pods", "default", "b")
    assert store.list("pods")[0] == []


def test_finalizers_keep_a_deleted_object_until_removed(store):
    store.create("configmaps", "default", {"metadata": {"name": "c", "finalizers": ["example.com/keep"]}})
    marked = store.delete("configmaps", "default", "c")
    assert marked["metadata"]["deletionTimestamp"]
    store.mutate("configmaps", "default", "c", lambda o: o["metadata"].pop("finalizers"))
    assert code_of(store.get, "configmaps", "default", "c") == (404, "NotFound")


def _owned(store, name, owner):
    ref = {"apiVersion": "v1", "kind": owner["kind"], "name": owner["metadata"]["name"],
           "uid": owner["metadata"]["uid"]}
    return store.create("configmaps", "default", {"metadata": {"name": name, "ownerReferences": [ref]}})


def test_background_deletion_removes_dependents_after_the_owner(store):
    owner = store.create("configmaps", "default", {"metadata": {"name": "owner"}})
    _owned(store, "dep", owner)
    order = []
    store.add_listener(lambda t, o: order.append((t, o["metadata"]["name"])))
    store.delete("configmaps", "default", "owner")
    assert order == [("DELETED", "owner"), ("DELETED", "dep")]


def test_foreground_deletion_keeps_the_owner_until_dependents_are_gone(store):
    owner = running(store, "owner")
    _owned(store, "dep", owner)
    dep_pod = pod_manifest("dep-pod")
    dep_pod["metadata"]["ownerReferences"] = [{"apiVersion": "v1", "kind": "Pod", "name": "owner",
                                               "uid": owner["metadata"]["uid"]}]
    store.create("pods", "default", dep_pod)
    store.mutate("pods", "default", "dep-pod", lambda p: p["spec"].__setitem__("nodeName", "n1"))
    store.delete("pods", "default", "owner", propagation_policy="Foreground")
    kept = store.get("pods", "default", "owner")
    assert "foregroundDeletion" in kept["metadata"]["finalizers"] and kept["metadata"]["deletionTimestamp"]
    store.finalize_deletion("pods", "default", "dep-pod")  # the kubelet stopped the dependent
    # the owner itself is a running pod: its own kubelet finishes it after the dependents went
    assert "foregroundDeletion" not in store.get("pods", "default", "owner")["metadata"].get("finalizers", [])
    store.finalize_deletion("pods", "default", "owner")
    assert [p["metadata"]["name"] for p in store.list("pods")[0]] == []
    assert store.list("configmaps")[0] == []


def test_orphan_deletion_keeps_dependents_without_the_reference(store):
    owner = store.create("configmaps", "default", {"metadata": {"name": "owner"}})
    _owned(store, "dep", owner)
    store.delete("configmaps", "default", "owner", propagation_policy="Orphan")
    assert "ownerReferences" not in store.get("configmaps", "default", "dep")["metadata"]


def test_deleting_a_namespace_deletes_its_content_then_the_namespace(store):
    store.create("namespaces", None, {"metadata": {"name": "team"}})
    store.create("configmaps", "team", {"metadata": {"name": "c"}})
    running(store, "a")  # in default: untouched
    store.create("pods", "team", pod_manifest("p"))
    store.delete("namespaces", None, "team")
    assert code_of(store.get, "namespaces", None, "team") == (404, "NotFound")
    assert store.list("configmaps", "team")[0] == [] and store.get("pods", "default", "a")


def test_default_namespace_cannot_be_deleted(store):
    assert code_of(store.delete, "namespaces", None, "default") == (403, "Forbidden")


def test_record_event_creates_v1_events_and_counts_repeats(store):
    pod = store.create("pods", "default", pod_manifest("a"))
    store.record_event("default", pod, "Scheduled", "assigned to n1", source="default-scheduler")
    store.record_event("default", pod, "Scheduled", "assigned to n1", source="default-scheduler")
    store.record_event("default", pod, "Pulled", "image present")
    events = store.list("events", "default", field_selector="involvedObject.name=a")[0]
    assert [(e["reason"], e["count"]) for e in events] == [("Scheduled", 2), ("Pulled", 1)]
    assert events[0]["involvedObject"]["uid"] == pod["metadata"]["uid"]
    assert events[0]["source"] == {"component": "default-scheduler"}


def test_list_pages_with_limit_and_continue(store):
    for i in range(5):
        store.create("configmaps", "default", {"metadata": {"name": f"c{i}"}})
    first, rv, token = store.list("configmaps", "default", limit=2)
    second, rv2, token2 = store.list("configmaps", "default", limit=2, continue_token=token)
    third, _, token3 = store.list("configmaps", "default", limit=2, continue_token=token2)
    names = [o["metadata"]["name"] for o in first + second + third]
    assert names == ["c0", "c1", "c2", "c3", "c4"] and rv == rv2 and token3 is None


def test_bad_continue_token_is_400(store):
    assert code_of(store.list, "pods", continue_token="not-a-token")[0] == 400
