"""ResourceQuota and LimitRange rules (dask_k8s_backend.kube.quotas), as kube-apiserver applies them."""

from __future__ import annotations

from decimal import Decimal

from dask_k8s_backend.kube.quotas import (
    apply_limit_ranges,
    exceeded_keys,
    exceeded_message,
    format_quantity,
    limit_range_violations,
    missing_requirements,
    namespace_usage,
    parse_hard,
    pod_usage,
    quota_room,
)


def pod(name="p", requests=None, limits=None, phase="Running"):
    resources = {}
    if requests:
        resources["requests"] = requests
    if limits:
        resources["limits"] = limits
    return {"metadata": {"name": name}, "spec": {"containers": [{"name": "worker", "resources": resources}]},
            "status": {"phase": phase}}


def limit_range(**item):
    return {"metadata": {"name": "lr"}, "spec": {"limits": [{"type": "Container", **item}]}}


def quota(**hard):
    return {"metadata": {"name": "q"}, "spec": {"hard": {k.replace("_", "."): v for k, v in hard.items()}}}


def test_quantities_print_the_way_kubernetes_prints_them():
    assert format_quantity("requests.cpu", Decimal("2")) == "2"
    assert format_quantity("requests.cpu", Decimal("0.5")) == "500m"
    assert format_quantity("requests.memory", Decimal(3 * 2**30)) == "3Gi"
    assert format_quantity("limits.memory", Decimal(1536 * 2**20)) == "1536Mi"


def test_pod_usage_counts_requests_limits_and_the_pod_itself():
    usage = pod_usage(pod(requests={"cpu": "500m"}, limits={"cpu": "1", "memory": "1Gi"}),
                      ["pods", "requests.cpu", "cpu", "limits.cpu", "requests.memory", "limits.memory"])
    assert usage == {"pods": 1, "requests.cpu": Decimal("0.5"), "cpu": Decimal("0.5"), "limits.cpu": 1,
                     "requests.memory": 2**30, "limits.memory": 2**30}  # a limit stands in for a missing request


def test_terminal_pods_do_not_count_toward_a_quota():
    pods = [pod("a", {"cpu": "1"}), pod("b", {"cpu": "1"}, phase="Succeeded"), pod("c", {"cpu": "1"}, phase="Failed")]
    assert namespace_usage(pods, ["pods", "requests.cpu"]) == {"pods": 1, "requests.cpu": 1}


def test_exceeded_quota_message_has_kube_apiservers_shape():
    hard = parse_hard({"requests.cpu": "4", "pods": "10"})
    request = pod_usage(pod(requests={"cpu": "2"}), hard)
    used = {"requests.cpu": Decimal(3), "pods": Decimal(3)}
    keys = exceeded_keys(request, used, hard)
    assert keys == ["requests.cpu"]
    assert exceeded_message("x", "q", keys, request, used, hard) == (
        'pods "x" is forbidden: exceeded quota: q, requested: requests.cpu=2, used: requests.cpu=3, '
        "limited: requests.cpu=4")


def test_a_quota_on_cpu_requires_every_container_to_set_it():
    assert missing_requirements(pod(requests={"memory": "1Gi"}), ["requests.cpu", "pods", "limits.memory"]) == [
        "limits.memory for: worker", "requests.cpu for: worker"]


def test_limit_range_defaults_fill_only_what_the_container_leaves_unset():
    ranges = [limit_range(default={"cpu": "2", "memory": "2Gi"}, defaultRequest={"cpu": "1"})]
    out = apply_limit_ranges(pod(limits={"memory": "1Gi"}), ranges)
    resources = out["spec"]["containers"][0]["resources"]
    assert resources["limits"] == {"memory": "1Gi", "cpu": "2"}
    assert resources["requests"] == {"memory": "1Gi", "cpu": "1"}  # memory request = own limit, not the default


def test_limit_range_default_request_falls_back_to_the_default_limit_then_the_min():
    ranges = [limit_range(default={"cpu": "2"}, min={"memory": "100Mi"})]
    resources = apply_limit_ranges(pod(), ranges)["spec"]["containers"][0]["resources"]
    assert resources["requests"] == {"cpu": "2", "memory": "100Mi"}


def test_limit_range_min_and_max_violations_are_named():
    ranges = [limit_range(min={"cpu": "500m"}, max={"memory": "1Gi"})]
    problems = limit_range_violations(pod(requests={"cpu": "100m"}, limits={"memory": "2Gi"}), ranges)
    assert problems == ["minimum cpu usage per Container is 500m, but request is 100m",
                        "maximum memory usage per Container is 1Gi, but limit is 2Gi"]


def test_quota_room_counts_how_many_more_workers_fit_and_which_key_binds():
    worker = pod(requests={"cpu": "2", "memory": "1Gi"})
    used = namespace_usage([pod("a", {"cpu": "3"})], ["requests.cpu", "requests.memory", "pods"])
    room = quota_room(quota(requests_cpu="8", requests_memory="100Gi", pods="20"), worker, used)
    assert room.fits == 2 and room.binding == ("requests.cpu",)
    assert room.describe() == ("ResourceQuota 'q': each worker pod requests requests.cpu=2, used: requests.cpu=3, "
                               "limited: requests.cpu=8")


def test_quota_room_is_unbounded_when_the_quota_constrains_nothing_the_pod_uses():
    assert quota_room(quota(services="2"), pod(requests={"cpu": "1"})).fits is None


def test_quota_room_reads_status_used_when_no_usage_is_given():
    q = {**quota(pods="3"), "status": {"used": {"pods": "2"}}}
    assert quota_room(q, pod()).fits == 1


def test_quota_scopes_decide_which_pods_a_quota_tracks():
    from dask_k8s_backend.kube.quotas import quota_applies

    burstable = pod(requests={"cpu": "1"})
    best_effort = pod()
    high = {**pod(requests={"cpu": "1"}), "spec": {**pod(requests={"cpu": "1"})["spec"], "priorityClassName": "high"}}
    assert not quota_applies({"spec": {"scopes": ["BestEffort"]}}, burstable)
    assert quota_applies({"spec": {"scopes": ["BestEffort"]}}, best_effort)
    assert quota_applies({"spec": {"scopes": ["NotTerminating", "NotBestEffort"]}}, burstable)
    selector = {"spec": {"scopeSelector": {"matchExpressions": [
        {"scopeName": "PriorityClass", "operator": "In", "values": ["high"]}]}}}
    assert quota_applies(selector, high) and not quota_applies(selector, burstable)
    scoped = {**quota(pods="0"), "spec": {"hard": {"pods": "0"}, "scopes": ["BestEffort"]}}
    assert quota_room(scoped, burstable).fits is None  # a BestEffort-only quota leaves our workers alone
    assert namespace_usage([best_effort, burstable], ["pods"], scoped) == {"pods": 1}


def test_pod_limits_and_limit_to_request_ratios_are_checked():
    two = {"metadata": {"name": "p"}, "spec": {"containers": [
        {"name": "a", "resources": {"requests": {"cpu": "500m"}, "limits": {"cpu": "2"}}},
        {"name": "b", "resources": {"requests": {"cpu": "1"}, "limits": {"cpu": "1"}}}]}}
    ranges = [{"spec": {"limits": [{"type": "Pod", "max": {"cpu": "2"}},
                                   {"type": "Container", "maxLimitRequestRatio": {"cpu": "2"}}]}}]
    assert limit_range_violations(two, ranges) == [
        "cpu max limit to request ratio per Container is 2, but provided ratio is 4.000000",
        "maximum cpu usage per Pod is 2, but limit is 3"]
