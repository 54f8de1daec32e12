"""Pod state -> one line a user can act on.

Data flow: the lifecycle manager (final states), the allocator (Pending pods with a reason) and
the status view pass a :class:`~dask_k8s_backend.pods.states.PodState` or a pod dict here and
show the returned sentence. Nothing here decides anything: it only reads exit codes, container
``terminated``/``waiting`` reasons, ``status.reason`` (Evicted) and the ``PodScheduled``
condition (Unschedulable), looking at every container (init containers too), not just the first.
"""

from __future__ import annotations

import re
import signal
from typing import Any

from .. import labels
from .states import PodDeleted, PodFailed, PodPending, PodRunning, PodState, PodSucceeded, PodTerminating

Pod = dict[str, Any]

# Waiting reasons that are normal steps of starting a container, not problems.
_NORMAL_WAITING = {"ContainerCreating", "PodInitializing"}
_IMAGE_PULL = {"ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull", "RegistryUnavailable"}


def executor_label(pod: Pod) -> str:
    """``executor 7`` from the executor-id label, else ``pod <name>``."""
    meta = pod.get("metadata") or {}
    executor_id = (meta.get("labels") or {}).get(labels.EXECUTOR_ID)
    return f"executor {executor_id}" if executor_id else f"pod {meta.get('name', '?')}"


def _logs_hint(pod: Pod) -> str:
    meta = pod.get("metadata") or {}
    executor_id = (meta.get("labels") or {}).get(labels.EXECUTOR_ID)
    return f"see cluster.logs({executor_id})" if executor_id else f"see `kubectl logs {meta.get('name', '?')}`"


def node_lost(state: PodState) -> str | None:
    """A sentence when a terminating pod went with its node, else None.

    Why: on a node that stopped answering no kubelet confirms the deletion, so its pods stay
    Terminating for as long as the Node object exists and never reach a final state. The signs
    are the taint-eviction controller's ``DisruptionTarget`` condition (reason
    ``DeletionByTaintManager``: the node was tainted unreachable/not-ready and the pod's toleration
    ran out) or the node controller's ``status.reason`` ``NodeLost``.
    """
    if not isinstance(state, PodTerminating):
        return None
    pod, who = state.pod, executor_label(state.pod)
    status = pod.get("status") or {}
    node = (pod.get("spec") or {}).get("nodeName") or "its node"
    for condition in status.get("conditions") or []:
        if (condition.get("type"), condition.get("status"), condition.get("reason")) == \
                ("DisruptionTarget", "True", "DeletionByTaintManager"):
            return (f"{who} was lost with node {node}: the node was tainted NoExecute (unreachable or not ready) and "
                    f"the pod was evicted when its toleration ran out ({condition.get('message') or 'no message'}); "
                    "it is replaced if below the target.")
    if status.get("reason") == "NodeLost":
        return (f"{who} was lost with node {node} ({status.get('message') or 'NodeLost'}); "
                "it is replaced if below the target.")
    return None


def explain(state: PodState) -> str:
    """One sentence for a final state, or for why a pod is pending, naming the executor and a fix."""
    pod, who = state.pod, executor_label(state.pod)
    if isinstance(state, PodSucceeded):
        return f"{who} completed: the worker exited normally (exit code 0), e.g. after being retired or the scheduler closing."
    if isinstance(state, PodFailed):
        return f"{who} {_failure(pod)}"
    if isinstance(state, PodDeleted):
        failure = _container_failure(pod)
        if failure is not None:
            return f"{who} {failure}"
        return (f"{who} was deleted from outside the backend (kubectl delete, node drain or garbage collection) "
                "before its worker exited; it is replaced if below the target.")
    if isinstance(state, PodPending):
        return f"{who} is pending: {pending_reason(pod) or 'waiting to be scheduled and started.'}"
    if isinstance(state, PodRunning):
        return f"{who} is running."
    if isinstance(state, PodTerminating):
        return f"{who} is terminating: deletion was requested and its containers are stopping."
    return f"{who} is in an unknown state (phase {(pod.get('status') or {}).get('phase')!r}); the node may be unreachable."


