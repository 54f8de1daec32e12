"""Embedded admission (LimitRange, ResourceQuota) on the real ObjectStore."""

from __future__ import annotations

import threading
import time

import pytest

from dask_k8s_backend.embedded.api.admission import Admission
from dask_k8s_backend.embedded.status import StatusError
from dask_k8s_backend.embedded.store.object_store import ObjectStore


def pod(name, cpu="1", memory=None):
    requests = {"cpu": cpu}
    if memory:
        requests["memory"] = memory
    return {"metadata": {"name": name}, "spec": {"containers": [{"name": "worker", "image": "x", "resources": {"requests": requests}}]}}


@pytest.fixture
def store():
    s = ObjectStore()
    s.create("namespaces", None, {"metadata": {"name": "dask"}})
    return s


def wait_until(fn, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if fn():
            return True
        time.sleep(0.01)
    return fn()


def test_a_pod_over_the_quota_is_refused_with_the_quotas_numbers(store):
    store.create("resourcequotas", "dask", {"metadata": {"name": "q"}, "spec": {"hard": {"requests.cpu": "4"}}})
    admission = Admission(store)
    admission.create_pod("dask", pod("a", "3"))
    with pytest.raises(StatusError) as info:
        admission.create_pod("dask", pod("x", "2"))
    assert info.value.code == 403
    assert info.value.message == ('pods "x" is forbidden: exceeded quota: q, requested: requests.cpu=2, '
                                  "used: requests.cpu=3, limited: requests.cpu=4")
    assert [p["metadata"]["name"] for p in store.list("pods", "dask")[0]] == ["a"]


def test_capacity_frees_when_a_pod_finishes(store):
    store.create("resourcequotas", "dask", {"metadata": {"name": "q"}, "spec": {"hard": {"pods": "1"}}})
    admission = Admission(store)
    admission.create_pod("dask", pod("a"))
    with pytest.raises(StatusError):
        admission.create_pod("dask", pod("b"))
    store.mutate("pods", "dask", "a", lambda p: p.setdefault("status", {}).update(phase="Succeeded"), status_only=True)
    admission.create_pod("dask", pod("b"))


def test_concurrent_creations_never_overrun_the_quota(store):
    store.create("resourcequotas", "dask", {"metadata": {"name": "q"}, "spec": {"hard": {"pods": "5"}}})
    admission = Admission(store)
    refused = []

    def create(i):
        try:
            admission.create_pod("dask", pod(f"p{i}"))
        except StatusError as e:
            refused.append(e)

    threads = [threading.Thread(target=create, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert len(store.list("pods", "dask")[0]) == 5 and len(refused) == 15


def test_limit_range_defaults_are_stored_and_violations_refused(store):
    store.create("limitranges", "dask", {"metadata": {"name": "lr"}, "spec": {"limits": [
        {"type": "Container", "default": {"memory": "1Gi", "cpu": "1"}, "defaultRequest": {"memory": "512Mi"},
         "max": {"cpu": "2"}}]}})
    admission = Admission(store)
    created = admission.create_pod("dask", pod("a", "500m"))
    assert created["spec"]["containers"][0]["resources"] == {
        "requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}}
    too_big = pod("b", "1")
    too_big["spec"]["containers"][0]["resources"]["limits"] = {"cpu": "3"}
    with pytest.raises(StatusError) as info:
        admission.create_pod("dask", too_big)
    assert info.value.code == 403
    assert info.value.message == 'pods "b" is forbidden: maximum cpu usage per Container is 2, but limit is 3'


def test_a_quota_on_memory_refuses_pods_that_do_not_set_it(store):
    store.create("resourcequotas", "dask", {"metadata": {"name": "q"}, "spec": {"hard": {"requests.memory": "4Gi"}}})
    with pytest.raises(StatusError) as info:
        Admission(store).create_pod("dask", pod("a"))
    assert info.value.message == 'pods "a" is forbidden: failed quota: q: must specify requests.memory for: worker'


def test_quota_status_used_follows_pods(store):
    store.create("resourcequotas", "dask", {"metadata": {"name": "q"}, "spec": {"hard": {"requests.cpu": "4", "pods": "3"}}})
    admission = Admission(store)
    admission.start()
    try:
        used = lambda: store.get("resourcequotas", "dask", "q").get("status", {}).get("used")  # noqa: E731
        assert wait_until(lambda: used() == {"requests.cpu": "0", "pods": "0"})
        admission.create_pod("dask", pod("a", "1500m"))
        assert wait_until(lambda: used() == {"requests.cpu": "1500m", "pods": "1"})
        store.delete("pods", "dask", "a")
        assert wait_until(lambda: used() == {"requests.cpu": "0", "pods": "0"})
        assert store.get("resourcequotas", "dask", "q")["status"]["hard"] == {"requests.cpu": "4", "pods": "3"}
    finally:
        admission.stop()
    assert not any(t.name == "embedded-quota-controller" for t in threading.enumerate())


def test_a_scoped_quota_only_limits_the_pods_it_tracks(store):
    store.create("resourcequotas", "dask", {"metadata": {"name": "no-best-effort"},
                                            "spec": {"hard": {"pods": "0"}, "scopes": ["BestEffort"]}})
    admission = Admission(store)
    admission.create_pod("dask", pod("burstable", "1"))  # requests cpu: not BestEffort, not tracked
    best_effort = {"metadata": {"name": "be"}, "spec": {"containers": [{"name": "worker", "image": "x"}]}}
    with pytest.raises(StatusError, match="exceeded quota: no-best-effort, requested: pods=1, used: pods=0, limited: pods=0"):
        admission.create_pod("dask", best_effort)
