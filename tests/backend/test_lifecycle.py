"""Lifecycle rules, one per test, in the style of Spark's ExecutorPodsLifecycleManagerSuite."""

from __future__ import annotations

from fakes import FakePodApi, executor_pod, failed_pod, pod_factory, run_async, settle

from dask_k8s_backend.backend.allocation.allocator import ExecutorPodsAllocator
from dask_k8s_backend.backend.executors.failures import FailureTracker
from dask_k8s_backend.backend.executors.lifecycle import ExecutorPodsLifecycleManager
from dask_k8s_backend.backend.observation.snapshots import DeterministicSnapshotsStore
from dask_k8s_backend.clock import ManualClock
from dask_k8s_backend.config import AllocationSettings, ExecutorSettings


class Harness:
    def __init__(self, **settings):
        self.settings = ExecutorSettings(**settings)
        self.clock = ManualClock()
        self.api = FakePodApi()
        self.store = DeterministicSnapshotsStore(clock=self.clock)
        self.lost: list[tuple[int, str]] = []
        self.limits: list[tuple[str, str]] = []
        self.known: set[int] = set()
        self.failures = FailureTracker(settings=self.settings, clock=self.clock,
                                       on_failure_limit=lambda g, m: self.limits.append((g, m)))
        self.lifecycle = ExecutorPodsLifecycleManager(
            api=self.api, settings=self.settings, failures=self.failures, clock=self.clock,
            on_executor_lost=self.on_lost, known_executors=lambda: self.known)
        self.lifecycle.start(self.store)

    async def on_lost(self, executor_id, explanation):
        self.lost.append((executor_id, explanation))

    def pod(self, pod, deleted=False):
        if not deleted:
            self.api.add_pod(pod)
        self.store.update_pod(pod, deleted=deleted)

    async def deliver(self):
        await self.store.notify_subscribers()


@run_async
async def test_a_failed_pod_is_reported_lost_once_with_its_explanation_and_deleted():
    h = Harness()
    h.pod(failed_pod(1, exit_code=137, reason="OOMKilled"))
    await h.deliver()
    h.store.update_pod(failed_pod(1, exit_code=137, reason="OOMKilled"))
    await h.deliver()
    assert len(h.lost) == 1 and h.lost[0][0] == 1 and "OOMKilled" in h.lost[0][1]
    assert h.api.deleted == ["app-exec-1"]
    assert h.failures.failure_count("default") == 1


@run_async
async def test_a_succeeded_pod_is_removed_but_not_counted_as_a_failure():
    h = Harness()
    h.pod(executor_pod(1, phase="Succeeded"))
    await h.deliver()
    assert [i for i, _ in h.lost] == [1] and h.api.deleted == ["app-exec-1"]
    assert h.failures.failure_count("default") == 0


@run_async
async def test_a_deleted_pod_is_reported_once_and_not_deleted_again():
    h = Harness()
    h.pod(executor_pod(1, phase="Running"), deleted=True)
    await h.deliver()
    h.store.update_pod(executor_pod(1, phase="Running"), deleted=True)
    await h.deliver()
    assert [i for i, _ in h.lost] == [1] and "deleted from outside" in h.lost[0][1]
    assert h.api.deleted == [] and h.failures.failure_count("default") == 0


@run_async
async def test_without_delete_on_termination_the_pod_is_labelled_inactive_and_kept():
    h = Harness(delete_on_termination=False)
    h.pod(failed_pod(1))
    await h.deliver()
    assert h.api.deleted == []
    assert h.api.pods["app-exec-1"]["metadata"]["labels"]["dask-k8s-backend/inactive"] == "true"
    h.store.update_pod(h.api.pods["app-exec-1"])  # the relabelled pod comes back through the watch
    await h.deliver()
    assert len(h.lost) == 1


