"""The simulated kubelet: pods go through the real phases on a timer, without processes (KWOK-like).

Data flow: :class:`~.agent.KubeletBase` hands each new pod of this node to
:meth:`SimulatedKubelet.pod_added`, which only pushes a "create" step on one heap. A single
timer thread pops due steps in time order and writes the pod's status through the same
builders the process kubelet uses (:mod:`.podstatus`):

    create  -> Pending, ContainerCreating, pod IP       (at once)
    start   -> Running, Ready, containers running       (after ``start_delay``)
    finish  -> Succeeded (exit 0) or Failed (exit 1)    (after ``run_duration``; a failing pod
               fails after ``run_duration`` or, without one, after ``start_delay``)
    stop    -> final status (exit 143 for a running container), then ``finalize_deletion``
               (after ``stop_delay``, at most the pod's grace period)

Whether a pod fails is decided from a hash of ``seed`` and the pod's name, so a run is
reproducible whatever the thread timing. One pod can script its own end with annotations
(like KWOK stages): ``simulated.dask-k8s-backend/run-duration: "2"`` (seconds),
``.../exit-code: "137"`` and ``.../reason: "OOMKilled"``; an exit code without a run duration
ends the container right after it starts. Per pod the kubelet keeps one small slot; stale heap
entries (pod deleted, recreated) are recognised by uid and skipped. 10,000 pods cost a few MB
and one thread. Events are off by default (``record_events``), as the scale tests do not read them.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
import zlib
from pathlib import Path
from typing import Any

from ..podstatus import ContainerRecord, PodRuntimeView, container_id, pod_status, rfc3339
from .kubelet_base import HOST_IP, Key, KubeletBase, Pod, pod_key, pod_uid

logger = logging.getLogger(__name__)

STATUS_RETRY_SECONDS = 1.0  # a status write the API server refused or missed is written again after this


class _Slot:
    """What the simulated kubelet remembers about one pod."""

    __slots__ = ("uid", "ip", "created", "started", "finished", "exit_code", "fails", "deleting", "script")

    def __init__(self, uid: str, fails: bool, script: "_Script | None" = None) -> None:
        self.uid = uid
        self.ip: str | None = None
        self.created: float | None = None
        self.started: float | None = None
        self.finished: float | None = None
        self.exit_code: int | None = None
        self.fails = fails
        self.deleting = False
        self.script = script


ANNOTATION_PREFIX = "simulated.dask-k8s-backend/"


class _Script:
    """A pod's own scripted end, read from its annotations."""

    __slots__ = ("run_duration", "exit_code", "reason")

    def __init__(self, run_duration: float | None, exit_code: int | None, reason: str | None) -> None:
        self.run_duration, self.exit_code, self.reason = run_duration, exit_code, reason

    @classmethod
    def from_pod(cls, pod: Pod) -> "_Script | None":
        annotations = (pod.get("metadata") or {}).get("annotations") or {}
        duration = annotations.get(ANNOTATION_PREFIX + "run-duration")
        code = annotations.get(ANNOTATION_PREFIX + "exit-code")
        reason = annotations.get(ANNOTATION_PREFIX + "reason")
        if duration is None and code is None and reason is None:
            return None
        try:
            return cls(float(duration) if duration is not None else None, int(code) if code is not None else None, reason)
        except ValueError:
            logger.warning("simulated kubelet: ignoring bad %s* annotations on pod %s: run-duration=%r exit-code=%r",
                           ANNOTATION_PREFIX, pod_key(pod), duration, code)
            return None


def will_fail(seed: int, namespace: str, name: str, failure_rate: float) -> bool:
    """Deterministic per pod: the same seed, name and rate always give the same answer."""
    if failure_rate <= 0:
        return False
    return zlib.crc32(f"{seed}/{namespace}/{name}".encode()) / 2**32 < failure_rate


