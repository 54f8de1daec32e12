"""The structured policy findings that let a worker group's error name its options (pure rules)."""

from __future__ import annotations

import yaml

from dask_k8s_backend.cluster.preflight_access import IN_POD_PERMISSIONS, service_account_message
from dask_k8s_backend.cluster.preflight_policies import policy_findings

GPU = "example.com/gpu"


def pod(cpu="1", memory="1Gi", gpus=0):
    requests = {"cpu": cpu, "memory": memory, **({GPU: str(gpus)} if gpus else {})}
    limits = {"memory": memory, **({GPU: str(gpus)} if gpus else {})}
    return {"metadata": {"name": "w"}, "spec": {"containers": [
        {"name": "worker", "resources": {"requests": requests, "limits": limits}}]}}


def quota(hard, used=None):
    return {"metadata": {"name": "q"}, "spec": {"hard": hard}, "status": {"used": used or {}}}


def test_limit_range_findings_name_the_resources_and_are_permanent():
    ranges = [{"spec": {"limits": [{"type": "Container", "max": {"memory": "512Mi", "cpu": "4"}}]}}]
    [finding] = policy_findings(pod(cpu="1", memory="1Gi"), ranges, [], 1, "ns")
    assert finding.keys == ("memory",) and finding.permanent
    assert "maximum memory usage per Container is 512Mi" in finding.what


def test_a_quota_full_now_is_temporary_but_one_pod_larger_than_the_quota_is_permanent():
    full = quota({"requests.cpu": "4"}, used={"requests.cpu": "4"})
    [finding] = policy_findings(pod(cpu="1"), None, [full], 1, "ns")
    assert finding.keys == ("cpu",) and not finding.permanent
    [finding] = policy_findings(pod(gpus=2), None, [quota({f"requests.{GPU}": "1"})], 1, "ns")
    assert finding.keys == (GPU,) and finding.permanent


def test_the_fix_names_the_groups_knobs():
    [finding] = policy_findings(pod(cpu="2"), None, [quota({"requests.cpu": "3"})], 2, "ns",
                                asked="scale(2, group='gpu') needs 2 more worker pods", knobs="the gpu group's cores")
    assert finding.text.endswith("Ask for at most 1 more workers, lower the gpu group's cores, or have the quota raised")


def test_the_service_account_fix_is_a_role_and_a_binding_to_that_account():
    missing = [p for p in IN_POD_PERMISSIONS if p.verb in ("create", "watch") and p.resource == "pods"]
    message = service_account_message(missing, "team-a", "dask-sa")
    role, binding = yaml.safe_load_all(message[message.index("apiVersion"):])
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["create", "watch"]}]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "dask-sa", "namespace": "team-a"}]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
