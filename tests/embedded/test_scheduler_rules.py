"""Scheduling rules as pure functions: quantities, pod requests, filters and the kube-scheduler's messages."""

from __future__ import annotations

import pytest

from dask_k8s_backend.kube import resources as res
from dask_k8s_backend.embedded.control.predicates import (
    NodeInfo,
    PodInfo,
    filter_node,
    fit_error_message,
    matches_node_affinity,
    tolerates,
)

GIB = 1 << 30


def node(name="n1", cpu="4", memory="8Gi", pods="110", labels=None, taints=None, unschedulable=False, **extra):
    return NodeInfo.from_node({
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"taints": taints or [], "unschedulable": unschedulable},
        "status": {"allocatable": {"cpu": cpu, "memory": memory, "pods": pods, **extra}},
    })


def pod_info(cpu=None, memory=None, selector=None, tolerations=None, affinity=None, **extended):
    requests = {k: v for k, v in (("cpu", cpu), ("memory", memory)) if v}
    requests.update({k.replace("__", "/").replace("_", "."): v for k, v in extended.items()})
    spec = {"containers": [{"name": "c", "resources": {"requests": requests}}]}
    if selector:
        spec["nodeSelector"] = selector
    if tolerations:
        spec["tolerations"] = tolerations
    if affinity:
        spec["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": affinity}}}
    return PodInfo.from_pod({"metadata": {"name": "p", "namespace": "default", "uid": "u"}, "spec": spec})


@pytest.mark.parametrize("text, millicores", [("500m", 500), ("1", 1000), ("0.1", 100), ("2.5", 2500), ("1m", 1),
                                              ("0.0005", 1), (3, 3000)])
def test_cpu_quantities_are_millicores_rounded_up(text, millicores):
    assert res.to_units("cpu", text) == millicores


@pytest.mark.parametrize("text, size", [("1Gi", GIB), ("512Mi", 512 << 20), ("1G", 10**9), ("1e3", 1000),
                                        ("128974848", 128974848), ("129M", 129 * 10**6), ("1.5Ki", 1536)])
def test_memory_quantities_accept_binary_decimal_and_exponent_forms(text, size):
    assert res.to_units("memory", text) == size


def test_a_bad_quantity_is_refused_naming_the_field_and_value():
    with pytest.raises(ValueError, match=r"requests.cpu.*'lots'.*quantity"):
        res.parse_quantity("lots", what="requests.cpu")


