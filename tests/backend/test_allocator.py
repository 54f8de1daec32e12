"""Allocation rules, one per test, in the style of Spark's ExecutorPodsAllocatorSuite.

A manual clock, the in-memory FakePodApi and the deterministic store: the test decides what the
backend "sees" (``see``) and when snapshots are delivered (``deliver``), and reads what was asked
of the API.
"""

from __future__ import annotations

from fakes import (
    AlreadyExists, ApiUnreachable, FakePodApi, Forbidden, KubernetesApiError, ServerError, TooManyRequests, executor_pod, failed_pod, make_error, pod_factory, run_async, settle,
    unschedulable_pod,
)

from dask_k8s_backend.backend.allocation.allocator import ExecutorPodsAllocator
from dask_k8s_backend.backend.allocation.rules import AllocatorState, Created, plan
from dask_k8s_backend.backend.executors.failures import FailureTracker
from dask_k8s_backend.backend.observation.snapshots import DeterministicSnapshotsStore
from dask_k8s_backend.clock import ManualClock
from dask_k8s_backend.config import AllocationSettings, ExecutorSettings


class Harness:
    def __init__(self, max_failures=None, api=None, max_concurrent_requests=32, nodes=None, **settings):
        settings.setdefault("batch_size", 5)
        settings.setdefault("batch_delay", 1.0)
        self.settings = AllocationSettings(**settings)
        self.clock = ManualClock()
        self.api = api or FakePodApi()
        self.store = DeterministicSnapshotsStore(clock=self.clock)
        self.known: set[int] = set()
        self.reports: list[tuple[int, str]] = []
        self.limits: list[tuple[str, str]] = []
        self.failures = FailureTracker(settings=ExecutorSettings(max_failures=max_failures), clock=self.clock,
                                       on_failure_limit=lambda g, m: self.limits.append((g, m)))
        self.allocator = ExecutorPodsAllocator(
            api=self.api, settings=self.settings, pod_factory=pod_factory(), failures=self.failures, clock=self.clock,
            known_executors=lambda: self.known, on_pending_reason=lambda i, r: self.reports.append((i, r)),
            max_concurrent_requests=max_concurrent_requests, nodes=lambda: nodes,
        )
        self.allocator.start(self.store)

    def created(self) -> list[int]:
        return [int(name.rsplit("-", 1)[1]) for name in self.api.created]

    def deleted(self) -> list[int]:
        return [int(name.rsplit("-", 1)[1]) for name in self.api.deleted]

    def see(self, pod, deleted=False):
        self.store.update_pod(pod, deleted=deleted)

    def see_created(self, phase="Running"):
        """The backend sees every pod created so far in ``phase``."""
        for name in self.api.created:
            pod = self.api.pods.get(name)
            if pod is not None:
                group = pod["metadata"]["labels"]["dask-k8s-backend/group"]
                self.see(executor_pod(int(name.rsplit("-", 1)[1]), group, phase))

    async def deliver(self):
        await self.store.notify_subscribers()
        await self.allocator.wait_idle()

    async def tick(self, seconds):
        self.clock.advance(seconds)
        await settle()
        await self.allocator.wait_idle()

    async def set_target(self, n, group="default"):
        self.allocator.set_target(n, group)
        await settle()
        await self.allocator.wait_idle()

    async def stop(self):
        await self.allocator.stop()


@run_async
async def test_initially_requests_executors_in_slow_start_batches():
    h = Harness(batch_size=4)
    await h.set_target(10)
    sizes = [len(h.created())]
    for _ in range(4):
        await h.tick(1.0)
        sizes.append(len(h.created()) - sum(sizes))
    assert sizes == [1, 2, 4, 3, 0]
    assert h.created() == list(range(1, 11))
    await h.stop()


@run_async
async def test_new_target_acts_without_waiting_for_the_next_round():
    h = Harness()
    await h.deliver()
    await h.set_target(1)
    assert h.created() == [1]  # no snapshot delivered, no clock advanced
    await h.stop()


@run_async
async def test_without_immediate_round_a_new_target_waits_for_the_next_snapshots():
    h = Harness(immediate_round=False, slow_start=False)
    await h.set_target(3)
    assert h.created() == []
    await h.deliver()
    assert h.created() == [1, 2, 3]
    await h.stop()


