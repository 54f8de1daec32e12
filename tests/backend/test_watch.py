"""Rules of the watch source: list then watch, bookmarks, 410 -> re-list, restart with backoff, no loss or duplicates."""

from __future__ import annotations

from fakes import SELECTOR, FakePodApi, Gone, ServerError, executor_pod, make_error, run_async, settle

from dask_k8s_backend.backend.observation.watch import ExecutorPodsWatchSource
from dask_k8s_backend.clock import ManualClock


class RecordingStore:
    """Records what a source writes: ("update", id, phase, rv, deleted) and ("replace", ids, rv)."""

    def __init__(self):
        self.ops = []

    def update_pod(self, pod, deleted=False):
        meta = pod["metadata"]
        self.ops.append(("update", meta["labels"]["dask-k8s-backend/executor-id"], pod["status"].get("phase"),
                         meta.get("resourceVersion"), deleted))

    def replace_snapshot(self, pods, resource_version=None):
        self.ops.append(("replace", sorted(p["metadata"]["labels"]["dask-k8s-backend/executor-id"] for p in pods),
                         resource_version))

    def updates(self):
        return [op for op in self.ops if op[0] == "update"]


def event(kind, executor_id, rv, phase="Pending"):
    return {"type": kind, "object": executor_pod(executor_id, phase=phase, resource_version=str(rv))}


def bookmark(rv):
    return {"type": "BOOKMARK", "object": {"kind": "Pod", "metadata": {"resourceVersion": str(rv)}}}


def expired():
    return {"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old"}}


async def started(api, clock=None):
    store = RecordingStore()
    source = ExecutorPodsWatchSource(api, store, SELECTOR, clock or ManualClock())
    source.start()
    await settle()
    return source, store


@run_async
async def test_lists_first_then_watches_from_the_lists_resource_version():
    api = FakePodApi()
    api.add_pod(executor_pod(1))
    source, store = await started(api)
    assert store.ops[0] == ("replace", ["1"], "101")
    assert api.watch_calls == [(SELECTOR, "101")]
    api.set_status("app-exec-1", phase="Running")
    await settle()
    assert store.ops[1:] == [("update", "1", "Running", "102", False)]
    await source.stop()


@run_async
async def test_a_bookmark_moves_the_resume_point():
    api = FakePodApi()
    api.script_watch(event("ADDED", 1, 101), bookmark(150))
    source, store = await started(api)
    assert api.watch_calls[-1] == (SELECTOR, "150")
    assert store.updates() == [("update", "1", "Pending", "101", False)]
    await source.stop()


@run_async
async def test_an_in_stream_410_relists_and_replaces_the_snapshot():
    api = FakePodApi()
    api.script_watch(expired())
    api.add_pod(executor_pod(1))
    source, store = await started(api)
    assert [op[0] for op in store.ops] == ["replace", "replace"]
    assert source.relists == 2
    await source.stop()


@run_async
async def test_an_http_410_relists_too():
    api = FakePodApi()
    api.script_watch(make_error(Gone, "too old resource version"))
    source, store = await started(api)
    assert source.relists == 2 and len(api.watch_calls) == 2
    await source.stop()


@run_async
async def test_restarts_after_errors_with_capped_exponential_backoff():
    clock = ManualClock()
    api = FakePodApi()
    for _ in range(4):
        api.script_watch(make_error(ServerError, "boom"))
    source = ExecutorPodsWatchSource(api, RecordingStore(), SELECTOR, clock, backoff_max=1.0)
    source.start()
    await settle()
    assert len(api.watch_calls) == 1
    waits = []
    for _ in range(4):
        waits.append(clock.next_deadline() - clock.now())
        clock.advance(waits[-1])
        await settle()
    assert waits == [0.5, 1.0, 1.0, 1.0]
    assert len(api.watch_calls) == 5 and source.relists == 1  # resumed, never re-listed
    await source.stop()


@run_async
async def test_a_stream_that_ends_after_events_is_resumed_at_once_from_the_last_event():
    api = FakePodApi()
    api.script_watch(event("ADDED", 1, 101))
    source, _ = await started(api)
    assert [rv for _, rv in api.watch_calls] == ["100", "101"]
    await source.stop()


@run_async
async def test_watch_resumes_after_end_error_and_410_without_losing_or_duplicating_updates():
    clock = ManualClock()
    api = FakePodApi()
    api.script_watch(event("ADDED", 1, 101), event("MODIFIED", 1, 102, "Running"))       # ends
    api.script_watch(event("MODIFIED", 1, 102, "Running"), event("ADDED", 2, 103),      # a repeat, then an error
                     make_error(ServerError, "connection reset"))
    api.script_watch(event("MODIFIED", 2, 104, "Running"), expired())                    # then 410
    source = ExecutorPodsWatchSource(api, RecordingStore(), SELECTOR, clock)
    store = source.store
    source.start()
    await settle()
    clock.advance(0.5)  # backoff after the error
    await settle()
    assert store.updates() == [
        ("update", "1", "Pending", "101", False),
        ("update", "1", "Running", "102", False),
        ("update", "2", "Pending", "103", False),
        ("update", "2", "Running", "104", False),
    ]
    assert [op[0] for op in store.ops] == ["replace"] + ["update"] * 4 + ["replace"]
    assert [rv for _, rv in api.watch_calls] == ["100", "102", "103", "100"]
    api.add_pod(executor_pod(3))  # the live stream after the re-list
    await settle()
    assert store.ops[-1] == ("update", "3", "Pending", "101", False)
    await source.stop()


@run_async
async def test_deleted_events_reach_the_store_as_deletions():
    api = FakePodApi()
    api.add_pod(executor_pod(1))
    source, store = await started(api)
    api.remove_pod("app-exec-1")
    await settle()
    assert store.ops[-1] == ("update", "1", "Pending", "102", True)
    await source.stop()