def test_pod_request_is_the_sum_of_containers_but_at_least_the_largest_init_container():
    pod = {"spec": {
        "containers": [{"name": "a", "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}},
                       {"name": "b", "resources": {"requests": {"cpu": "500m"}}}],
        "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "100m", "memory": "3Gi"}}}],
    }}
    assert res.pod_requests(pod) == {"cpu": 1500, "memory": 3 * GIB, "pods": 1}


def test_a_limit_stands_in_for_a_missing_request():
    container = {"name": "a", "resources": {"limits": {"cpu": "2", "memory": "1Gi"}, "requests": {"cpu": "1"}}}
    assert res.container_requests(container) == {"cpu": 1000, "memory": GIB}


@pytest.mark.parametrize("spec, qos", [
    ({"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "1Gi"}}, "Guaranteed"),
    ({"limits": {"cpu": "1", "memory": "1Gi"}}, "Guaranteed"),
    ({"requests": {"memory": "1Gi"}, "limits": {"memory": "1Gi"}}, "Burstable"),
    ({}, "BestEffort"),
])
def test_qos_class_follows_the_api_server_rules(spec, qos):
    assert res.qos_class({"spec": {"containers": [{"name": "c", "resources": spec}]}}) == qos


def test_a_pod_that_fits_has_no_reasons():
    assert filter_node(pod_info(cpu="1", memory="1Gi"), node(), {"cpu": 4000, "memory": 8 * GIB, "pods": 110}) == []


def test_insufficient_cpu_reads_like_the_kube_scheduler():
    n = node(cpu="1")
    reasons = {n.name: filter_node(pod_info(cpu="2"), n, n.allocatable)}
    assert fit_error_message(1, reasons) == "0/1 nodes are available: 1 Insufficient cpu."


def test_every_short_resource_of_a_node_is_named():
    n = node(cpu="1", memory="1Gi")
    assert filter_node(pod_info(cpu="2", memory="2Gi"), n, n.allocatable) == ["Insufficient cpu", "Insufficient memory"]


def test_a_full_node_says_too_many_pods():
    n = node(pods="1")
    assert filter_node(pod_info(), n, {**n.allocatable, "pods": 0}) == ["Too many pods"]


def test_extended_resources_are_counted_and_missing_ones_are_insufficient():
    gpu_node = node(name="gpu", **{"example.com/gpu": "2"})
    plain = node(name="plain")
    wants = pod_info(example_com__gpu="1")
    assert filter_node(wants, gpu_node, gpu_node.allocatable) == []
    assert filter_node(wants, plain, plain.allocatable) == ["Insufficient example.com/gpu"]


def test_message_counts_reasons_over_nodes_and_sorts_them():
    reasons = {"a": ["Insufficient memory"], "b": ["node(s) didn't match Pod's node affinity/selector"],
               "c": ["node(s) didn't match Pod's node affinity/selector"]}
    assert fit_error_message(3, reasons) == (
        "0/3 nodes are available: 1 Insufficient memory, 2 node(s) didn't match Pod's node affinity/selector.")


def test_no_nodes_at_all_has_its_own_message():
    assert fit_error_message(0, {}) == "no nodes available to schedule pods"


def test_node_selector_must_match_every_label():
    n = node(labels={"disk": "ssd", "zone": "a"})
    assert filter_node(pod_info(selector={"disk": "ssd"}), n, n.allocatable) == []
    assert filter_node(pod_info(selector={"disk": "ssd", "zone": "b"}), n, n.allocatable) == [
        "node(s) didn't match Pod's node affinity/selector"]


def test_the_first_failing_filter_answers_taints_before_selector_before_resources():
    n = node(cpu="1", labels={}, taints=[{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}])
    assert filter_node(pod_info(cpu="2", selector={"x": "y"}), n, n.allocatable) == [
        "node(s) had untolerated taint {dedicated: gpu}"]


def test_an_unschedulable_node_is_skipped():
    n = node(unschedulable=True)
    assert filter_node(pod_info(), n, n.allocatable) == ["node(s) were unschedulable"]


@pytest.mark.parametrize("toleration, taint, ok", [
    ({"key": "k", "operator": "Equal", "value": "v", "effect": "NoSchedule"}, {"key": "k", "value": "v", "effect": "NoSchedule"}, True),
    ({"key": "k", "value": "v"}, {"key": "k", "value": "v", "effect": "NoExecute"}, True),  # empty effect: all
    ({"key": "k", "value": "w"}, {"key": "k", "value": "v", "effect": "NoSchedule"}, False),
    ({"key": "k", "operator": "Exists"}, {"key": "k", "value": "v", "effect": "NoSchedule"}, True),
    ({"operator": "Exists"}, {"key": "anything", "value": "v", "effect": "NoExecute"}, True),  # tolerates everything
    ({"key": "k", "operator": "Exists", "effect": "NoExecute"}, {"key": "k", "effect": "NoSchedule"}, False),
    ({"key": "other", "operator": "Exists"}, {"key": "k", "effect": "NoSchedule"}, False),
])
def test_toleration_matching(toleration, taint, ok):
    assert tolerates(toleration, taint) is ok


def test_prefer_no_schedule_taints_do_not_block_scheduling():
    n = node(taints=[{"key": "k", "value": "v", "effect": "PreferNoSchedule"}])
    assert filter_node(pod_info(), n, n.allocatable) == []


def test_required_node_affinity_terms_are_ored_and_expressions_anded():
    n = node(labels={"zone": "a", "size": "8"})
    term_in = {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a", "b"]},
                                    {"key": "size", "operator": "Gt", "values": ["4"]}]}
    term_out = {"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["a"]}]}
    term_missing = {"matchExpressions": [{"key": "gpu", "operator": "Exists"}]}
    assert matches_node_affinity(pod_info(affinity=[term_in]), n)
    assert matches_node_affinity(pod_info(affinity=[term_out, term_in]), n)
    assert not matches_node_affinity(pod_info(affinity=[term_out, term_missing]), n)
    assert matches_node_affinity(pod_info(affinity=[{"matchFields": [
        {"key": "metadata.name", "operator": "In", "values": ["n1"]}]}]), n)
