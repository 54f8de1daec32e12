"""Rules of the polling source: a full resync every interval, failures retried at the next one."""

from __future__ import annotations

from fakes import SELECTOR, FakePodApi, ServerError, executor_pod, make_error, run_async, settle

from dask_k8s_backend.backend.observation.polling import ExecutorPodsPollingSource
from dask_k8s_backend.backend.observation.snapshots import DeterministicSnapshotsStore
from dask_k8s_backend.clock import ManualClock


@run_async
async def test_replaces_the_snapshot_every_polling_interval():
    clock = ManualClock()
    api = FakePodApi()
    store = DeterministicSnapshotsStore(clock=clock)
    source = ExecutorPodsPollingSource(api, store, SELECTOR, clock, interval=30)
    source.start()
    await settle()
    assert api.requests["list_pods"] == 0  # the watch lists at start; polling is the safety net
    api.add_pod(executor_pod(1))
    clock.advance(30)
    await settle()
    assert api.requests["list_pods"] == 1 and set(store.current.executor_pods) == {1}
    assert store.current.is_full and store.current.full_snapshot_ts == 30
    clock.advance(29)
    await settle()
    assert api.requests["list_pods"] == 1
    await source.stop()


@run_async
async def test_a_failed_poll_is_retried_at_the_next_interval():
    clock = ManualClock()
    api = FakePodApi()
    api.fail_next("list_pods", make_error(ServerError, "boom"))
    store = DeterministicSnapshotsStore(clock=clock)
    source = ExecutorPodsPollingSource(api, store, SELECTOR, clock, interval=10)
    source.start()
    await settle()
    clock.advance(10)
    await settle()
    assert store.current.full_snapshot_ts == 0  # nothing replaced yet
    clock.advance(10)
    await settle()
    assert api.requests["list_pods"] == 2 and store.current.full_snapshot_ts == 20
    await source.stop()


def test_a_non_positive_interval_is_refused_with_the_option_name():
    try:
        ExecutorPodsPollingSource(FakePodApi(), None, SELECTOR, ManualClock(), interval=0)
    except ValueError as e:
        assert "api-polling-interval" in str(e)
    else:
        raise AssertionError("interval 0 must be refused")
