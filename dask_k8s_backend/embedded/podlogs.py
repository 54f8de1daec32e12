"""``pods/log`` of the embedded API server: which file holds a container's log, and how to read it.

The kubelet of the pod's node knows where a container's output goes
(``kubelet.container_log_path(namespace, pod, container, previous)``). :func:`resolve_log`
checks the request the way kube-apiserver does (container required when the pod has several,
unknown container, not started yet, no previous instance) and returns that path;
:func:`read_tail` reads the whole file or its last ``tailLines`` lines. Following is done by the
HTTP layer, which re-reads the file from the last offset until the container stops.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from .status import StatusError, bad_request


def _containers(pod: dict) -> list[str]:
    spec = pod.get("spec") or {}
    return [c.get("name") for c in (spec.get("initContainers") or []) + (spec.get("containers") or [])]


def choose_container(pod: dict, container: str | None) -> str:
    """The container the request means; 400 when it is ambiguous or unknown."""
    name = pod["metadata"]["name"]
    regular = [c.get("name") for c in (pod.get("spec") or {}).get("containers") or []]
    if not container:
        if len(regular) == 1:
            return regular[0]
        raise bad_request(f"a container name must be specified for pod {name}, choose one of: "
                          f"[{' '.join(regular)}]")
    if container not in _containers(pod):
        raise bad_request(f"container {container} is not valid for pod {name}")
    return container


def container_running(pod: dict, container: str) -> bool:
    """Whether the container's current instance is running (a follow keeps streaming)."""
    status = pod.get("status") or {}
    for cs in (status.get("containerStatuses") or []) + (status.get("initContainerStatuses") or []):
        if cs.get("name") == container:
            return "running" in (cs.get("state") or {})
    return False


def _waiting_reason(pod: dict, container: str) -> str:
    status = pod.get("status") or {}
    for cs in (status.get("containerStatuses") or []) + (status.get("initContainerStatuses") or []):
        if cs.get("name") == container:
            return ((cs.get("state") or {}).get("waiting") or {}).get("reason") or "ContainerCreating"
    return "ContainerCreating"


def resolve_log(pod: dict, container: str, previous: bool, kubelets: Mapping[str, Any]) -> Path:
    """The log file of ``container`` (its previous instance with ``previous``); 400 when there is none."""
    name, namespace = pod["metadata"]["name"], pod["metadata"].get("namespace")
    node = (pod.get("spec") or {}).get("nodeName")
    kubelet = kubelets.get(node) if node else None
    path = kubelet.container_log_path(namespace, name, container, previous) if kubelet is not None else None
    if path is not None and Path(path).exists():
        return Path(path)
    if previous:
        raise bad_request(f'previous terminated container "{container}" in pod "{name}" not found')
    raise StatusError(400, "BadRequest", f'container "{container}" in pod "{name}" is waiting to start: '
                                         f"{_waiting_reason(pod, container)}")


def read_tail(path: Path, tail_lines: int | None, limit_bytes: int | None = None) -> tuple[bytes, int]:
    """The file's content (last ``tail_lines`` lines when set) and the offset where it ended."""
    data = path.read_bytes()
    end = len(data)
    if tail_lines is not None:
        if tail_lines <= 0:
            data = b""
        else:
            lines = data.splitlines(keepends=True)
            data = b"".join(lines[-tail_lines:])
    if limit_bytes is not None and limit_bytes >= 0:
        data = data[:limit_bytes]
    return data, end


def read_from(path: Path, offset: int) -> tuple[bytes, int]:
    """What was appended after ``offset`` (everything again if the file was truncated or replaced)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            if size < offset:
                offset = 0
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return b"", offset
    return data, offset + len(data)