def explain_deletion(pod: Pod) -> str:
    """A pod someone else deleted, whose worker ended by the deletion's stop signal: lost, not failed."""
    codes = sorted({t.get("exitCode") or 0 for t in ((s.get("state") or {}).get("terminated") for s in _statuses(pod))
                    if t})
    how = f" (exit code {', '.join(map(str, codes))})" if codes else ""
    return (f"{executor_label(pod)} was deleted from outside the backend (kubectl delete, node drain or another "
            f"controller) and its worker stopped{how} because of that deletion: not counted as a failure toward "
            "k8s-backend.executor.max-failures; it is replaced if below the target.")


def pending_reason(pod: Pod) -> str | None:
    """Why a Pending pod is not running yet, when it is a problem (Unschedulable, image pull, config); else None."""
    status = pod.get("status") or {}
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False" and condition.get("reason"):
            message = _sentence(condition.get("message") or "no message from the scheduler")
            if condition["reason"] == "Unschedulable":
                return (f"Unschedulable: {message} Lower k8s-backend.worker.cores/memory, check the node selector "
                        "and tolerations, or add nodes that fit.")
            return f"{condition['reason']}: {message}"
    for container in _statuses(pod):
        waiting = (container.get("state") or {}).get("waiting") or {}
        reason = waiting.get("reason")
        if reason and reason not in _NORMAL_WAITING:
            return _waiting(reason, waiting.get("message"), _image(pod, container))
    return None


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith((".", "!", "?")) else f"{text}."


def _statuses(pod: Pod) -> list[dict[str, Any]]:
    status = pod.get("status") or {}
    return (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or [])


def _image(pod: Pod, container_status: dict[str, Any]) -> str:
    """The image as requested in the spec (the status may hold a resolved digest instead)."""
    spec = pod.get("spec") or {}
    for container in (spec.get("initContainers") or []) + (spec.get("containers") or []):
        if container.get("name") == container_status.get("name"):
            return container.get("image") or container_status.get("image") or "?"
    return container_status.get("image") or "?"


def _waiting(reason: str, message: str | None, image: str) -> str:
    detail = f" ({message.strip()})" if message else ""
    if reason in _IMAGE_PULL:
        return (f"{reason}: cannot pull image {image!r}{detail}; check the image name and tag (k8s-backend.image), "
                "that the registry is reachable, and the pull credentials (imagePullSecrets).")
    if reason == "InvalidImageName":
        return f"InvalidImageName: {image!r} is not a valid image name{detail}; fix k8s-backend.image."
    if reason == "CreateContainerConfigError":
        return (f"CreateContainerConfigError: the container configuration is invalid{detail}; check Secrets/ConfigMaps "
                "it references and runAsNonRoot against the image's user in the pod template.")
    if reason in ("CreateContainerError", "RunContainerError", "ContainerCannotRun"):
        return f"{reason}: the container could not be started{detail}; check the image and its command."
    return f"{reason}{detail}."


def _failure(pod: Pod) -> str:
    """A Failed pod: eviction first (the pod-level reason), then containers, then whatever the status says."""
    status = pod.get("status") or {}
    if status.get("reason") == "Evicted":
        message = _sentence(status.get("message") or "no message")
        return (f"was evicted by the kubelet: {message} Raise the worker's memory/ephemeral-storage requests "
                "or give the node more room.")
    failure = _container_failure(pod)
    if failure is not None:
        return failure
    waiting = pending_reason(pod)
    if waiting is not None:
        return f"failed before starting: {waiting}"
    reason, message = status.get("reason"), status.get("message")
    if reason or message:
        return f"failed: {reason or 'Failed'}: {message or 'no message'}."
    return "failed without an exit code or reason; see `kubectl describe pod` for its events."


def _container_failure(pod: Pod) -> str | None:
    """Explanation of the first container that terminated with a non-zero code (init containers first)."""
    terminated = [(s, (s.get("state") or {}).get("terminated")) for s in _statuses(pod)]
    terminated = [(s, t) for s, t in terminated if t]
    failed = [(s, t) for s, t in terminated if (t.get("exitCode") or 0) != 0 or t.get("reason") == "OOMKilled"]
    if not failed:
        return None
    several = len(pod.get("spec", {}).get("containers") or []) + len(pod.get("spec", {}).get("initContainers") or []) > 1
    status, term = failed[0]
    where = f" (container {status.get('name')!r})" if several else ""
    return explain_exit(term, pod, status, where)


