"""Preflight's pure parts: required permissions, the Role it suggests, policy problems; sticky blocks."""

from __future__ import annotations

import yaml

from dask_k8s_backend.backend.executors.failures import FailureTracker
from dask_k8s_backend.clock import ManualClock
from dask_k8s_backend.config import ExecutorSettings
from dask_k8s_backend.cluster.preflight_access import (
    CLIENT_MODE_PERMISSIONS,
    IN_POD_OPTIONAL_PERMISSIONS,
    IN_POD_PERMISSIONS,
    OPTIONAL_PERMISSIONS,
    Permission,
    required_permissions,
    role_snippet,
)
from dask_k8s_backend.cluster.preflight_policies import policy_problems

from .conftest import rbac_yaml_rules

# Granted by deploy/rbac.yaml, used by the code, but no SelfSubjectAccessReview asks for them: the
# preflight reads the account itself, and `python -m dask_k8s_backend gc` lists dead apps' certificates.
USED_WITHOUT_ASKING = {("get", "serviceaccounts"), ("list", "secrets")}


def test_deploy_rbac_yaml_grants_exactly_what_the_preflight_asks_for_and_nothing_unused():
    """Both ways: a permission the preflight asks for but the Role lacks would refuse users of the shipped
    Role; one the Role grants but nothing asks for or uses is more than the backend needs (tests/test_deploy.py
    checks the same against the API calls in the code; the preflight suite, on upstream too, that each
    asked-for permission, when missing, is refused or warned about by name)."""
    asked = {p for mode in ("client", "cluster") for tls in (False, True) for p in required_permissions(mode, tls)}
    asked |= set(OPTIONAL_PERMISSIONS + IN_POD_PERMISSIONS + IN_POD_OPTIONAL_PERMISSIONS)
    granted = {(verb, resource) for rule in rbac_yaml_rules("dask") for resource in rule["resources"]
               for verb in rule["verbs"]}
    assert granted == {(p.verb, p.full_resource) for p in asked} | USED_WITHOUT_ASKING


def worker_pod(cpu="1"):
    return {"metadata": {"name": "w"}, "spec": {"containers": [{"name": "worker", "resources": {"requests": {"cpu": cpu}}}]}}


def test_cluster_mode_and_tls_need_more_permissions():
    assert required_permissions("client") == CLIENT_MODE_PERMISSIONS
    extra = set(required_permissions("cluster", tls=True)) - set(CLIENT_MODE_PERMISSIONS)
    assert {(p.verb, p.full_resource) for p in extra} == {
        ("get", "pods"), ("create", "services"), ("create", "secrets"), ("delete", "secrets"),
        ("patch", "secrets"), ("get", "secrets")}


def test_the_suggested_role_is_valid_yaml_granting_exactly_the_missing_permissions():
    missing = [Permission("create", "pods"), Permission("get", "pods", "log"), Permission("delete", "pods")]
    role = yaml.safe_load(role_snippet(missing, "team-a"))
    assert role["kind"] == "Role" and role["metadata"]["namespace"] == "team-a"
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["create", "delete"]},
                             {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]}]


def test_policy_problems_count_limit_range_defaults_and_name_the_binding_quota():
    ranges = [{"spec": {"limits": [{"type": "Container", "defaultRequest": {"cpu": "2"}}]}}]
    quota = {"metadata": {"name": "q"}, "spec": {"hard": {"requests.cpu": "5"}}, "status": {"used": {"requests.cpu": "1"}}}
    pod = {"metadata": {"name": "w"}, "spec": {"containers": [{"name": "worker"}]}}
    assert policy_problems(pod, ranges, [quota], 2, "ns") == []
    [problem] = policy_problems(pod, ranges, [quota], 3, "ns")
    assert problem.startswith("n_workers=3 asks for 3 worker pods, but only 2 fit: ResourceQuota 'q': each worker pod "
                              "requests requests.cpu=2, used: requests.cpu=1, limited: requests.cpu=5")


def test_policy_problems_without_permission_to_read_policies_are_none():
    assert policy_problems(worker_pod(), None, None, 100, "ns") == []


def test_a_blocked_group_stays_blocked_until_reset():
    limits = []
    tracker = FailureTracker(settings=ExecutorSettings(max_failures=3, failures_validity_interval=10), clock=ManualClock(),
                             on_failure_limit=lambda g, m: limits.append((g, m)))
    tracker.block("gpu", "image runs other versions")
    tracker.block("gpu", "image runs other versions")
    assert limits == [("gpu", "image runs other versions")]  # reported once
    tracker.clock.advance(100)
    assert tracker.is_blocked("gpu") and not tracker.is_blocked("default")  # no failures to age out
    tracker.reset("gpu")
    assert not tracker.is_blocked("gpu")


def test_policy_problems_report_limit_range_violations_with_the_fix():
    ranges = [{"spec": {"limits": [{"type": "Container", "max": {"cpu": "500m"}, "default": {"cpu": "500m"}}]}}]
    pod = {"metadata": {"name": "w"}, "spec": {"containers": [{"name": "worker", "resources": {"limits": {"cpu": "2"}}}]}}
    [problem] = policy_problems(pod, ranges, [], 1, "ns")
    assert problem == ("the LimitRange of namespace 'ns' refuses the worker pod: maximum cpu usage per Container is 500m, "
                       "but limit is 2; change worker_cores / worker_memory (or the pod template's resources) to fit it")


def test_only_a_wanted_executor_with_other_versions_blocks_its_group():
    import asyncio
    from types import SimpleNamespace

    from distributed.versions import get_versions

    from dask_k8s_backend.backend.gatekeeper import RegistrationGatekeeper

    blocked = []
    components = SimpleNamespace(
        is_wanted=lambda i: i == 1, group_of=lambda i: "gpu",
        store=SimpleNamespace(current=SimpleNamespace(executor_pods={})),
        failures=SimpleNamespace(record_failure=lambda g, i, m: None, block=lambda g, m: blocked.append((g, m))),
    )
    backend = SimpleNamespace(components=components, app=SimpleNamespace(app_id="a"), record=lambda m, level=None: None,
                              settings=SimpleNamespace(image="img:1", worker=SimpleNamespace(pod_template_container_name=None)))
    gatekeeper = RegistrationGatekeeper(backend)
    other = {"packages": dict(get_versions()["packages"], dask="1.0")}

    class Comm:
        async def write(self, msg):
            self.msg = msg

    for name in ("not-an-id", "2", "1"):
        asyncio.run(gatekeeper.register_worker(Comm(), name=name, versions=other))
    assert [g for g, _ in blocked] == ["gpu"] and "image 'img:1' (executor 1) runs dask 1.0" in blocked[0][1]
    assert [n for n, _ in gatekeeper.refused] == ["not-an-id", "2", "1"]
