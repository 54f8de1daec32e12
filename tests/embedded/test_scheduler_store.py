"""EmbeddedScheduler against the object store: binding, Unschedulable, retry when capacity frees.

Nodes are plain Node objects (no kubelet), so these tests are about scheduling only and fast.
"""

from __future__ import annotations

import threading

import pytest
from kubelet_fixtures import get_pod, make_store, pod, store_events, wait_for

from dask_k8s_backend.embedded.podstatus import get_condition, node_object
from dask_k8s_backend.embedded.control.scheduler import EmbeddedScheduler

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def store():
    return make_store()


@pytest.fixture
def scheduler(store):
    s = EmbeddedScheduler(store)
    s.start()
    yield s
    before = threading.active_count()
    s.stop()
    assert threading.active_count() < before, "the scheduler thread must end on stop()"


def add_node(store, name, cpu="4", memory="8Gi", pods="110", labels=None, taints=None, **extra):
    store.create("nodes", None, node_object(name, capacity={"cpu": cpu, "memory": memory, "pods": pods, **extra},
                                            labels=labels, taints=taints, host_ip="127.0.0.1",
                                            pod_cidr="127.0.0.0/16", now=0))


def node_of(store, name):
    p = get_pod(store, name)
    return p and p["spec"].get("nodeName")


def scheduled_condition(store, name):
    p = get_pod(store, name)
    return get_condition(p, "PodScheduled") if p else None


def unschedulable_message(store, name):
    cond = scheduled_condition(store, name) or {}
    return cond.get("message") if cond.get("reason") == "Unschedulable" else None


def test_a_pod_is_bound_with_pod_scheduled_true_and_a_scheduled_event(store, scheduler):
    add_node(store, "node-1")
    store.create("pods", "default", pod("p", ["true"], cpu="1"))
    assert wait_for(lambda: node_of(store, "p")) == "node-1"
    cond = scheduled_condition(store, "p")
    assert cond["status"] == "True" and "reason" not in cond
    assert get_pod(store, "p")["status"]["phase"] == "Pending"
    wait_for(lambda: any(e["reason"] == "Scheduled" for e in store_events(store, "p")), what="Scheduled event")
    event = next(e for e in store_events(store, "p") if e["reason"] == "Scheduled")
    assert event["message"] == "Successfully assigned default/p to node-1" and event["type"] == "Normal"


def test_what_does_not_fit_stays_pending_unschedulable_with_the_real_message_and_a_warning(store, scheduler):
    add_node(store, "node-1", cpu="2")
    store.create("pods", "default", pod("big", ["true"], cpu="3"))
    message = wait_for(lambda: unschedulable_message(store, "big"), what="Unschedulable condition")
    assert message == "0/1 nodes are available: 1 Insufficient cpu."
    assert get_pod(store, "big")["status"]["phase"] == "Pending" and node_of(store, "big") is None
    wait_for(lambda: any(e["reason"] == "FailedScheduling" for e in store_events(store, "big")))
    event = next(e for e in store_events(store, "big") if e["reason"] == "FailedScheduling")
    assert event["type"] == "Warning" and event["message"] == message


def test_a_pending_pod_is_scheduled_once_a_bound_pod_is_deleted(store, scheduler):
    add_node(store, "node-1", cpu="2")
    store.create("pods", "default", pod("first", ["true"], cpu="1500m"))
    wait_for(lambda: node_of(store, "first"))
    store.create("pods", "default", pod("second", ["true"], cpu="1"))
    wait_for(lambda: unschedulable_message(store, "second"))
    store.delete("pods", "default", "first", grace_period_seconds=0)
    assert wait_for(lambda: node_of(store, "second"), what="second pod bound") == "node-1"
    assert scheduled_condition(store, "second")["status"] == "True"


def test_a_pending_pod_is_scheduled_once_a_bound_pod_finishes(store, scheduler):
    add_node(store, "node-1", memory="1Gi")
    store.create("pods", "default", pod("first", ["true"], memory="768Mi"))
    wait_for(lambda: node_of(store, "first"))
    store.create("pods", "default", pod("second", ["true"], memory="512Mi"))
    assert wait_for(lambda: unschedulable_message(store, "second")) == "0/1 nodes are available: 1 Insufficient memory."
    store.mutate("pods", "default", "first", lambda p: p["status"].update(phase="Succeeded"), status_only=True)
    assert wait_for(lambda: node_of(store, "second")) == "node-1"


