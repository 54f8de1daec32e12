"""Shutdown on a lost node: pods no kubelet will confirm deleted are force-deleted after the normal delete.

Rules of ``lost_node_reason`` and ``LostNodePods`` (fake clock), and ``BackendComponents.shutdown``
on an in-memory Pod API whose deletions, like a real one's, wait for the node's kubelet.
"""

from __future__ import annotations

import logging
from typing import Any

from fakes import SELECTOR, FakePodApi, Forbidden, executor_pod, run_async

from dask_k8s_backend.backend.components import BackendComponents
from dask_k8s_backend.backend.observation.nodes import LostNodePods, lost_node_reason
from dask_k8s_backend.clock import ManualClock


def node(name: str, ready: str | None) -> dict:
    conditions = [] if ready is None else [
        {"type": "Ready", "status": ready, "reason": "NodeStatusUnknown", "lastTransitionTime": "2026-11-28T17:00:00Z",
         "message": "Kubelet stopped posting node status."}]
    return {"metadata": {"name": name}, "status": {"conditions": conditions}}


NODES = {"alive": node("alive", "True"), "dead": node("dead", "Unknown"), "sick": node("sick", "False"),
         "new": node("new", None)}


def test_a_node_gone_unreachable_or_not_ready_is_lost_and_a_ready_one_is_not():
    assert lost_node_reason("gone", NODES) == "node gone no longer exists"
    assert lost_node_reason("dead", NODES).startswith("node dead is unreachable (Ready Unknown since 2026-11-28T17:00")
    assert "Kubelet stopped posting node status." in lost_node_reason("dead", NODES)
    assert lost_node_reason("sick", NODES).startswith("node sick is not ready (Ready False")
    assert lost_node_reason("alive", NODES) is None
    assert lost_node_reason("new", NODES) is None, "a node that has not reported yet is not lost"


class KubeletPodApi(FakePodApi):
    """Deletion as on a real API server: a pod on a node stays Terminating until its kubelet confirms it.

    The kubelet of node ``alive`` confirms at once; no other node's does. Grace period 0 removes a
    pod at once (a force delete). Nodes are listed from ``nodes``, or refused with ``refuse``.
    """

    def __init__(self, nodes: dict[str, dict], refuse: Exception | None = None) -> None:
        super().__init__()
        self.nodes, self.refuse = nodes, refuse
        self.forced: list[str] = []

    def add_on(self, executor_id: int, node_name: str) -> None:
        pod = executor_pod(executor_id, phase="Running")
        pod["spec"]["nodeName"] = node_name
        self.add_pod(pod)

    async def delete_pods(self, label_selector: str) -> None:
        self._request("delete_pods")
        for name in list(self.pods):
            await self._delete(name, None)

    async def delete_pod(self, name: str, grace_period_seconds: int | None = None) -> None:
        self._request("delete_pod")
        if grace_period_seconds == 0:
            self.forced.append(name)
        await self._delete(name, grace_period_seconds)

    async def _delete(self, name: str, grace: int | None) -> None:
        pod = self.pods.get(name)
        if pod is None:
            return
        if grace == 0 or pod["spec"].get("nodeName") == "alive":
            self.remove_pod(name)
        elif not pod["metadata"].get("deletionTimestamp"):
            pod["metadata"]["deletionTimestamp"] = "2026-11-28T17:01:00Z"

    async def list_nodes(self) -> list[dict]:
        self._request("list_nodes")
        if self.refuse is not None:
            raise self.refuse
        return list(self.nodes.values())

    async def close(self) -> None:
        pass


class Stopped:
    """A loop or heartbeat that is only stopped at shutdown."""

    async def stop(self, **_: Any) -> None:
        pass


def components(api: KubeletPodApi) -> BackendComponents:
    stub: Any = Stopped()
    return BackendComponents(api=api, store=stub, failures=stub, allocator=stub, lifecycle=stub, watch=stub,
                             polling=stub, nodes=stub, heartbeat=stub, selector=SELECTOR, clock=ManualClock())


@run_async
async def test_shutdown_force_deletes_the_pods_of_a_dead_node_after_the_normal_delete_and_says_why(caplog):
    api = KubeletPodApi(NODES)
    api.add_on(1, "alive")
    api.add_on(2, "dead")
    api.add_on(3, "sick")
    with caplog.at_level(logging.WARNING, logger="dask_k8s_backend.backend.observation.nodes"):
        remaining = await components(api).shutdown(timeout=3)
    assert remaining == 0 and not api.pods
    assert sorted(api.forced) == ["app-exec-2", "app-exec-3"], "only pods whose node is lost are forced"
    messages = [r.getMessage() for r in caplog.records]
    assert any("app-exec-2 force-deleted (grace period 0)" in m and "node dead is unreachable" in m for m in messages)
    assert any("app-exec-3 force-deleted" in m and "node sick is not ready" in m for m in messages)


@run_async
async def test_shutdown_force_deletes_a_pod_whose_node_is_gone():
    api = KubeletPodApi({"alive": NODES["alive"]})
    api.add_on(1, "removed-node")
    assert await components(api).shutdown(timeout=3) == 0
    assert api.forced == ["app-exec-1"]


@run_async
async def test_pods_on_a_ready_node_are_only_deleted_normally():
    api = KubeletPodApi(NODES)
    api.add_on(1, "alive")
    assert await components(api).shutdown(timeout=3) == 0
    assert api.forced == [] and api.requests["list_nodes"] == 0, "nodes are listed only while a pod is terminating"


@run_async
async def test_without_permission_to_list_nodes_nothing_is_forced_and_that_is_said_once(caplog):
    api = KubeletPodApi(NODES, refuse=Forbidden("nodes is forbidden"))
    api.add_on(2, "dead")
    lost = LostNodePods(api, interval=0)
    with caplog.at_level(logging.INFO, logger="dask_k8s_backend.backend.observation.nodes"):
        await api.delete_pods(SELECTOR)
        for _ in range(3):
            assert await lost.force_delete(list(api.pods.values())) == 0
    assert api.requests["list_nodes"] == 1 and api.forced == []
    assert sum("may not list nodes" in r.getMessage() for r in caplog.records) == 1


@run_async
async def test_nodes_are_listed_at_most_once_per_interval():
    clock = ManualClock()
    api = KubeletPodApi({"dead": node("dead", "True")})
    api.add_on(2, "dead")
    await api.delete_pods(SELECTOR)
    lost = LostNodePods(api, interval=1.0, clock=clock.now)
    pods = list(api.pods.values())
    assert await lost.force_delete(pods) == 0  # the node still looks Ready: its lease has not expired yet
    assert await lost.force_delete(pods) == 0 and api.requests["list_nodes"] == 1
    api.nodes["dead"] = node("dead", "Unknown")
    clock.advance(1.0)
    assert await lost.force_delete(pods) == 1 and api.requests["list_nodes"] == 2