@run_async
async def test_spark_batching_waits_until_every_created_pod_is_seen():
    h = Harness(immediate_round=False, slow_start=False, batch_size=2)
    await h.set_target(5)
    await h.deliver()
    assert h.created() == [1, 2]
    await h.tick(1.0)
    await h.deliver()
    assert h.created() == [1, 2]  # 1 and 2 are not seen yet
    h.see_created("Pending")
    await h.deliver()
    assert h.created() == [1, 2, 3, 4]
    await h.stop()


@run_async
async def test_running_pending_and_unseen_pods_count_toward_the_target():
    h = Harness(batch_size=10, slow_start=False)
    h.see(executor_pod(1, phase="Running"))
    h.see(executor_pod(2, phase="Pending"))
    h.known = {1, 2}  # so the initial target of 0 does not scale them down
    await h.deliver()
    await h.set_target(4)
    assert h.created() == [3, 4]
    await h.tick(1.0)
    await h.deliver()
    assert h.created() == [3, 4]
    await h.stop()


@run_async
async def test_replaces_a_failed_pod():
    h = Harness()
    await h.set_target(2)
    await h.tick(1.0)
    h.see_created("Running")
    await h.deliver()
    assert h.created() == [1, 2]
    h.see(failed_pod(1))
    await h.deliver()
    await h.tick(1.0)  # batch-delay after the last creating round
    assert h.created() == [1, 2, 3]
    await h.stop()


@run_async
async def test_executor_ids_are_never_reused_and_unique_across_groups():
    h = Harness()
    await h.set_target(2, "cpu")
    await h.set_target(2, "gpu")
    await h.tick(1.0)
    h.see_created("Running")
    h.see(executor_pod(1, "cpu"), deleted=True)
    await h.deliver()
    await h.tick(1.0)
    created = h.created()
    assert len(created) == len(set(created)) == 5 and max(created) == 5
    groups = {i: h.allocator.group_of(i) for i in created}
    assert sorted(groups.values()) == ["cpu", "cpu", "cpu", "gpu", "gpu"]
    assert groups[5] == "cpu"  # the replacement of executor 1 got a new id
    await h.stop()


@run_async
async def test_does_not_exceed_max_pending_pods():
    h = Harness(max_pending_pods=3, batch_size=10)
    await h.set_target(10)
    await h.tick(1.0)
    assert h.created() == [1, 2, 3]  # slow start: 1, then 2
    await h.tick(1.0)
    assert h.created() == [1, 2, 3]  # 4 allowed, but 3 pending already
    h.see(executor_pod(1, phase="Running"))
    await h.deliver()
    await h.tick(1.0)
    assert h.created() == [1, 2, 3, 4]
    await h.stop()


@run_async
async def test_times_out_pods_never_seen():
    h = Harness(executor_timeout=60.0)
    await h.set_target(1)
    await h.tick(61)
    await h.deliver()
    assert h.deleted() == [1]
    assert h.failures.failure_count("default") == 1
    assert "executor-timeout" in h.failures.explanation(1)
    assert h.created() == [1, 2]  # and replaced
    await h.stop()


@run_async
async def test_scale_down_deletes_unknown_pending_pods_first():
    h = Harness()
    for executor_id, phase in [(1, "Running"), (2, "Pending"), (3, "Pending"), (4, "Running"), (5, "Running")]:
        h.see(executor_pod(executor_id, phase=phase))
    h.known = {1, 2, 3, 4, 5}
    await h.deliver()
    await h.set_target(5)
    assert h.created() == [] and h.deleted() == []
    h.known = {1, 4}
    await h.set_target(2)
    assert sorted(h.deleted()) == [2, 3, 5]  # pending unknown (3, 2), then running unknown (5); never known 1, 4
    assert h.deleted()[:2] == [3, 2]
    assert h.failures.failure_count("default") == 0
    assert "above its target" in h.failures.deletion_reason(2)
    await h.stop()


@run_async
async def test_scale_down_deletes_the_executors_the_scheduler_asked_to_kill():
    h = Harness()
    for executor_id in (1, 2, 3):
        h.see(executor_pod(executor_id, phase="Running"))
    h.known = {1, 2, 3}
    await h.deliver()
    await h.set_target(3)
    h.allocator.kill_executors([2])
    await h.set_target(2)
    assert h.deleted() == [2] and h.created() == []
    await h.deliver()
    assert h.deleted() == [2]  # not deleted twice while the deletion is in progress
    await h.stop()