class SimulatedKubelet(KubeletBase):
    """A node that runs no processes; see the module docstring for the timeline."""

    def __init__(self, store: Any, node_name: str, *, start_delay: float = 0.5, failure_rate: float = 0.0,
                 run_duration: float | None = None, seed: int = 0, stop_delay: float = 0.05,
                 record_events: bool = False, **kwargs: Any) -> None:
        if start_delay < 0 or stop_delay < 0 or (run_duration is not None and run_duration < 0):
            raise ValueError(f"SimulatedKubelet {node_name!r}: start_delay, stop_delay and run_duration must be "
                             f">= 0 seconds, got {start_delay!r}, {stop_delay!r}, {run_duration!r}.")
        if not 0.0 <= failure_rate <= 1.0:
            raise ValueError(f"SimulatedKubelet {node_name!r}: failure_rate is a share between 0 and 1, got {failure_rate!r}.")
        super().__init__(store, node_name, **kwargs)
        self.start_delay = start_delay
        self.failure_rate = failure_rate
        self.run_duration = run_duration
        self.seed = seed
        self.stop_delay = stop_delay
        self.record_events = record_events
        self._slots: dict[Key, _Slot] = {}
        self._heap: list[tuple[float, int, str, Key, str]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._timer: threading.Thread | None = None
        self._halt = False

    def start(self) -> None:
        with self._cond:
            self._halt = False
        self._timer = threading.Thread(target=self._run, name=f"simulated-kubelet-{self.node_name}", daemon=True)
        self._timer.start()
        super().start()

    # ------------------------------------------------------------------ hooks (dispatcher thread)
    def knows(self, pod: Pod) -> bool:
        slot = self._slots.get(pod_key(pod))
        return slot is not None and slot.uid == pod_uid(pod)

    def pod_added(self, pod: Pod) -> None:
        key = pod_key(pod)
        self._slots[key] = _Slot(pod_uid(pod), will_fail(self.seed, key[0], key[1], self.failure_rate),
                                 _Script.from_pod(pod))
        self._push(0.0, "create", key, pod_uid(pod))

    def pod_deleting(self, pod: Pod) -> None:
        key = pod_key(pod)
        slot = self._slots.get(key)
        if slot is None or slot.uid != pod_uid(pod) or slot.deleting:
            return
        slot.deleting = True
        grace = (pod.get("metadata") or {}).get("deletionGracePeriodSeconds")
        delay = self.stop_delay if grace is None else min(self.stop_delay, float(grace))
        self._push(delay, "stop", key, slot.uid)

    def pod_removed(self, pod: Pod) -> None:
        key = pod_key(pod)
        slot = self._slots.get(key)
        if slot is not None and slot.uid == pod_uid(pod):
            del self._slots[key]

    def stop_pods(self, graceful: bool = False) -> None:
        with self._cond:
            self._halt = True
            self._heap.clear()
            self._cond.notify_all()
        if self._timer is not None:
            self._timer.join(timeout=10)
            self._timer = None
        for slot in self._slots.values():
            self.ips.release(slot.uid)
        self._slots.clear()

    # ------------------------------------------------------------------ timer
    def _push(self, delay: float, step: str, key: Key, uid: str) -> None:
        with self._cond:
            heapq.heappush(self._heap, (time.monotonic() + delay, next(self._seq), step, key, uid))
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._halt and (not self._heap or self._heap[0][0] > time.monotonic()):
                    self._cond.wait(None if not self._heap else self._heap[0][0] - time.monotonic())
                if self._halt:
                    return
                _, _, step, key, uid = heapq.heappop(self._heap)
            try:
                self._step(step, key, uid)
            except Exception:
                logger.exception("simulated kubelet %s: step %s of pod %s/%s failed", self.node_name, step, *key)

    def _step(self, step: str, key: Key, uid: str) -> None:
        slot = self._slots.get(key)
        if slot is None or slot.uid != uid:
            return  # deleted or replaced since
        now = self.clock()
        if step == "stop":
            self._stop(key, slot, now)
            return
        if step == "sync":
            if not slot.deleting:
                self._write(key, slot)
            return
        if slot.deleting or slot.finished is not None:
            return
        if step == "create":
            slot.ip, slot.created = self.ips.allocate(uid), now
            self._write(key, slot)
            self._push(self.start_delay, "start", key, uid)
        elif step == "start":
            slot.started = now
            pod = self._write(key, slot)
            if pod is not None and self.record_events:
                self.event(pod, "Started", "Started container (simulated)")
            end = self._end_after(slot)
            if end is not None:
                self._push(end, "finish", key, uid)
        elif step == "finish":
            script = slot.script
            if script is not None and script.exit_code is not None:
                slot.finished, slot.exit_code = now, script.exit_code
            else:
                slot.finished, slot.exit_code = now, 1 if slot.fails else 0
            self._write(key, slot)

    def _end_after(self, slot: _Slot) -> float | None:
        """Seconds from start to the container's end, or None when it runs until deleted."""
        script = slot.script
        if script is not None and (script.run_duration is not None or script.exit_code is not None):
            return script.run_duration if script.run_duration is not None else 0.0
        if slot.fails:
            return self.run_duration if self.run_duration is not None else self.start_delay
        return self.run_duration

    def _stop(self, key: Key, slot: _Slot, now: float) -> None:
        if slot.started is not None and slot.finished is None:
            slot.finished, slot.exit_code = now, 143
        if slot.created is not None:
            phase = "Succeeded" if slot.exit_code == 0 else "Failed"
            pod = self._write(key, slot, phase)
            if pod is not None and self.record_events:
                self.event(pod, "Killing", "Stopping container (simulated)")
        self.finalize(key, slot.uid)

    def _write(self, key: Key, slot: _Slot, phase: str | None = None) -> Pod | None:
        """Write the slot's status; a write the API server did not take (down, restarting) is retried.

        Why: the status is built from the slot, so it can be written again at any time; without the
        retry a pod created while the API server restarts stays Pending forever (a kubelet's status
        manager resyncs the same way).
        """
        pod = self.write_status(key, slot.uid, lambda pod: pod_status(pod, self._view(pod, slot), self.clock(), phase))
        if pod is None and phase is None and pod_uid(self.transport.get_pod(key) or {}) == slot.uid:
            self._push(STATUS_RETRY_SECONDS, "sync", key, slot.uid)
        return pod

    def _view(self, pod: Pod, slot: _Slot) -> PodRuntimeView:
        records = []
        for container in (pod.get("spec") or {}).get("containers") or []:
            record = ContainerRecord(container.get("name", ""), container.get("image", ""))
            if slot.started is not None:
                record.run(slot.started, container_id(slot.uid, record.name, 0))
            if slot.finished is not None and slot.started is not None:
                reason = slot.script.reason if slot.script is not None and slot.exit_code != 143 else None
                record.terminate(slot.exit_code or 0, slot.finished, reason)
            records.append(record)
        return PodRuntimeView(host_ip=HOST_IP, pod_ip=slot.ip, start_time=slot.created, records=records)

    # ------------------------------------------------------------------ logs
    def container_log_path(self, namespace: str, pod: str, container: str, previous: bool = False) -> Path | None:
        """A small generated log for a started container (no previous runs: nothing restarts here)."""
        slot = self._slots.get((namespace, pod))
        if slot is None or slot.started is None or previous:
            return None
        path = self.work_dir / "logs" / f"{namespace}_{pod}_{slot.uid}" / f"{container}.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = [f"{rfc3339(slot.started)} simulated container {container} of pod {namespace}/{pod} started "
                 f"on node {self.node_name} with IP {slot.ip}"]
        if slot.finished is not None:
            lines.append(f"{rfc3339(slot.finished)} simulated container {container} exited with code {slot.exit_code}")
        path.write_text("\n".join(lines) + "\n")
        return path
