"""Quota and LimitRange admission answer pod creations in upstream's words, on both servers.

The same requests go to the embedded API server and, with ``--k8s-kubeconfig``, to upstream's
(ResourceQuota and LimitRanger admission plugins, quota controller): what a client sees must be
the same text, because the backend and its users read it (``exceeded quota`` makes the allocator
wait instead of failing the worker).
"""

from __future__ import annotations

import json
import uuid

import pytest
from kubernetes import client

from .servers import create_quota

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def namespace(kube, core_api):
    name = f"{kube.namespace}-admission-{uuid.uuid4().hex[:8]}"  # upstream deletes namespaces in the background
    kube.create_namespace(core_api, name)
    yield name
    kube.delete_namespace(core_api, name)


def two_container_pod(name: str, resources: dict) -> dict:
    """Never scheduled (no node has the label): only admission matters."""
    return {"metadata": {"name": name}, "spec": {"nodeSelector": {"example.com/nowhere": "true"}, "containers": [
        {"name": "worker", "image": "x", "resources": resources}, {"name": "sidecar", "image": "x", "resources": resources}]}}


def refusal(core_api, namespace: str, pod: dict) -> str:
    with pytest.raises(client.ApiException) as info:
        core_api.create_namespaced_pod(namespace, pod)
    status = json.loads(info.value.body)
    assert (status["code"], status["reason"]) == (403, "Forbidden")
    return status["message"]


def test_a_quota_names_the_containers_lacking_a_constrained_resource_sorted(core_api, namespace):
    create_quota(core_api, namespace, {"limits.cpu": "3", "requests.memory": "1Gi"})
    assert refusal(core_api, namespace, two_container_pod("a", {})) == (
        'pods "a" is forbidden: failed quota: compute: must specify limits.cpu for: sidecar,worker; '
        "requests.memory for: sidecar,worker")


def test_an_exceeded_quota_gives_every_exceeded_resource_with_its_numbers(core_api, namespace):
    create_quota(core_api, namespace, {"limits.cpu": "3", "requests.memory": "1Gi"})
    fits = {"limits": {"cpu": "1", "memory": "100Mi"}, "requests": {"memory": "100Mi"}}
    core_api.create_namespaced_pod(namespace, two_container_pod("b", fits))
    too_big = {"limits": {"cpu": "2", "memory": "1Gi"}, "requests": {"memory": "1Gi"}}
    assert refusal(core_api, namespace, two_container_pod("c", too_big)) == (
        'pods "c" is forbidden: exceeded quota: compute, requested: limits.cpu=4,requests.memory=2Gi, '
        "used: limits.cpu=2,requests.memory=200Mi, limited: limits.cpu=3,requests.memory=1Gi")


def test_limit_range_violations_are_listed_once_each_the_first_check_of_each_constraint(core_api, namespace):
    core_api.create_namespaced_limit_range(namespace, {"metadata": {"name": "bounds"}, "spec": {"limits": [
        {"type": "Container", "min": {"cpu": "100m"}, "max": {"memory": "2Gi"}}]}})
    small_cpu_big_memory = {"limits": {"cpu": "50m", "memory": "4Gi"}, "requests": {"cpu": "50m", "memory": "4Gi"}}
    # request before limit for a minimum; both containers break the same two limits: two problems, not eight
    assert refusal(core_api, namespace, two_container_pod("d", small_cpu_big_memory)) == (
        'pods "d" is forbidden: [minimum cpu usage per Container is 100m, but request is 50m, '
        "maximum memory usage per Container is 2Gi, but limit is 4Gi]")
    one_problem = {"limits": {"cpu": "1", "memory": "4Gi"}, "requests": {"cpu": "1", "memory": "1Gi"}}
    assert refusal(core_api, namespace, two_container_pod("e", one_problem)) == (
        'pods "e" is forbidden: maximum memory usage per Container is 2Gi, but limit is 4Gi')  # no brackets


@pytest.mark.parametrize("resources, problem", [
    ({}, "but no request is specified or request is 0"),
    ({"requests": {"cpu": "1"}}, "but no limit is specified or limit is 0"),
    ({"requests": {"cpu": "1"}, "limits": {"cpu": "4"}}, "but provided ratio is 4.000000"),
])
def test_a_limit_to_request_ratio_needs_both_and_is_checked_before_the_pod_maximum(core_api, namespace, resources,
                                                                                  problem):
    core_api.create_namespaced_limit_range(namespace, {"metadata": {"name": "ratio"}, "spec": {"limits": [
        {"type": "Container", "maxLimitRequestRatio": {"cpu": "2"}}, {"type": "Pod", "max": {"memory": "1Gi"}}]}})
    pod = {"metadata": {"name": "r"}, "spec": {"nodeSelector": {"example.com/nowhere": "true"},
                                               "containers": [{"name": "worker", "image": "x", "resources": resources}]}}
    assert refusal(core_api, namespace, pod) == (
        f'pods "r" is forbidden: [cpu max limit to request ratio per Container is 2, {problem}, '
        "maximum memory usage per Pod is 1Gi.  No limit is specified]")


def test_a_limit_range_is_stored_with_its_defaults_and_a_defaulted_pod_says_what_was_set(core_api, namespace):
    body = {"metadata": {"name": "bounds"}, "spec": {"limits": [
        {"type": "Container", "max": {"memory": "2Gi"}, "min": {"cpu": "100m"}, "default": {"ephemeral-storage": "1Gi"}}]}}
    created = json.loads(core_api.create_namespaced_limit_range(namespace, body, _preload_content=False).data)
    [item] = created["spec"]["limits"]
    assert item["default"] == {"memory": "2Gi", "ephemeral-storage": "1Gi"}  # a missing default limit is the max
    assert item["defaultRequest"] == {"cpu": "100m", "memory": "2Gi", "ephemeral-storage": "1Gi"}  # else the min
    pod = {"metadata": {"name": "p"}, "spec": {"nodeSelector": {"example.com/nowhere": "true"},
                                               "containers": [{"name": "worker", "image": "x"}]}}
    made = json.loads(core_api.create_namespaced_pod(namespace, pod, _preload_content=False).data)
    assert made["spec"]["containers"][0]["resources"] == {
        "limits": {"memory": "2Gi", "ephemeral-storage": "1Gi"},
        "requests": {"cpu": "100m", "memory": "2Gi", "ephemeral-storage": "1Gi"}}
    assert made["metadata"]["annotations"]["kubernetes.io/limit-ranger"] == (
        "LimitRanger plugin set: cpu, ephemeral-storage, memory request for container worker; "
        "ephemeral-storage, memory limit for container worker")