@run_async
async def test_a_pending_reason_is_reported_once_then_times_out_into_an_actionable_failure():
    h = Harness(pending_timeout=120.0)
    await h.set_target(1)
    h.see(unschedulable_pod(1))
    await h.deliver()
    await h.tick(60)
    await h.deliver()
    assert len(h.reports) == 1 and h.reports[0][0] == 1 and "Unschedulable" in h.reports[0][1]
    await h.tick(61)
    await h.deliver()
    assert h.deleted() == [1]
    explanation = h.failures.explanation(1)
    assert "pending-timeout" in explanation and "Insufficient cpu" in explanation
    await h.stop()


@run_async
async def test_api_errors_halve_the_batch_and_back_off():
    h = Harness(batch_size=8)
    await h.set_target(100)
    for _ in range(3):
        await h.tick(1.0)
    assert len(h.created()) == 1 + 2 + 4 + 8
    h.api.fail_next("create_pod", make_error(ServerError, "etcd timeout"), times=2)
    await h.tick(1.0)
    assert len(h.created()) == 15 + 6
    assert h.allocator.state.batch_allowance == 4
    await h.tick(1.0)
    assert len(h.created()) == 21  # backing off: 2 s after the first failed round
    await h.tick(1.0)
    assert len(h.created()) == 25
    assert h.failures.failure_count("default") == 0  # throttling is not the pods' fault
    await h.stop()


@run_async
async def test_too_many_requests_honours_retry_after():
    h = Harness(batch_size=8)
    h.api.fail_next("create_pod", make_error(TooManyRequests, "slow down", retry_after=7))
    await h.set_target(4)
    assert h.created() == []
    await h.tick(6.0)
    assert h.created() == []
    await h.tick(1.0)
    assert h.created() == [2]
    await h.stop()


@run_async
async def test_a_refused_creation_counts_as_a_failure_of_its_group():
    h = Harness()
    h.api.fail_next("create_pod", make_error(KubernetesApiError, "spec.containers: Required", code=422, reason="Invalid"))
    await h.set_target(1)
    assert h.failures.failure_count("default") == 1
    assert "spec.containers" in h.failures.explanation(1)
    await h.stop()


@run_async
async def test_a_blocked_group_gets_no_pods_while_another_group_is_still_replaced():
    h = Harness(max_failures=1)
    await h.set_target(1, "gpu")
    await h.set_target(1, "cpu")
    h.failures.record_failure("gpu", 1, "executor 1 failed: ErrImagePull")
    h.see_created("Running")
    h.see(failed_pod(1, group="gpu"))
    h.see(executor_pod(2, group="cpu", phase="Succeeded"))  # ended without failing: replaced, not counted
    await h.deliver()
    await h.tick(1.0)
    assert [h.allocator.group_of(i) for i in h.created()[2:]] == ["cpu"]
    assert h.limits and h.limits[0][0] == "gpu"
    await h.stop()


@run_async
async def test_a_failure_is_counted_before_the_failed_pod_is_replaced():
    h = Harness(max_failures=2)
    await h.set_target(2)
    h.see_created("Running")
    await h.deliver()
    await h.tick(1.0)  # slow start: the second pod comes in the next round
    h.see_created("Running")
    assert h.created() == [1, 2]
    h.see(failed_pod(1))
    h.see(failed_pod(2))  # the lifecycle manager has not run: the round itself counts both failures
    await h.deliver()
    await h.tick(1.0)
    assert h.created() == [1, 2]  # the limit (2) was reached before any replacement
    assert h.limits and h.limits[0][0] == "default"
    await h.stop()


@run_async
async def test_a_creation_still_waiting_for_its_turn_is_dropped_once_its_group_is_blocked():
    """The plan was made before the group hit its limit; a request not yet sent must not be sent."""
    harness: list[Harness] = []

    class BlockingOnFirstCreate(FakePodApi):
        async def create_pod(self, pod):
            created = await super().create_pod(pod)
            if len(self.created) == 1:  # while it is in flight the group's pods fail: the limit is reached
                harness[0].failures.block("default", "worker group default: stopped creating pods")
            return created

    h = Harness(api=BlockingOnFirstCreate(), max_concurrent_requests=1, slow_start=False)
    harness.append(h)
    await h.set_target(3)
    assert h.created() == [1]
    assert h.allocator.pods_created == 1
    await h.tick(2.0)
    assert h.created() == [1]
    await h.stop()


