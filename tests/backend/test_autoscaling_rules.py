"""Calm autoscaling rules on a manual clock: the scale-down stabilisation window (HPA style) and the
group autoscaler that applies it beside the scheduler."""

from __future__ import annotations

import asyncio

import pytest

from dask_k8s_backend.backend.allocation.autoscaling import AdaptOptions, GroupAutoscaler, GroupHooks
from dask_k8s_backend.backend.allocation.stabilization import ScaleDownStabilizer
from dask_k8s_backend.clock import ManualClock


def test_a_rising_recommendation_is_followed_at_once():
    s = ScaleDownStabilizer(window=30)
    assert [s.recommend(n, now=t) for t, n in enumerate((1, 4, 6))] == [1, 4, 6]


def test_the_target_never_drops_below_the_highest_recommendation_in_the_window():
    s = ScaleDownStabilizer(window=30)
    s.recommend(6, now=0)
    assert s.recommend(0, now=3) == 6  # an idle gap between bursts
    assert s.recommend(2, now=29.9) == 6
    assert s.recommend(2, now=30.1) == 2  # the 6 left the window; 2 is the highest since
    assert s.recommend(0, now=59) == 2
    assert s.recommend(0, now=60.2) == 0


def test_a_lower_peak_inside_the_window_takes_over_when_the_higher_one_expires():
    s = ScaleDownStabilizer(window=10)
    s.recommend(6, now=0)
    s.recommend(4, now=5)
    s.recommend(1, now=8)
    assert s.recommend(0, now=10.5) == 4
    assert s.recommend(0, now=15.5) == 1
    assert s.recommend(0, now=18.5) == 0


def test_a_zero_window_follows_every_recommendation():
    s = ScaleDownStabilizer(window=0)
    assert [s.recommend(n, now=t) for t, n in enumerate((5, 0, 3, 1))] == [5, 0, 3, 1]


def test_a_negative_window_is_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"scale_down_window: expected seconds >= 0, got -1"):
        ScaleDownStabilizer(window=-1)


class FakeGroup:
    """A group whose pods appear and register as soon as they are asked for."""

    def __init__(self) -> None:
        self.alive: set[int] = set()
        self.next_id = 1
        self.demand = 0
        self.scaled: list[int] = []
        self.retired: list[list[str]] = []

    async def scale_to(self, n: int) -> None:
        self.scaled.append(n)
        while len(self.alive) < n:
            self.alive.add(self.next_id)
            self.next_id += 1

    async def retire(self, workers: list[str]) -> None:
        self.retired.append(sorted(workers))
        self.alive -= {int(w) for w in workers}

    def hooks(self) -> GroupHooks:
        names = lambda: {str(i) for i in self.alive}  # noqa: E731
        return GroupHooks(requested=names, target=lambda: len(self.alive), observed=names, demand=lambda: self.demand,
                          idle_workers=lambda target: sorted(names())[: max(0, len(self.alive) - target)],
                          scale_to=self.scale_to, retire=self.retire)


def run_ticks(scaler: GroupAutoscaler, clock: ManualClock, demands: list[int], group: FakeGroup) -> None:
    """One adapt() per second of fake time, with the demand of that second."""
    async def ticks() -> None:
        for demand in demands:
            group.demand = demand
            await scaler.adapt()
            clock.advance(1)

    asyncio.run(ticks())


def test_bursts_separated_by_short_gaps_keep_their_workers_and_idle_reaches_the_minimum():
    clock, group = ManualClock(), FakeGroup()
    scaler = GroupAutoscaler("default", group.hooks(), AdaptOptions(minimum=1, maximum=6, scale_down_window=10,
                                                                    wait_count=3), clock)
    burst, gap = [6] * 5, [0] * 3
    run_ticks(scaler, clock, (burst + gap) * 4, group)
    assert group.next_id - 1 == 6 and group.retired == []  # 6 pods for the four bursts, none retired in gaps
    run_ticks(scaler, clock, [0] * 14, group)  # idle: the window (10 s) then wait_count (3 decisions)
    assert len(group.alive) == 1 and group.next_id - 1 == 6
    assert len(group.retired) == 1 and len(group.retired[0]) == 5


def test_without_a_window_every_gap_scales_down_and_bursts_create_new_pods():
    clock, group = ManualClock(), FakeGroup()
    scaler = GroupAutoscaler("default", group.hooks(), AdaptOptions(minimum=0, maximum=6, scale_down_window=0,
                                                                    wait_count=1), clock)
    run_ticks(scaler, clock, ([6] * 5 + [0] * 3) * 4, group)
    assert group.next_id - 1 == 24  # what issue 17 saw: every burst starts from nothing


def test_scale_up_is_immediate_and_capped_by_the_maximum():
    clock, group = ManualClock(), FakeGroup()
    scaler = GroupAutoscaler("default", group.hooks(), AdaptOptions(minimum=0, maximum=4, scale_down_window=30),
                             clock)
    run_ticks(scaler, clock, [2, 9], group)
    assert group.scaled == [2, 4]
