"""``pods/log`` of the embedded API server: which file holds a container's log, and how to read it.

The kubelet of the pod's node knows where a container's output goes
(``kubelet.container_log_path(namespace, pod, container, previous)``). :func:`resolve_log`
checks the request the way kube-apiserver does (container required when the pod has several,
unknown container, not started yet, no previous instance) and returns that path;
:func:`read_tail` reads the whole file or its last ``tailLines`` lines. Following is done by the
HTTP layer, which re-reads the file from the last offset until the container stops.
:func:`parse_log_options` reads the query kube-apiserver forwards to a kubelet's
``/containerLogs`` (follow, previous, timestamps, sinceSeconds, sinceTime, tailLines, limitBytes)
into :class:`LogOptions`. Our log files hold raw output without per-line times, so
``timestamps`` stamps lines with the file's last write and ``since*`` applies to the whole
file (nothing when it was last written before that time): coarser than a CRI log, never wrong
about a file that was idle.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from ..status import StatusError, bad_request


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


@dataclass(frozen=True)
class LogOptions:
    """A container log request (core/v1 PodLogOptions as a kubelet receives it)."""

    follow: bool = False
    previous: bool = False
    timestamps: bool = False
    since: float | None = None  # epoch seconds
    tail_lines: int | None = None
    limit_bytes: int | None = None


def _flag(value: str | None) -> bool:
    return (value or "").lower() in ("true", "1")


def _number(name: str, value: str | None) -> int | None:
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise bad_request(f"{name}: invalid value {value!r}: must be an integer") from None


def parse_log_options(arg: Callable[[str], str | None], now: float) -> LogOptions:
    """The options in a query (``arg(name)`` gives a parameter or None); 400 on a malformed value."""
    since = None
    seconds = _number("sinceSeconds", arg("sinceSeconds"))
    if seconds is not None:
        since = now - seconds
    text = arg("sinceTime")
    if text:
        try:
            since = datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
        except ValueError:
            raise bad_request(f"sinceTime: invalid value {text!r}: must be an RFC 3339 time") from None
    return LogOptions(follow=_flag(arg("follow")), previous=_flag(arg("previous")), timestamps=_flag(arg("timestamps")),
                      since=since, tail_lines=_number("tailLines", arg("tailLines")),
                      limit_bytes=_number("limitBytes", arg("limitBytes")))


def written_since(path: Path, since: float | None) -> bool:
    """Whether the file was written at or after ``since`` (always true without a since)."""
    return since is None or os.stat(path).st_mtime >= since


def stamp_lines(data: bytes, when: float) -> bytes:
    """Prefix each line with ``when`` in RFC 3339 with nanoseconds, as ``--timestamps`` shows it."""
    if not data:
        return data
    moment = datetime.datetime.fromtimestamp(when, datetime.timezone.utc)
    prefix = (moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond:06d}000Z ").encode()
    lines = data.splitlines(keepends=True)
    return b"".join(prefix + line for line in lines)
