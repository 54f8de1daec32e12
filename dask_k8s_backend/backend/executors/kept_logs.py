"""The last lines of executors whose pods are gone, so ``cluster.logs(id)`` outlives the pod.

Data flow: the lifecycle manager, just before it deletes a finished or failed executor's pod,
reads the tail of the pod's log and calls :meth:`KeptLogs.keep`; the plugin's ``k8s_logs`` handler
serves :meth:`KeptLogs.get` once the pod is gone. Memory is bounded twice: each log keeps its
last ``executor.kept-log-bytes`` (a note says when earlier lines were cut) and all logs together
at most ``executor.kept-logs-total`` (the oldest are dropped first; a dropped executor's log says
so instead of being unknown). Nothing here talks to Kubernetes.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass

logger = logging.getLogger(__name__)

TAIL_LINES = 5000  # asked of pods/log; the byte bound then keeps the end of it


@dataclass(frozen=True)
class KeptLog:
    executor_id: int
    pod: str
    text: str
    truncated: bool

    def render(self) -> str:
        """The text as served: a first line says it is a kept copy, and whether it was cut."""
        cut = (f"; only its last {len(self.text.encode())} bytes were kept (k8s-backend.executor.kept-log-bytes)"
               if self.truncated else "")
        return f"[log of executor {self.executor_id} (pod {self.pod}) kept when its pod was deleted{cut}]\n{self.text}"


class KeptLogs:
    """Bounded per executor and in total; oldest dropped first."""

    def __init__(self, *, per_executor: int, total: int) -> None:
        self.per_executor = per_executor
        self.total = total
        self._logs: OrderedDict[int, KeptLog] = OrderedDict()
        self._bytes = 0
        self.dropped: set[int] = set()

    def keep(self, executor_id: int, pod: str, text: str, lines_asked: int = TAIL_LINES) -> KeptLog:
        """Keep the end of ``text``; a log of ``lines_asked`` lines may have had earlier ones too."""
        data = text.encode("utf-8", errors="replace")
        truncated = len(data) > self.per_executor or text.count("\n") >= lines_asked
        if len(data) > self.per_executor:
            data = data[-self.per_executor:]
            newline = data.find(b"\n")
            data = data[newline + 1:] if 0 <= newline < len(data) - 1 else data
        kept = KeptLog(executor_id, pod, data.decode("utf-8", errors="replace"), truncated)
        self._forget(executor_id)
        self._logs[executor_id] = kept
        self._bytes += len(data)
        self._drop_oldest()
        return kept

    def get(self, executor_id: int) -> KeptLog | None:
        return self._logs.get(executor_id)

    def pods(self) -> dict[int, str]:
        """Executors with a kept log -> their pod names."""
        return {i: log.pod for i, log in self._logs.items()}

    @property
    def size(self) -> int:
        return self._bytes

    def _forget(self, executor_id: int) -> None:
        old = self._logs.pop(executor_id, None)
        if old is not None:
            self._bytes -= len(old.text.encode())

    def _drop_oldest(self) -> None:
        while self._bytes > self.total and self._logs:
            executor_id, old = self._logs.popitem(last=False)
            self._bytes -= len(old.text.encode())
            self.dropped.add(executor_id)
            logger.debug("dropped the kept log of executor %s (k8s-backend.executor.kept-logs-total)", executor_id)
