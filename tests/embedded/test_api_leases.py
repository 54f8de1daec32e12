"""The embedded API server serves coordination.k8s.io/v1 Leases as upstream does: CRUD through the
official client's CoordinationV1Api, discovery, validation, and ownerReference garbage collection
with a Lease as the owner (a Pending pod it owns is deleted with it)."""

from __future__ import annotations

import pytest
from kubernetes import client
from kubernetes.client import ApiException

from test_api_http import raw


def lease(name: str, duration: int = 30) -> dict:
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": name, "labels": {"dask-k8s-backend/app-id": name}},
            "spec": {"holderIdentity": "test", "leaseDurationSeconds": duration,
                     "renewTime": "2026-11-28T15:00:00.000000Z"}}


@pytest.fixture
def leases(api_client):
    return client.CoordinationV1Api(api_client)


def test_leases_are_created_renewed_listed_and_deleted(leases):
    created = leases.create_namespaced_lease("default", lease("app-a"))
    assert created.metadata.uid and created.spec.lease_duration_seconds == 30
    created.spec.renew_time = "2026-11-28T15:00:10.000000Z"
    renewed = leases.replace_namespaced_lease("app-a", "default", created)
    assert renewed.spec.renew_time.second == 10
    assert renewed.metadata.resource_version != created.metadata.resource_version
    listed = leases.list_namespaced_lease("default", label_selector="dask-k8s-backend/app-id=app-a")
    assert [x.metadata.name for x in listed.items] == ["app-a"] and listed.api_version == "coordination.k8s.io/v1"
    assert len(leases.list_lease_for_all_namespaces().items) == 1
    leases.delete_namespaced_lease("app-a", "default")
    with pytest.raises(ApiException) as info:
        leases.read_namespaced_lease("app-a", "default")
    assert info.value.status == 404


def test_a_lease_with_a_negative_duration_is_invalid(leases):
    with pytest.raises(ApiException) as info:
        leases.create_namespaced_lease("default", lease("bad", duration=-1))
    assert info.value.status == 422 and "leaseDurationSeconds" in info.value.body


def test_deleting_a_lease_garbage_collects_the_pending_pods_it_owns(leases, core_v1):
    owner = leases.create_namespaced_lease("default", lease("app-b"))
    reference = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "name": "app-b",
                 "uid": owner.metadata.uid, "controller": True}
    pod = {"metadata": {"name": "owned", "ownerReferences": [reference]},
           "spec": {"containers": [{"name": "c", "image": "x"}]}}
    core_v1.create_namespaced_pod("default", pod)  # no nodes: it stays Pending
    leases.delete_namespaced_lease("app-b", "default")
    assert [p.metadata.name for p in core_v1.list_namespaced_pod("default").items] == []


def test_discovery_names_the_coordination_group_and_leases_are_not_core(kube, api_client):
    groups = client.ApisApi(api_client).get_api_versions()
    assert "coordination.k8s.io" in [g.name for g in groups.groups]
    resources = client.CoordinationV1Api(api_client).get_api_resources()
    assert [r.name for r in resources.resources] == ["leases"]
    core = client.CoreV1Api(api_client).get_api_resources()
    assert "leases" not in [r.name for r in core.resources]
    assert raw(kube, "GET", "/api/v1/namespaces/default/leases")[0] == 404
    assert raw(kube, "GET", "/apis/coordination.k8s.io/v1/namespaces/default/pods")[0] == 404


def test_a_pod_with_another_owner_left_loses_only_the_reference_to_the_deleted_lease(leases, core_v1):
    """As upstream's garbage collector: a dependent goes only when all of its owners are gone."""
    owner = leases.create_namespaced_lease("default", lease("app-c"))
    other = core_v1.create_namespaced_config_map("default", {"metadata": {"name": "other-owner"}})
    references = [
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "other-owner", "uid": other.metadata.uid, "controller": True},
        {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "name": "app-c", "uid": owner.metadata.uid}]
    core_v1.create_namespaced_pod("default", {"metadata": {"name": "two-owners", "ownerReferences": references},
                                              "spec": {"containers": [{"name": "c", "image": "x"}]}})
    leases.delete_namespaced_lease("app-c", "default")
    pod = core_v1.read_namespaced_pod("two-owners", "default")
    assert [r.kind for r in pod.metadata.owner_references] == ["ConfigMap"]
    core_v1.delete_namespaced_config_map("other-owner", "default")
    assert [p.metadata.name for p in core_v1.list_namespaced_pod("default").items] == []