def explain_exit(term: dict[str, Any], pod: Pod, status: dict[str, Any], where: str = "") -> str:
    """Exit code + terminated reason -> explanation (without the leading ``executor N``)."""
    code = term.get("exitCode") or 0
    reason = term.get("reason") or ""
    message = (term.get("message") or "").strip()
    logs = _logs_hint(pod)
    if reason == "OOMKilled":
        limit = _memory_limit(pod, status.get("name"))
        used = f"more than its {limit} memory limit" if limit else "more than its memory limit"
        exit_code = f" (exit code {code})" if code else ""
        return (f"OOMKilled{where}: container used {used}{exit_code}; raise worker memory (k8s-backend.worker.memory) "
                "or its overhead (worker.memory-overhead-factor).")
    if reason == "ContainerCannotRun":
        return f"could not start{where}: ContainerCannotRun ({message or 'no message'}); check the image and its command."
    if code == 0:
        return f"completed{where}: the worker exited normally (exit code 0)."
    if code == 1:
        return f"failed{where}: the worker exited with code 1 (an error in the worker process); {logs}."
    if code == 126:
        return (f"failed{where}: exit code 126, the command is not executable; check the image "
                f"({_image(pod, status)!r}) and that `dask` in it can run.")
    if code == 127:
        return (f"failed{where}: exit code 127, command not found; check the image ({_image(pod, status)!r}) "
                "has `dask` on its PATH and the command is right.")
    if code == 137:
        return (f"was killed{where} by SIGKILL from outside the worker (exit code 137, not OOMKilled): the kubelet after "
                "the grace period, the node, or a user; check `kubectl describe pod` and the node's events.")
    if code == 139:
        return f"crashed{where} with a segmentation fault (exit code 139, SIGSEGV), usually in compiled library code; {logs}."
    if code == 143:
        return (f"was stopped{where} by SIGTERM (exit code 143): the pod was deleted, the node is draining, "
                "or the process was terminated; it is replaced if below the target.")
    if 128 < code < 128 + 65:
        return f"was killed{where} by signal {code - 128} ({_signal_name(code - 128)}, exit code {code}); {logs}."
    detail = f" ({reason}: {message})" if message else (f" ({reason})" if reason and reason != "Error" else "")
    return f"failed{where}: the worker exited with code {code}{detail}; {logs}."


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return "unknown signal"


def _memory_limit(pod: Pod, container_name: str | None) -> str | None:
    spec = pod.get("spec") or {}
    for container in (spec.get("initContainers") or []) + (spec.get("containers") or []):
        if container.get("name") == container_name:
            limit = ((container.get("resources") or {}).get("limits") or {}).get("memory")
            if limit is None:
                return None
            value = parse_memory_quantity(str(limit))
            return format_bytes(value) if value is not None else str(limit)
    return None


_QUANTITY = re.compile(r"^([0-9.]+(?:[eE][-+]?[0-9]+)?)([KMGTPE]i?|[kmu]|)$")
_FACTORS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18, "m": 1e-3, "u": 1e-6,
            "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "Pi": 1 << 50, "Ei": 1 << 60}


def parse_memory_quantity(text: str) -> int | None:
    """Bytes of a Kubernetes memory quantity (``1408Mi``, ``2G``, ``1e9``), None if unparseable."""
    match = _QUANTITY.match(text.strip())
    if not match or match.group(2) not in _FACTORS:
        return None
    try:
        return int(float(match.group(1)) * _FACTORS[match.group(2)])
    except ValueError:
        return None


def format_bytes(n: int) -> str:
    """``1.4 GiB`` / ``512 MiB``: how a person reads a memory limit."""
    if n >= 1 << 30:
        return f"{n / (1 << 30):.1f} GiB"
    if n >= 1 << 20:
        return f"{n / (1 << 20):.0f} MiB"
    return f"{n} B"