@run_async
async def test_missing_pods_are_treated_as_deleted_after_the_delta():
    h = Harness(missing_pod_detect_delta=30.0)
    h.pod(executor_pod(1, phase="Running"))
    h.known = {1, 2}  # 2 registered but its pod never appeared in any snapshot
    await h.deliver()
    h.clock.advance(10)
    h.store.replace_snapshot([])
    await h.deliver()
    assert h.lost == []  # missing for less than the delta
    h.clock.advance(25)
    h.store.replace_snapshot([])
    await h.deliver()
    assert [i for i, _ in h.lost] == [1, 2]
    assert "missing-pod-detect-delta" in h.lost[0][1]
    h.clock.advance(60)
    h.store.replace_snapshot([])
    await h.deliver()
    assert len(h.lost) == 2


@run_async
async def test_a_pod_deleted_on_purpose_is_explained_by_the_backends_reason_and_not_counted():
    h = Harness()
    h.failures.mark_deleted_on_purpose(1, "executor 1 was removed by the scheduler (scale down).")
    h.pod(failed_pod(1, exit_code=143))
    await h.deliver()
    assert h.lost == [(1, "executor 1 was removed by the scheduler (scale down).")]
    assert h.failures.failure_count("default") == 0


@run_async
async def test_failures_older_than_the_validity_interval_are_forgotten():
    h = Harness(max_failures=2, failures_validity_interval=60.0)
    h.pod(failed_pod(1))
    await h.deliver()
    h.clock.advance(61)
    h.pod(failed_pod(2))
    await h.deliver()
    assert h.failures.failure_count("default") == 1 and not h.failures.is_blocked("default")
    h.pod(failed_pod(3))
    await h.deliver()
    assert h.failures.is_blocked("default")


def test_default_max_failures_is_twice_the_largest_target_and_at_least_three():
    tracker = FailureTracker(settings=ExecutorSettings(), clock=ManualClock())
    assert tracker.max_failures("default") == 3
    tracker.note_target("default", 10)
    tracker.note_target("default", 2)
    assert tracker.max_failures("default") == 20


class Backend:
    """Allocator + lifecycle manager sharing one FailureTracker, as the plugin wires them."""

    def __init__(self, max_failures):
        self.clock = ManualClock()
        self.api = FakePodApi()
        self.store = DeterministicSnapshotsStore(clock=self.clock)
        self.limits = []
        self.failures = FailureTracker(settings=ExecutorSettings(max_failures=max_failures), clock=self.clock,
                                       on_failure_limit=lambda g, m: self.limits.append((g, m)))
        self.allocator = ExecutorPodsAllocator(api=self.api, settings=AllocationSettings(batch_size=10, slow_start=False),
                                               pod_factory=pod_factory(), failures=self.failures, clock=self.clock)
        self.lifecycle = ExecutorPodsLifecycleManager(api=self.api, settings=ExecutorSettings(), failures=self.failures,
                                                      clock=self.clock, on_executor_lost=lambda i, e: None)
        self.lifecycle.start(self.store)
        self.allocator.start(self.store)

    async def fail_all(self, group, exit_code=1):
        for name, pod in list(self.api.pods.items()):
            if pod["metadata"]["labels"]["dask-k8s-backend/group"] == group:
                executor_id = int(pod["metadata"]["labels"]["dask-k8s-backend/executor-id"])
                self.store.update_pod(failed_pod(executor_id, exit_code=exit_code, group=group))
        await self.store.notify_subscribers()
        await self.allocator.wait_idle()
        self.clock.advance(1)
        await settle()
        await self.allocator.wait_idle()

    def groups_created(self):
        return [p["metadata"]["labels"]["dask-k8s-backend/group"] for p in self.api.pods.values()]


@run_async
async def test_stops_replacing_after_max_failures_and_says_why():
    b = Backend(max_failures=3)
    b.allocator.set_target(2)
    await b.allocator.wait_idle()
    await b.fail_all("default", exit_code=127)
    await b.fail_all("default", exit_code=127)
    assert b.failures.is_blocked("default")
    assert b.api.pods == {} and b.allocator.outstanding() == 0  # failed pods deleted, nothing replaced
    group, message = b.limits[0]
    assert group == "default" and "max-failures = 3" in message and "command not found" in message
    await b.allocator.stop()