def test_plan_is_pure_and_counts_unseen_creations():
    settings = AllocationSettings(batch_size=10)
    state = AllocatorState(settings=settings, targets={"default": 3}, next_executor_id=4, batch_allowance=10,
                           newly_created={3: Created("default", "app-exec-3", 0.0)})
    store = DeterministicSnapshotsStore(clock=ManualClock())
    store.update_pod(executor_pod(1, phase="Running"))
    first = plan(state, store.current, now=1.0)
    assert dict(first.creations) == {"default": (4,)}
    assert plan(state, store.current, now=1.0) == first


@run_async
async def test_an_already_exists_answer_to_a_retried_creation_counts_as_created():
    h = Harness()
    h.api.fail_next("create_pod", make_error(AlreadyExists,
                                             'pods "app-exec-1" already exists'))
    await h.set_target(1)
    assert h.allocator.outstanding() == 1 and h.failures.failure_count("default") == 0
    await h.tick(1.0)
    assert h.api.requests["create_pod"] == 1  # not created again
    await h.stop()


@run_async
async def test_an_exceeded_quota_backs_off_instead_of_counting_failures():
    h = Harness()
    h.api.fail_next("create_pod", make_error(Forbidden,
                                             'pods "app-exec-1" is forbidden: exceeded quota: q, requested: cpu=1'))
    await h.set_target(1)
    assert h.failures.failure_count("default") == 0 and h.created() == []
    await h.tick(2.0)
    assert h.created() == [2]
    await h.stop()


@run_async
async def test_a_quota_whose_status_is_not_counted_yet_backs_off_instead_of_counting_failures():
    # upstream's ResourceQuota admission, for a quota the quota controller has not filled in yet
    h = Harness()
    h.api.fail_next("create_pod", make_error(Forbidden, 'pods "app-exec-1" is forbidden: status unknown for quota: q, '
                                                        'resources: requests.cpu'))
    await h.set_target(1)
    assert h.failures.failure_count("default") == 0 and h.created() == []
    await h.tick(2.0)
    assert h.created() == [2]
    await h.stop()


@run_async
async def test_new_ids_start_after_every_id_already_seen():
    h = Harness()
    h.see(executor_pod(41, phase="Running"))
    h.known = {41}
    await h.deliver()
    await h.set_target(2)
    assert h.created() == [42]
    await h.stop()


@run_async
async def test_an_unreachable_api_server_backs_off_instead_of_counting_failures():
    h = Harness()
    h.api.fail_next("create_pod", make_error(ApiUnreachable, "connection refused"))
    await h.set_target(1)
    assert h.failures.failure_count("default") == 0
    await h.tick(2.0)
    assert h.created() == [2]
    await h.stop()


QUOTA_MESSAGE = ('pods "app-exec-2" is forbidden: exceeded quota: q, requested: requests.cpu=1, '
                 "used: requests.cpu=1, limited: requests.cpu=1")


@run_async
async def test_an_exceeded_quota_is_reported_once_with_its_numbers_and_probed_one_pod_at_a_time():
    h = Harness(batch_size=4)
    h.api.fail_next("create_pod", make_error(Forbidden, QUOTA_MESSAGE, status={"message": QUOTA_MESSAGE}), times=100)
    await h.set_target(4)
    assert h.allocator.quota_refusals == 1 and h.failures.failure_count("default") == 0
    assert len(h.reports) == 1 and "used: requests.cpu=1, limited: requests.cpu=1" in h.reports[0][1]
    attempts = h.api.requests["create_pod"]
    await h.set_target(5)  # asking for more does not hammer a full quota
    await h.tick(1.0)
    assert h.api.requests["create_pod"] == attempts
    await h.tick(1.5)  # the backoff's probe: one pod, not a batch
    assert h.api.requests["create_pod"] == attempts + 1
    assert len(h.reports) == 1  # same quota, same numbers: not reported again
    await h.stop()


@run_async
async def test_a_quota_hold_is_released_at_once_when_one_of_our_pods_finishes():
    h = Harness(batch_size=4)
    await h.set_target(1)
    h.see_created("Running")
    h.known = {1}
    await h.deliver()
    h.api.fail_next("create_pod", make_error(Forbidden, QUOTA_MESSAGE, status={"message": QUOTA_MESSAGE}), times=2)
    await h.set_target(3)
    assert h.allocator.quota_refusals == 2 and h.created() == [1]
    h.see(failed_pod(1))  # capacity frees: no need to wait for the backoff
    await h.deliver()
    assert len(h.created()) == 2, h.created()
    await h.stop()
