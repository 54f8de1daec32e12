"""ManualClock: time moves only on advance(), sleepers wake in deadline order, cancelled ones are skipped."""

from __future__ import annotations

import asyncio

import pytest

from dask_k8s_backend.clock import Clock, ManualClock, SystemClock


def test_both_clocks_implement_the_clock_protocol():
    assert isinstance(SystemClock(), Clock) and isinstance(ManualClock(), Clock)


def test_sleepers_wake_in_deadline_order_only_when_time_reaches_them():
    async def main():
        clock = ManualClock(start=10)
        woke = []

        async def sleeper(name, seconds):
            await clock.sleep(seconds)
            woke.append((name, clock.now()))

        tasks = [asyncio.create_task(sleeper(n, s)) for n, s in (("c", 3), ("a", 1), ("b", 2))]
        await asyncio.sleep(0)
        assert clock.sleepers == 3 and clock.next_deadline() == 11
        clock.advance(1.5)
        await asyncio.sleep(0)
        assert woke == [("a", 11.5)]
        clock.advance(10)
        await asyncio.gather(*tasks)
        assert [n for n, _ in woke] == ["a", "b", "c"]

    asyncio.run(main())


def test_a_cancelled_sleeper_is_not_counted_or_woken():
    async def main():
        clock = ManualClock()
        task = asyncio.create_task(clock.sleep(5))
        await asyncio.sleep(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert clock.sleepers == 0 and clock.next_deadline() is None
        clock.advance(10)

    asyncio.run(main())


def test_time_cannot_go_backwards():
    with pytest.raises(ValueError, match="backwards"):
        ManualClock().advance(-1)
