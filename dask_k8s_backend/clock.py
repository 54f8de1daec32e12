"""Time as an injected collaborator: every backend rule reads ``clock.now()`` and waits with
``await clock.sleep(...)`` instead of calling ``time``/``asyncio`` directly.

``SystemClock`` is the real thing (monotonic seconds, ``asyncio.sleep``). ``ManualClock`` is for
tests: time only moves when the test calls ``advance(dt)``, which wakes every sleeper whose
deadline has passed, in deadline order, so rules such as "pods not seen within the timeout are
deleted" run in microseconds and never flake.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    """What the backend needs from time."""

    def now(self) -> float:
        """Monotonic seconds (only differences are meaningful)."""

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of this clock's time."""


class SystemClock:
    """The real clock: ``time.monotonic`` and ``asyncio.sleep``."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    def __repr__(self) -> str:
        return "SystemClock()"


class ManualClock:
    """A clock that moves only when told to; sleepers wake deterministically on ``advance``."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._seq), future))
        await future

    def advance(self, seconds: float) -> None:
        """Move time forward and wake (in deadline order) every sleeper whose deadline has come.

        Woken coroutines run when the test next yields to the event loop (``await asyncio.sleep(0)``).
        """
        if seconds < 0:
            raise ValueError(f"ManualClock.advance: time cannot go backwards (got {seconds!r} seconds).")
        self._now += seconds
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, future = heapq.heappop(self._sleepers)
            if not future.done():
                future.set_result(None)

    @property
    def sleepers(self) -> int:
        """How many sleeps are waiting (cancelled ones excluded)."""
        return sum(1 for _, _, f in self._sleepers if not f.done())

    def next_deadline(self) -> float | None:
        """When the earliest waiting sleeper wakes, or None."""
        live = [d for d, _, f in self._sleepers if not f.done()]
        return min(live) if live else None

    def __repr__(self) -> str:
        return f"ManualClock(now={self._now})"