def test_a_pending_pod_is_scheduled_when_a_node_that_fits_is_added(store, scheduler):
    add_node(store, "small", cpu="1")
    store.create("pods", "default", pod("p", ["true"], cpu="2"))
    wait_for(lambda: unschedulable_message(store, "p"))
    add_node(store, "large", cpu="8")
    assert wait_for(lambda: node_of(store, "p")) == "large"


def test_pods_count_against_the_nodes_pod_capacity(store, scheduler):
    add_node(store, "node-1", pods="2")
    for name in ("a", "b", "c"):
        store.create("pods", "default", pod(name, ["true"]))
    wait_for(lambda: node_of(store, "a") and node_of(store, "b"))
    assert wait_for(lambda: unschedulable_message(store, "c")) == "0/1 nodes are available: 1 Too many pods."


def test_node_selector_and_mixed_reasons_over_several_nodes(store, scheduler):
    add_node(store, "a", memory="1Gi", labels={"disk": "ssd"})
    add_node(store, "b", labels={"disk": "hdd"})
    add_node(store, "c", labels={"disk": "hdd"})
    store.create("pods", "default", pod("p", ["true"], memory="2Gi", node_selector={"disk": "ssd"}))
    assert wait_for(lambda: unschedulable_message(store, "p")) == (
        "0/3 nodes are available: 1 Insufficient memory, 2 node(s) didn't match Pod's node affinity/selector.")
    store.create("pods", "default", pod("q", ["true"], node_selector={"disk": "ssd"}))
    assert wait_for(lambda: node_of(store, "q")) == "a"


