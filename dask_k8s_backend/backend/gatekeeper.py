"""Who may join the scheduler: only workers of executors this backend created and still wants.

The scheduler's ``register-worker`` handler is wrapped: a worker's name must be the executor
id of a pod of this app that is neither being deleted nor excluded, and its dask/distributed
versions must match the scheduler's. Refused workers get the same ``{"status": "error"}``
answer the scheduler gives a duplicate name, so the worker process exits with that message,
and the refusal is recorded where the user sees it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from distributed.versions import get_versions

if TYPE_CHECKING:
    from .plugin import KubernetesSchedulerBackend

logger = logging.getLogger(__name__)

CHECKED_PACKAGES = ("dask", "distributed")


def version_mismatch(scheduler_versions: dict[str, Any], worker_versions: dict[str, Any]) -> list[str]:
    """Packages whose versions differ between scheduler and worker, as 'name scheduler=X worker=Y'."""
    ours = (scheduler_versions or {}).get("packages", {})
    theirs = (worker_versions or {}).get("packages", {})
    return [
        f"{pkg} scheduler={ours.get(pkg)} worker={theirs.get(pkg)}"
        for pkg in CHECKED_PACKAGES
        if pkg in theirs and ours.get(pkg) != theirs.get(pkg)
    ]


class RegistrationGatekeeper:
    """Wraps the scheduler's worker registration with the backend's admission rules."""

    def __init__(self, backend: KubernetesSchedulerBackend) -> None:
        self.backend = backend
        self._original: Any = None
        self._closed = False
        self._versions = get_versions()
        self.refused: list[tuple[str, str]] = []

    def install(self, scheduler: Any) -> None:
        self._original = scheduler.handlers["register-worker"]
        scheduler.handlers["register-worker"] = self.register_worker

    def close(self) -> None:
        """From now on every registration is refused: the app is shutting down."""
        self._closed = True

    def refusal(self, name: Any, versions: dict[str, Any]) -> str | None:
        """Why this worker may not join, or None when it may."""
        if self._closed:
            return f"worker {name!r} refused: app {self.backend.app.app_id} is shutting down"
        components = self.backend.components
        try:
            executor_id = int(name)
        except (TypeError, ValueError):
            return (
                f"worker {name!r} refused: workers of a KubeSparkCluster are named by executor id, "
                f"and {name!r} is not one; start workers through cluster.scale(), not by hand"
            )
        if components is None or not components.is_wanted(executor_id):
            return (
                f"worker {name!r} refused: executor {executor_id} is unknown to app {self.backend.app.app_id}, "
                "excluded, or being deleted"
            )
        mismatch = version_mismatch(self._versions, versions)
        if mismatch:
            return (
                f"worker {name!r} refused: its image {self.backend.settings.image!r} runs different versions "
                f"than the scheduler ({'; '.join(mismatch)}); use an image with the scheduler's versions"
            )
        return None

    async def register_worker(self, comm: Any, **msg: Any) -> None:
        reason = self.refusal(msg.get("name"), msg.get("versions") or {})
        if reason is None:
            return await self._original(comm, **msg)
        self.refused.append((str(msg.get("name")), reason))
        self.backend.record(reason)
        logger.warning("%s", reason)
        from distributed.metrics import time

        await comm.write({"status": "error", "message": reason, "time": time()})
