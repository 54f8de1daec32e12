"""Differential conformance: the same requests against the embedded API server and upstream's.

Each test runs on the ``target`` fixture: the embedded server always, the upstream kube-apiserver
when pytest gets ``--k8s-kubeconfig``. The expected answers are upstream's (kubernetes v1.36
source, cited per test), so a difference fails the embedded side and the upstream side checks the
expectation itself. Issue 14 found the first three differences: ``status.qosClass``, pagination
from one snapshot, and the ``sendInitialEvents`` end bookmark.
"""

from __future__ import annotations

import pytest
from api_helpers import pod_manifest

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


def test_a_client_status_on_create_is_dropped_but_for_phase_and_qos(target):
    # Upstream PrepareForCreate replaces the whole status: what a client sends is not stored.
    pod = pod_with("s", {})
    pod["status"] = {"phase": "Running", "podIP": "10.0.0.9", "message": "client-made"}
    status = target.core_v1.create_namespaced_pod(target.namespace, pod).status
    assert (status.phase, status.pod_ip, status.message, status.qos_class) == ("Pending", None, None, "BestEffort")


def test_a_status_update_without_qos_class_keeps_it(target):
    # Upstream podStatusStrategy.PrepareForUpdate backfills an empty qosClass from the stored pod.
    target.core_v1.create_namespaced_pod(target.namespace, pod_with("k", GUARANTEED))
    pod = target.api_client.sanitize_for_serialization(target.core_v1.read_namespaced_pod("k", target.namespace))
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
