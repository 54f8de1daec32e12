"""Scale-down stabilisation: the rule that keeps adaptive scaling calm, as Kubernetes' HPA does.

Each decision brings a recommendation (how many workers the load asks for now). The target is the
highest recommendation made within the last ``window`` seconds, so a recommendation that drops for
a short idle gap between bursts changes nothing, while one that rises is followed at once (it is the
highest). Pure: time comes in as an argument, so the rule is tested with a fake clock.
"""

from __future__ import annotations

from collections import deque


class ScaleDownStabilizer:
    """The highest recommendation of the last ``window`` seconds (0: the latest one)."""

    def __init__(self, window: float) -> None:
        if window < 0:
            raise ValueError(f"scale_down_window: expected seconds >= 0, got {window!r}; use e.g. 30 or '30s'")
        self.window = window
        # (time, recommendation), recommendations strictly decreasing from the front: the front is the maximum.
        self._recent: deque[tuple[float, int]] = deque()

    def recommend(self, desired: int, now: float) -> int:
        """Record ``desired`` at ``now`` and return the target: the window's highest recommendation."""
        while self._recent and self._recent[-1][1] <= desired:
            self._recent.pop()  # a newer, at least as high recommendation outlives it
        self._recent.append((now, desired))
        while self._recent[0][0] < now - self.window:
            self._recent.popleft()
        return self._recent[0][1]