@run_async
async def test_a_broken_group_does_not_stop_another_group():
    b = Backend(max_failures=2)
    b.allocator.set_target(1, "gpu")
    b.allocator.set_target(1, "cpu")
    await b.allocator.wait_idle()
    await b.fail_all("gpu")
    await b.fail_all("gpu")
    await b.fail_all("cpu")
    assert b.failures.is_blocked("gpu") and not b.failures.is_blocked("cpu")
    assert b.groups_created() == ["cpu"]
    assert [g for g, _ in b.limits] == ["gpu"]
    await b.allocator.stop()


def _evicted_from_a_lost_node(executor_id: int) -> dict:
    """A pod as upstream leaves it once its node is unreachable and its toleration ran out: Terminating for good."""
    pod = executor_pod(executor_id, phase="Running")
    pod["metadata"]["deletionTimestamp"] = "2026-11-28T16:00:00Z"
    pod["spec"]["nodeName"] = "node-1"
    pod["status"]["conditions"] = [
        {"type": "Ready", "status": "False"},
        {"type": "DisruptionTarget", "status": "True", "reason": "DeletionByTaintManager",
         "message": "Taint manager: deleting due to NoExecute taint"},
    ]
    return pod


@run_async
async def test_a_pod_evicted_from_a_lost_node_is_reported_lost_once_without_a_failure_or_a_second_delete():
    h = Harness()
    h.pod(_evicted_from_a_lost_node(1))
    await h.deliver()
    h.store.update_pod(_evicted_from_a_lost_node(1))
    await h.deliver()
    assert [i for i, _ in h.lost] == [1] and "lost with node node-1" in h.lost[0][1]
    assert h.api.deleted == [] and h.failures.failure_count("default") == 0


@run_async
async def test_a_pod_terminating_on_a_live_node_is_not_reported_until_it_is_gone():
    h = Harness()
    terminating = executor_pod(1, phase="Running")
    terminating["metadata"]["deletionTimestamp"] = "2026-11-28T16:00:00Z"
    h.pod(terminating)
    await h.deliver()
    assert h.lost == []
    h.store.update_pod(terminating, deleted=True)
    await h.deliver()
    assert [i for i, _ in h.lost] == [1]


def _deleted_from_outside(executor_id: int, exit_code: int, reason: str = "Error") -> dict:
    """A pod `kubectl delete` stopped: the kubelet reports it Failed with the exit of the deletion's SIGTERM."""
    pod = failed_pod(executor_id, exit_code=exit_code, reason=reason)
    pod["metadata"]["deletionTimestamp"] = "2026-11-28T16:00:30Z"
    pod["metadata"]["deletionGracePeriodSeconds"] = 30
    return pod


@run_async
async def test_a_pod_deleted_from_outside_and_stopped_by_its_sigterm_is_lost_not_a_failure():
    # Spark: a deleted executor pod is PodDeleted, "deleted by a user or the framework", never counted
    # toward spark.executor.maxNumFailures; three such deletions must not block a group limited to 2.
    h = Harness(max_failures=2, failures_validity_interval=3600.0)
    for executor_id, code in ((1, 143), (2, 137), (3, 143)):
        h.pod(_deleted_from_outside(executor_id, code))  # seen Failed before it is gone (upstream's watch)
        await h.deliver()
        h.clock.advance(1)
    h.pod(_deleted_from_outside(4, 143), deleted=True)  # or only as DELETED
    await h.deliver()
    assert [i for i, _ in h.lost] == [1, 2, 3, 4]
    assert h.failures.failure_count("default") == 0 and not h.failures.is_blocked("default") and h.limits == []
    assert "deleted from outside the backend" in h.lost[0][1] and "exit code 143" in h.lost[0][1]
    assert "not counted as a failure" in h.lost[0][1]


@run_async
async def test_a_pod_that_failed_on_its_own_while_being_deleted_still_counts():
    h = Harness(max_failures=2)
    h.pod(_deleted_from_outside(1, 1))  # the worker crashed (exit 1), not stopped by the signal
    h.pod(_deleted_from_outside(2, 137, reason="OOMKilled"))
    await h.deliver()
    assert h.failures.failure_count("default") == 2 and h.failures.is_blocked("default")
    h.pod(failed_pod(3, exit_code=143))  # SIGTERM without any deletion: not asked for, so a failure
    await h.deliver()
    assert h.failures.failure_count("default") == 3
