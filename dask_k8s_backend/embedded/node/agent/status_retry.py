"""Pod status writes the API server did not take, written again until they land.

Why: a kubelet's status write is the only way the API learns that a container started or
exited. A write refused while kube-apiserver restarts (connection refused, 5xx, 429 after the
HTTP layer's own few retries) used to be logged and dropped; a pod whose container exited
during the outage then stayed Running forever, its terminal phase lost. The real kubelet's
status manager keeps the latest status per pod and syncs it until the server has it; this is
that, for the node agent's HTTP transport.

Data flow: :class:`~.api_transport.ApiTransport` computes the status (in the kubelet's thread,
so the runtime's state is read consistently) and, when the write does not land,
:meth:`StatusRetrier.schedule` keeps it per pod. One thread writes every due entry again
through the transport's callback, with backoff doubling from ``first`` to ``cap`` seconds,
until it lands or the pod is gone or replaced. Any newer write of the same pod first
:meth:`cancels <StatusRetrier.cancel>` the waiting one: the latest status wins. Two rules keep
the retried status correct: :func:`rebase_status` keeps the conditions other controllers set
meanwhile (e.g. ``DisruptionTarget``), :func:`keep_terminal_phase` never lets a later status
take a pod out of Succeeded/Failed, as the kubelet's status manager refuses the same. The
transport runs a second retrier, with an empty status, for the end of graceful deletions.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from ..transport import Key

logger = logging.getLogger(__name__)

Status = dict[str, Any]
TERMINAL = ("Succeeded", "Failed")
FIRST_RETRY, MAX_RETRY = 0.5, 5.0  # seconds: a restart of kube-apiserver takes a few


@dataclass
class Waiting:
    """The latest status of one pod that the API server has not taken yet."""

    uid: str
    status: Status
    due: float
    attempts: int = 0


def keep_terminal_phase(previous_phase: str | None, status: Status) -> Status:
    """``status``, but still in ``previous_phase`` when that was terminal and ``status`` is not.

    Why: a pod that reached Succeeded or Failed never runs again; a later write built from a
    stale view must not reopen it (the API server and the kubelet's status manager refuse it too).
    """
    if previous_phase in TERMINAL and status.get("phase") not in TERMINAL:
        return {**status, "phase": previous_phase}
    return status


def rebase_status(wanted: Status, current: Status) -> Status:
    """The waiting status, plus the conditions of types it does not set that the server's pod has now.

    Why: the write is retried later than it was built; a condition another controller added
    meanwhile (the taint manager's ``DisruptionTarget``, a readiness gate) must survive it,
    because a merge patch replaces the conditions list whole.
    """
    own = {c.get("type") for c in wanted.get("conditions") or []}
    others = [c for c in current.get("conditions") or [] if c.get("type") not in own]
    if not others:
        return wanted
    return {**wanted, "conditions": list(wanted.get("conditions") or []) + others}


def phase_of(status: Status | None) -> str | None:
    return (status or {}).get("phase")


class StatusRetrier:
    """Per pod, the latest status still to write; a thread writes each again when it is due.

    ``write(key, waiting)`` sends one waiting status and returns True when it is done with it
    (landed, or the pod is gone or replaced), False to try again after the backoff.
    """

    def __init__(self, write: Callable[[Key, Waiting], bool], *, name: str = "node", what: str = "status",
                 clock: Callable[[], float] = time.monotonic, first: float = FIRST_RETRY, cap: float = MAX_RETRY,
                 background: bool = True) -> None:
        """``background=False`` starts no thread: the caller runs :meth:`run_due` (rule tests, fake clock).

        ``what`` names the writes in the thread's name and the log (the transport also retries deletions).
        """
        self._write = write
        self.name = name
        self.what = what
        self.clock = clock
        self.first, self.cap = first, cap
        self.background = background
        self._pending: dict[Key, Waiting] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)

    def waiting(self, key: Key) -> Waiting | None:
        with self._lock:
            return self._pending.get(key)

    def cancel(self, key: Key) -> Waiting | None:
        """Forget the waiting status of ``key`` (a newer one supersedes it); the entry forgotten, if any."""
        with self._lock:
            return self._pending.pop(key, None)

    def schedule(self, key: Key, uid: str, status: Status) -> None:
        """Keep ``status`` as the one to write for ``key``, first retried after ``first`` seconds."""
        with self._lock:
            if self._closed:
                return
            self._pending[key] = Waiting(uid, status, self.clock() + self.first)
            start = self.background and self._thread is None
            if start:
                self._thread = threading.Thread(target=self._run, name=f"node-{self.name}-{self.what}-retry",
                                                daemon=True)
        if start:
            assert self._thread is not None
            self._thread.start()
        self._wake.set()

    def next_due(self) -> float | None:
        with self._lock:
            return min((w.due for w in self._pending.values()), default=None)

    def run_due(self) -> None:
        """Write every due status once; each that did not land waits twice as long (capped) for the next try."""
        now = self.clock()
        with self._lock:
            due = [(key, w) for key, w in self._pending.items() if w.due <= now]
        for key, waiting in due:
            try:
                done = self._write(key, waiting)
            except Exception:
                logger.exception("node %s: writing again the %s of pod %s/%s failed", self.name, self.what, *key)
                done = False
            self._after_attempt(key, waiting, done)

    def _after_attempt(self, key: Key, waiting: Waiting, done: bool) -> None:
        with self._lock:
            if self._pending.get(key) is not waiting:
                return  # superseded meanwhile: the newer entry has its own schedule
            if done:
                del self._pending[key]
                return
            waiting.attempts += 1
            waiting.due = self.clock() + min(self.cap, self.first * 2 ** waiting.attempts)

    def _run(self) -> None:
        while True:
            due = self.next_due()
            timeout = None if due is None else max(0.0, due - self.clock())
            self._wake.wait(timeout)
            self._wake.clear()
            if self._closed:
                return
            self.run_due()

    def close(self, timeout: float = 10.0) -> None:
        """Stop retrying (the node is leaving); statuses still waiting are dropped, with one log line."""
        with self._lock:
            self._closed = True
            dropped, thread = len(self._pending), self._thread
            self._pending.clear()
        self._wake.set()
        if thread is not None:
            thread.join(timeout)
        if dropped:
            logger.warning("node %s: %d pod %s write(s) never reached the API server before the node stopped",
                           self.name, dropped, self.what)
