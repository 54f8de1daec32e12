"""Stranded tasks: the rule that decides which waiting tasks no worker will ever run, and the
KilledWorker note, on hand-made task and worker objects (no scheduler)."""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field

from distributed.core import Status
from distributed.scheduler import KilledWorker, WorkerState

from dask_k8s_backend.backend.allocation.groups import GroupRegistry, WorkerGroup
from dask_k8s_backend.backend.allocation.stranded import killed_worker_note, stranded
from dask_k8s_backend.config import load_settings


@dataclass
class Task:
    key: str
    state: str = "no-worker"
    resource_restrictions: dict = field(default_factory=dict)


def registry() -> GroupRegistry:
    settings = load_settings()
    groups = GroupRegistry(WorkerGroup("default", settings))
    groups.add(WorkerGroup("gpu", load_settings({"worker.resources": {"GPU": 1}})))
    return groups


def test_a_waiting_task_is_stranded_only_when_every_group_that_could_run_it_is_blocked():
    tasks = [Task("plain"), Task("gpu", resource_restrictions={"GPU": 1}), Task("busy", state="processing")]
    found = stranded(tasks, {"gpu": "OOMKilled (exit code 137) ... max-failures = 1"}, registry(), set())
    assert [s.key for s in found] == ["gpu"]  # 'plain' can still run on the default group
    assert "OOMKilled" in found[0].message and "'gpu'" in found[0].message


def test_a_connected_worker_of_a_blocked_group_still_runs_its_tasks():
    blocked = {"default": "x", "gpu": "y"}
    assert stranded([Task("queued", state="queued")], blocked, registry(), {"gpu"}) == []
    assert [s.key for s in stranded([Task("queued", state="queued")], blocked, registry(), set())] == ["queued"]


def test_killed_worker_is_explained_by_the_pod_or_by_the_nannys_memory_guard():
    worker = WorkerState(address="tcp://10.0.0.1:1", name="3", nthreads=1, memory_limit=128 << 20, status=Status.running,
                         pid=1, local_directory="/tmp", nanny="tcp://10.0.0.1:2", server_id="w")
    error = pickle.dumps(KilledWorker(task="t", last_worker=worker, allowed_failures=3))
    pods = {3: "app-exec-3"}
    known = killed_worker_note(error, int, {3: "executor 3 OOMKilled: ..."}.get, pods.get)
    assert "Kubernetes says: executor 3 OOMKilled" in known
    nanny = killed_worker_note(error, int, {}.get, pods.get, lambda i: True)
    assert "pod app-exec-3" in nanny and "128 MiB" in nanny and "k8s-backend.worker.memory" in nanny
    assert killed_worker_note(pickle.dumps(ValueError("x")), int, {}.get, pods.get) is None
