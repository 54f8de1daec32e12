"""Backend metrics rules (manual clock, hand-made snapshots) and their Prometheus exposition."""

from __future__ import annotations

import asyncio
from collections import Counter

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from dask_k8s_backend.backend.metrics import BUCKETS, BackendMetrics, BackendsCollector, LiveView, phases_of
from dask_k8s_backend.backend.observation.snapshots import DeterministicSnapshotsStore
from dask_k8s_backend.clock import ManualClock

from fakes import executor_pod, failed_pod


class Fixture:
    def __init__(self, app_id: str = "app-1") -> None:
        self.clock = ManualClock()
        self.store = DeterministicSnapshotsStore(clock=self.clock)
        self.on_purpose: dict[int, str] = {}
        self.failures: dict[int, str] = {}
        self.metrics = BackendMetrics(app_id=app_id, clock=self.clock, on_purpose=self.on_purpose.get,
                                      failure_of=self.failures.get)
        self.store.add_subscriber(1, self.metrics.on_snapshots)

    def see(self, pod: dict, deleted: bool = False) -> None:
        self.store.update_pod(pod, deleted=deleted)
        asyncio.run(self.store.notify_subscribers())

    def view(self) -> LiveView:
        return LiveView(metrics=self.metrics, phases=lambda: phases_of(self.store.current),
                        targets=lambda: {"default": 2}, outstanding=lambda: 1, pods_created=lambda: 3)


def scrape(*views: LiveView) -> dict[tuple[str, tuple], float]:
    registry = CollectorRegistry()
    collector = BackendsCollector()
    for view in views:
        collector.add(view)
    registry.register(collector)
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_time_to_running_is_measured_from_the_request_once_per_executor():
    f = Fixture()
    f.metrics.note_requested(1, "default")
    f.clock.advance(2.5)
    f.see(executor_pod(1, phase="Running"))
    f.clock.advance(10)
    f.see(executor_pod(1, phase="Running"))  # still Running: not measured again
    timings = f.metrics.to_running["default"]
    assert sum(timings.counts) == 1 and timings.total == 2.5
    assert timings.counts[BUCKETS.index(5.0)] == 1


def test_registration_time_is_measured_from_the_request():
    f = Fixture()
    f.metrics.note_requested(4, "gpu")
    f.clock.advance(7)
    f.metrics.note_registered(4)
    f.metrics.note_registered(99)  # requested by an earlier scheduler: unknown start, not measured
    assert f.metrics.to_registered["gpu"].total == 7 and sum(f.metrics.to_registered["gpu"].counts) == 1


def test_deletions_are_counted_once_with_who_deleted_the_pod():
    f = Fixture()
    for i in (1, 2, 3):
        f.see(executor_pod(i, phase="Running"))
    f.see(executor_pod(1, phase="Running"), deleted=True)  # nobody in the backend asked
    f.on_purpose[2] = "executor 2 was removed by the scheduler (scale down)."
    f.see(executor_pod(2, phase="Running"), deleted=True)
    f.on_purpose[3], f.failures[3] = "stayed pending", "stayed pending"
    f.see(executor_pod(3, phase="Pending"), deleted=True)
    f.see(executor_pod(3, phase="Pending"), deleted=True)
    assert f.metrics.deleted == Counter({("default", "external"): 1, ("default", "scale-down"): 1,
                                         ("default", "failure"): 1})


def test_a_failed_pod_counts_as_failed_by_its_reason_and_its_removal_as_cleanup():
    f = Fixture()
    f.see(failed_pod(5, exit_code=137, reason="OOMKilled", group="big"))
    f.see(failed_pod(5, exit_code=137, reason="OOMKilled", group="big"), deleted=True)
    evicted = executor_pod(6, phase="Failed")
    evicted["status"]["reason"] = "Evicted"
    f.see(evicted)
    assert f.metrics.failed == Counter({("big", "OOMKilled"): 1, ("default", "Evicted"): 1})
    assert f.metrics.deleted == Counter({("big", "cleanup"): 1})


def test_a_pod_that_ended_because_it_was_deleted_counts_as_a_deletion_not_a_failure():
    # A kubelet stops a deleted pod's containers (SIGTERM: exit 143) and reports the pod Failed before
    # it confirms the deletion; upstream's watch shows that status, the embedded one may coalesce it.
    f = Fixture()
    f.see(executor_pod(2, phase="Running"))
    stopped = failed_pod(2, exit_code=143)
    stopped["metadata"]["deletionTimestamp"] = "2026-11-28T16:30:00Z"
    f.see(stopped)
    f.see(stopped, deleted=True)
    assert f.metrics.failed == Counter()
    assert f.metrics.deleted == Counter({("default", "external"): 1})


def test_exposition_labels_each_sample_with_its_app_so_backends_do_not_clash():
    a, b = Fixture("app-a"), Fixture("app-b")
    for f in (a, b):
        f.see(executor_pod(1, phase="Running"))
        f.see(executor_pod(2, phase="Pending"))
        f.metrics.on_request("create", 201)
    a.metrics.on_request("delete", 404)
    samples = scrape(a.view(), b.view())
    for app in ("app-a", "app-b"):
        assert samples[("dask_k8s_executors", (("app", app), ("group", "default"), ("phase", "Running")))] == 1
        assert samples[("dask_k8s_executors", (("app", app), ("group", "default"), ("phase", "Pending")))] == 1
        assert samples[("dask_k8s_pods_created_total", (("app", app),))] == 3
        assert samples[("dask_k8s_allocator_target", (("app", app), ("group", "default")))] == 2
        assert samples[("dask_k8s_allocator_outstanding", (("app", app),))] == 1
        assert samples[("dask_k8s_api_requests_total", (("app", app), ("code", "201"), ("verb", "create")))] == 1
    assert samples[("dask_k8s_api_requests_total", (("app", "app-a"), ("code", "404"), ("verb", "delete")))] == 1
    assert ("dask_k8s_api_requests_total", (("app", "app-b"), ("code", "404"), ("verb", "delete"))) not in samples


def test_histograms_export_cumulative_buckets_and_sum():
    f = Fixture()
    for i, seconds in enumerate((0.3, 1.5, 700), start=1):
        f.metrics.note_requested(i, "default")
        f.clock.advance(seconds)
        f.metrics.note_registered(i)
    samples = scrape(f.view())
    bucket = "dask_k8s_executor_time_to_registered_seconds_bucket"
    labels = (("app", "app-1"), ("group", "default"))
    assert samples[(bucket, (*labels, ("le", "0.5")))] == 1
    assert samples[(bucket, (*labels, ("le", "2.0")))] == 2
    assert samples[(bucket, (*labels, ("le", "600.0")))] == 2
    assert samples[(bucket, (*labels, ("le", "+Inf")))] == 3
    assert samples[("dask_k8s_executor_time_to_registered_seconds_count", labels)] == 3


def test_api_actions_are_counted_under_kubernetes_verbs():
    from dask_k8s_backend.kube.pod_api import verb_of

    assert [verb_of(a) for a in ("list pods (a=b) in namespace x", "watch pods (a=b) in namespace x",
                                 "create pod p in namespace x", "delete pod p in namespace x",
                                 "delete pods (a=b) in namespace x", "patch the labels of pod p in namespace x",
                                 "read the log of pod p in namespace x", "list nodes")] == \
        ["list", "watch", "create", "delete", "deletecollection", "patch", "get", "list"]