def test_taints_keep_pods_off_unless_tolerated(store, scheduler):
    add_node(store, "gpu", taints=[{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}])
    store.create("pods", "default", pod("plain", ["true"]))
    assert wait_for(lambda: unschedulable_message(store, "plain")) == (
        "0/1 nodes are available: 1 node(s) had untolerated taint {dedicated: gpu}.")
    store.create("pods", "default", pod("tolerant", ["true"], tolerations=[
        {"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]))
    assert wait_for(lambda: node_of(store, "tolerant")) == "gpu"


def test_extended_resources_are_scheduled_against_allocatable(store, scheduler):
    add_node(store, "plain")
    add_node(store, "gpu", **{"example.com/gpu": "1"})
    store.create("pods", "default", pod("g1", ["true"], extended={"example.com/gpu": "1"}))
    assert wait_for(lambda: node_of(store, "g1")) == "gpu"
    store.create("pods", "default", pod("g2", ["true"], extended={"example.com/gpu": "1"}))
    assert wait_for(lambda: unschedulable_message(store, "g2")) == (
        "0/2 nodes are available: 2 Insufficient example.com/gpu.")


def test_pods_spread_over_nodes_by_least_allocated(store, scheduler):
    add_node(store, "a")
    add_node(store, "b")
    for i in range(4):
        store.create("pods", "default", pod(f"p{i}", ["true"], cpu="1", memory="1Gi"))
    nodes = [wait_for(lambda i=i: node_of(store, f"p{i}")) for i in range(4)]
    assert sorted(nodes) == ["a", "a", "b", "b"]


def test_no_nodes_leaves_pods_pending_with_the_no_nodes_message(store, scheduler):
    store.create("pods", "default", pod("p", ["true"]))
    assert wait_for(lambda: unschedulable_message(store, "p")) == "no nodes available to schedule pods"


def test_pods_already_bound_by_name_are_left_alone_and_counted(store, scheduler):
    add_node(store, "node-1", cpu="2")
    store.create("pods", "default", pod("pinned", ["true"], cpu="2", node_name="node-1"))
    store.create("pods", "default", pod("other", ["true"], cpu="1"))
    assert wait_for(lambda: unschedulable_message(store, "other")) == "0/1 nodes are available: 1 Insufficient cpu."
    assert scheduled_condition(store, "pinned") is None


def test_pods_for_another_scheduler_are_left_alone(store, scheduler):
    add_node(store, "node-1")
    other = pod("other", ["true"])
    other["spec"]["schedulerName"] = "my-scheduler"
    store.create("pods", "default", other)
    store.create("pods", "default", pod("mine", ["true"]))
    wait_for(lambda: node_of(store, "mine"))
    assert scheduler.wait_idle()
    assert node_of(store, "other") is None and scheduled_condition(store, "other") is None


def test_a_scheduler_started_late_counts_pods_bound_before_it_and_schedules_the_rest(store):
    add_node(store, "node-1", cpu="2")
    store.create("pods", "default", pod("early", ["true"], cpu="2", node_name="node-1"))
    store.create("pods", "default", pod("waiting", ["true"], cpu="1"))
    late = EmbeddedScheduler(store)
    late.start()
    try:
        assert wait_for(lambda: unschedulable_message(store, "waiting")) == "0/1 nodes are available: 1 Insufficient cpu."
        store.delete("pods", "default", "early", grace_period_seconds=0)
        assert wait_for(lambda: node_of(store, "waiting")) == "node-1"
    finally:
        late.stop()


def test_changes_queued_while_the_scheduler_is_busy_are_compressed_to_the_newest(store):
    """Like client-go's DeltaFIFO: one queued key per pod, whatever the number of changes behind it."""
    idle = EmbeddedScheduler(store)  # not started: nothing drains its queue
    _, unsubscribe = store.subscribe("pods", None, idle._on_event)
    try:
        store.create("pods", "default", pod("p", ["true"]))
        store.mutate("pods", "default", "p", lambda o: o["metadata"].setdefault("labels", {}).update(a="1"))
        store.delete("pods", "default", "p", grace_period_seconds=0)
        recreated = store.create("pods", "default", pod("p", ["true"]))
    finally:
        unsubscribe()
    assert idle._queue.qsize() == 1
    event_type, entry = idle._take_newest(("pods", ("default", "p")))
    assert event_type == "ADDED" and entry.meta["uid"] == recreated["metadata"]["uid"]


def test_a_pod_recreated_under_the_same_name_does_not_inherit_the_old_pods_place(store):
    """Delete + re-create compressed into one change: the old pod's node resources are freed."""
    sched = EmbeddedScheduler(store)  # driven by hand: _apply is the state machine the thread runs
    add_node(store, "node-1", cpu="2")
    sched._apply("ADDED", "nodes", store.get("nodes", None, "node-1"))
    old = pod("p", ["true"], cpu="2", node_name="node-1")
    old["metadata"]["uid"], old["metadata"]["resourceVersion"] = "old-uid", "10"
    sched._apply("ADDED", "pods", old)
    assert sched._used["node-1"]["cpu"] == 2000
    new = pod("p", ["true"], cpu="2")
    new["metadata"]["uid"], new["metadata"]["resourceVersion"] = "new-uid", "12"
    sched._apply("ADDED", "pods", new)
    assert sched._used["node-1"].get("cpu", 0) == 0
    assert sched._pending[("default", "p")].info.uid == "new-uid"


def test_a_pending_pod_recreated_under_the_same_name_is_scheduled_as_the_new_pod(store, scheduler):
    add_node(store, "node-1", cpu="2")
    store.create("pods", "default", pod("p", ["true"], cpu="4"))
    assert wait_for(lambda: unschedulable_message(store, "p"))
    store.delete("pods", "default", "p", grace_period_seconds=0)
    recreated = store.create("pods", "default", pod("p", ["true"], cpu="1"))
    assert wait_for(lambda: node_of(store, "p")) == "node-1"
    assert get_pod(store, "p")["metadata"]["uid"] == recreated["metadata"]["uid"]


def test_the_scheduler_forgets_deleted_pods(store, scheduler):
    """A long-lived embedded cluster churns through many pod names: nothing may be kept per name."""
    add_node(store, "node-1")
    for i in range(20):
        store.create("pods", "default", pod(f"churn-{i}", ["true"]))
    assert wait_for(lambda: all(node_of(store, f"churn-{i}") for i in range(20)))
    for i in range(20):
        store.delete("pods", "default", f"churn-{i}", grace_period_seconds=0)
    assert scheduler.wait_idle()
    assert not [slot for slot in scheduler._versions if slot[0] == "pods"]
    assert not scheduler._bound and not scheduler._pending
