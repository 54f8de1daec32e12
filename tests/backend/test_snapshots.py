"""Rules of the snapshots store: immutable snapshots, ordered batches, one delivery at a time."""

from __future__ import annotations

import asyncio

from fakes import executor_pod, run_async, settle

from dask_k8s_backend.backend.observation.snapshots import DeterministicSnapshotsStore, SnapshotsStore
from dask_k8s_backend.clock import ManualClock
from dask_k8s_backend.pods.states import PodDeleted, PodPending, PodRunning


def test_snapshots_are_immutable_values():
    store = DeterministicSnapshotsStore(clock=ManualClock())
    store.update_pod(executor_pod(1))
    first = store.current
    store.update_pod(executor_pod(1, phase="Running"))
    assert isinstance(first.executor_pods[1], PodPending)
    assert isinstance(store.current.executor_pods[1], PodRunning)
    try:
        first.executor_pods[2] = None  # type: ignore[index]
    except TypeError:
        pass
    else:
        raise AssertionError("a snapshot's pod map must be read-only")


def test_pods_without_an_executor_id_are_ignored():
    store = DeterministicSnapshotsStore(clock=ManualClock())
    pod = executor_pod(1)
    del pod["metadata"]["labels"]["dask-k8s-backend/executor-id"]
    store.update_pod(pod)
    assert dict(store.current.executor_pods) == {}


def test_deleted_pods_stay_deleted_until_the_next_full_snapshot_but_stay_seen():
    clock = ManualClock(5)
    store = DeterministicSnapshotsStore(clock=clock)
    store.update_pod(executor_pod(1))
    store.update_pod(executor_pod(1), deleted=True)
    assert isinstance(store.current.executor_pods[1], PodDeleted)
    store.replace_snapshot([executor_pod(2)])
    assert set(store.current.executor_pods) == {2}
    assert store.current.seen_ids == {1, 2}
    assert store.current.full_snapshot_ts == 5 and store.current.is_full


def test_a_full_resync_older_than_the_watch_does_not_move_pods_back_in_time():
    store = DeterministicSnapshotsStore(clock=ManualClock())
    store.update_pod(executor_pod(1, phase="Running", resource_version="20"))
    store.update_pod(executor_pod(2, phase="Pending", resource_version="21"))
    store.replace_snapshot([executor_pod(1, phase="Pending", resource_version="10")], resource_version="15")
    assert isinstance(store.current.executor_pods[1], PodRunning)
    assert 2 in store.current.executor_pods


@run_async
async def test_each_subscriber_gets_every_snapshot_in_order_on_its_own_interval():
    clock = ManualClock()
    store = SnapshotsStore(clock=clock)
    fast, slow = [], []

    async def on_fast(batch):
        fast.append([dict(s.executor_pods) for s in batch])

    async def on_slow(batch):
        slow.append(len(batch))

    store.add_subscriber(1, on_fast)
    store.add_subscriber(5, on_slow)
    await settle()  # the subscribers are now sleeping on the manual clock
    for i in range(1, 4):
        store.update_pod(executor_pod(i))
    clock.advance(1)
    await settle()
    assert [len(b) for b in fast] == [2]  # the initial snapshot, then the three updates folded into one
    assert [sorted(s) for s in fast[0]] == [[], [1, 2, 3]]
    assert slow == []
    store.update_pod(executor_pod(4))
    for _ in range(4):
        clock.advance(1)
        await settle()
    assert [len(b) for b in fast] == [2, 1] and slow == [3]
    await store.stop()


def test_updates_between_reads_are_folded_into_one_snapshot_naming_every_changed_pod():
    store = DeterministicSnapshotsStore(clock=ManualClock())
    store.update_pod(executor_pod(1))
    store.update_pod(executor_pod(2))
    store.update_pod(executor_pod(1, phase="Running"))
    snapshot = store.current
    assert snapshot.changed == {1, 2} and isinstance(snapshot.executor_pods[1], PodRunning)
    store.update_pod(executor_pod(2, phase="Failed"))
    store.replace_snapshot([executor_pod(3)])  # a resync keeps the order: the update first, then the full list
    assert store.current.is_full and store.current.seen_ids == {1, 2, 3}


@run_async
async def test_a_subscriber_never_runs_concurrently_with_itself():
    clock = ManualClock()
    store = SnapshotsStore(clock=clock)
    running, overlaps, release = 0, 0, asyncio.Event()
    calls = []

    async def slow(batch):
        nonlocal running, overlaps
        running += 1
        overlaps += running > 1
        calls.append(sorted(batch[-1].executor_pods))
        await release.wait()
        running -= 1

    store.add_subscriber(1, slow)
    await settle()
    clock.advance(1)
    await settle()
    for i in range(1, 4):
        store.update_pod(executor_pod(i))
        clock.advance(1)
        await settle()
    assert calls == [[]] and overlaps == 0
    release.set()
    await settle()
    clock.advance(1)
    await settle()
    assert calls == [[], [1, 2, 3]] and overlaps == 0
    await store.stop()


@run_async
async def test_a_failing_subscriber_keeps_receiving_snapshots():
    clock = ManualClock()
    store = SnapshotsStore(clock=clock)
    batches = []

    async def flaky(batch):
        batches.append(len(batch))
        if len(batches) == 1:
            raise RuntimeError("boom")

    store.add_subscriber(1, flaky)
    await settle()
    clock.advance(1)
    await settle()
    store.update_pod(executor_pod(1))
    clock.advance(1)
    await settle()
    assert batches == [1, 1]
    await store.stop()


@run_async
async def test_deterministic_store_delivers_only_when_told():
    store = DeterministicSnapshotsStore(clock=ManualClock())
    got = []

    async def record(batch):
        got.append(len(batch))

    store.add_subscriber(1, record)
    store.update_pod(executor_pod(1))
    assert got == []
    await store.notify_subscribers()
    assert got == [2]
    await store.notify_subscribers()
    assert got == [2]
