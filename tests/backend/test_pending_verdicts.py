"""Fast verdicts: pods that waiting cannot start fail their group after a short confirmation.

Rules of :mod:`dask_k8s_backend.pods.verdicts` on hand-made pods, and the allocator's use of them
on a manual clock (the Harness of test_allocator): unusable images and missing Secrets/ConfigMaps
fail after ``unrecoverable-pending-confirm``; a request larger than every node fails too; a full
cluster, unknown nodes or an autoscaler keep ``pending-timeout``.
"""

from __future__ import annotations

from fakes import executor_pod, run_async, unschedulable_pod
from test_allocator import Harness

from dask_k8s_backend.pods.verdicts import pod_requests, quantity, unrecoverable_reason

GIB = 1 << 30
NODES_8G = ({"cpu": 4.0, "memory": 8.0 * GIB, "pods": 110.0}, {"cpu": 4.0, "memory": 8.0 * GIB, "pods": 110.0})


def waiting_pod(executor_id: int, reason: str, message: str = "") -> dict:
    pod = executor_pod(executor_id)
    pod["status"]["containerStatuses"] = [
        {"name": "worker", "image": "dask:nope", "state": {"waiting": {"reason": reason, "message": message}}}]
    return pod


def big_pod(executor_id: int, memory: str = "64Gi", message: str = "0/2 nodes are available: 2 Insufficient memory.") -> dict:
    pod = unschedulable_pod(executor_id, message)
    pod["spec"]["containers"][0]["resources"] = {"requests": {"cpu": "1", "memory": memory}, "limits": {"memory": memory}}
    return pod


# ---------------------------------------------------------------------------------------------- verdict rules
def test_unusable_images_and_missing_config_are_unrecoverable():
    for reason in ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError"):
        assert reason in unrecoverable_reason(waiting_pod(1, reason, 'secret "s" not found'), None)


def test_a_container_still_being_created_is_not_a_verdict():
    assert unrecoverable_reason(waiting_pod(1, "ContainerCreating"), NODES_8G) is None


def test_a_request_larger_than_every_node_is_unrecoverable_and_names_both_sizes():
    verdict = unrecoverable_reason(big_pod(1), NODES_8G)
    assert "memory 64.0 GiB" in verdict and "largest: memory 8.0 GiB" in verdict


def test_a_request_that_fits_some_node_once_others_leave_keeps_waiting():
    assert unrecoverable_reason(big_pod(1, memory="6Gi"), NODES_8G) is None


def test_without_the_nodes_an_unschedulable_pod_keeps_waiting():
    assert unrecoverable_reason(big_pod(1), None) is None


def test_a_mixed_reason_or_an_autoscaler_keeps_waiting():
    mixed = "0/2 nodes are available: 1 Insufficient memory, 1 node(s) didn't match Pod's node affinity/selector."
    assert unrecoverable_reason(big_pod(1, message=mixed), NODES_8G) is None
    scaling = "0/2 nodes are available: 2 Insufficient memory. pod triggered scale-up: [pool 1->3 (max: 5)]"
    assert unrecoverable_reason(big_pod(1, message=scaling), NODES_8G) is None


def test_upstream_messages_with_a_preemption_part_are_read():
    message = ("0/2 nodes are available: 2 Insufficient memory. preemption: 0/2 nodes are available: "
               "2 Preemption is not helpful for scheduling.")
    assert unrecoverable_reason(big_pod(1, message=message), NODES_8G) is not None
    upstream_136 = ("0/2 nodes are available: 2 Insufficient memory. no new claims to deallocate, preemption: 0/2 "
                    "nodes are available: 2 Preemption is not helpful for scheduling.")
    assert unrecoverable_reason(big_pod(1, message=upstream_136), NODES_8G) is not None


def test_quantities_and_requests():
    assert quantity("cpu", "500m") == 0.5 and quantity("cpu", "2") == 2.0 and quantity("memory", "1Gi") == GIB
    pod = big_pod(1, memory="1Gi")
    pod["spec"]["initContainers"] = [{"name": "init", "resources": {"requests": {"memory": "2Gi"}}}]
    assert pod_requests(pod) == {"cpu": 1.0, "memory": 2.0 * GIB}


# ---------------------------------------------------------------------------------------------- allocator rules
@run_async
async def test_a_bad_image_fails_the_group_after_the_confirmation_not_the_pending_timeout():
    h = Harness(pending_timeout=300.0, unrecoverable_pending_confirm=10.0)
    await h.set_target(2)
    h.see(waiting_pod(1, "ErrImagePull"))
    h.see(waiting_pod(2, "ErrImagePull"))
    await h.deliver()
    await h.tick(9)
    await h.deliver()
    assert h.deleted() == [] and not h.limits
    h.see(waiting_pod(1, "ImagePullBackOff"))  # the reason changes; the verdict stays
    await h.deliver()
    await h.tick(1.5)
    await h.deliver()
    assert sorted(h.deleted()) == [1, 2]
    assert [g for g, _ in h.limits] == ["default"]
    assert "ImagePullBackOff" in h.limits[0][1] and "k8s-backend.image" in h.limits[0][1]
    assert "unrecoverable-pending-confirm" in h.failures.explanation(1)
    created = len(h.created())
    await h.tick(5)
    await h.deliver()
    assert len(h.created()) == created  # blocked: no replacements
    await h.stop()


@run_async
async def test_a_verdict_that_clears_before_the_confirmation_fails_nothing():
    h = Harness(unrecoverable_pending_confirm=10.0)
    await h.set_target(1)
    h.see(waiting_pod(1, "ErrImagePull"))
    await h.deliver()
    await h.tick(5)
    h.see(executor_pod(1, phase="Running"))
    await h.deliver()
    await h.tick(10)
    await h.deliver()
    assert h.deleted() == [] and not h.limits
    await h.stop()


@run_async
async def test_an_impossible_request_fails_fast_only_when_the_nodes_are_known():
    fast = Harness(unrecoverable_pending_confirm=10.0, nodes=NODES_8G)
    slow = Harness(unrecoverable_pending_confirm=10.0, nodes=None, pending_timeout=300.0)
    for h in (fast, slow):
        await h.set_target(1)
        h.see(big_pod(1))
        await h.deliver()
        await h.tick(11)
        await h.deliver()
    assert fast.deleted() == [1] and "more than any node can allocate" in fast.limits[0][1]
    assert slow.deleted() == [] and not slow.limits
    await fast.stop()
    await slow.stop()


@run_async
async def test_a_null_confirmation_keeps_the_pending_timeout_for_everything():
    h = Harness(unrecoverable_pending_confirm=None, pending_timeout=30.0)
    await h.set_target(1)
    h.see(waiting_pod(1, "ErrImagePull"))
    await h.deliver()
    await h.tick(11)
    await h.deliver()
    assert h.deleted() == []
    await h.tick(20)
    await h.deliver()
    assert h.deleted() == [1] and "pending-timeout" in h.failures.explanation(1)
    await h.stop()
