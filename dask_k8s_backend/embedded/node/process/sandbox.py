"""What a pod's containers get from the node besides their spec: extra env and a hook run before exec.

Data flow: the process kubelet asks its :class:`PodSandbox` once per pod, before the first
container starts, for a :class:`ContainerSetup` (:meth:`PodSandbox.prepare`), adds the env to each
container's (the container's own env wins) and runs ``preexec`` in each container's child process
before exec; :meth:`PodSandbox.release` is called when the pod is gone. The embedded Kubernetes
uses :class:`NoSandbox`; the node agent's sandbox projects service-account tokens
(``dask_k8s_backend.embedded.node.agent.tokens``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol


@dataclass(frozen=True)
class ContainerSetup:
    """Env added to every container of a pod and a function run in the child before exec (or None)."""

    env: dict[str, str] = field(default_factory=dict)
    preexec: Callable[[], None] | None = None


class PodSandbox(Protocol):
    def prepare(self, pod: dict[str, Any], pod_dir: Path) -> ContainerSetup:
        """Called once per pod before its containers start; raising stops the pod from starting."""

    def release(self, uid: str) -> None:
        """The pod is gone: stop whatever was kept for it."""


class NoSandbox:
    """Nothing added: containers see only their own env (the embedded Kubernetes)."""

    def prepare(self, pod: dict[str, Any], pod_dir: Path) -> ContainerSetup:
        return ContainerSetup()

    def release(self, uid: str) -> None:
        pass
