"""Who may join the scheduler: only workers of executors this backend created and still wants.

The scheduler's ``register-worker`` handler is wrapped: a worker's name must be the executor
id of a pod of this app that is neither being deleted nor excluded, and its dask/distributed
versions must match the scheduler's. Refused workers get the same ``{"status": "error"}``
answer the scheduler gives a duplicate name, so the worker process exits with that message,
and the refusal is recorded where the user sees it.

A version mismatch is not a transient failure: every replacement would run the same image. So
the first one blocks the worker's group at once with one error naming both versions and the
image (``FailureTracker.block``), instead of replacing pods until ``max-failures`` is reached
and reporting "the worker exited with code 1".
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from distributed.versions import get_versions

from ..config import Settings
from ..pods.app_spec import AppSpec
from .components import BackendComponents

logger = logging.getLogger(__name__)


class GatedBackend(Protocol):
    """What the gatekeeper reads of the scheduler plugin, declared here so that only the plugin imports the other."""

    app: AppSpec
    settings: Settings
    components: BackendComponents | None

    def record(self, message: str, level: int = ...) -> None: ...

CHECKED_PACKAGES = ("dask", "distributed")


def versions_text(versions: dict[str, Any]) -> str:
    """'dask 2026.8.0 and distributed 2026.8.0'."""
    packages = (versions or {}).get("packages", {})
    return " and ".join(f"{pkg} {packages.get(pkg)}" for pkg in CHECKED_PACKAGES)


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

    def __init__(self, backend: GatedBackend) -> None:
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
                f"worker {name!r} refused: its image {self._image_of(executor_id)!r} runs different versions "
                f"than the scheduler ({'; '.join(mismatch)}); use an image with the scheduler's versions"
            )
        return None

    def _wanted_executor(self, name: Any) -> int | None:
        """The executor id of a worker this backend would admit but for its versions, else None."""
        components = self.backend.components
        try:
            executor_id = int(name)
        except (TypeError, ValueError):
            return None
        if self._closed or components is None or not components.is_wanted(executor_id):
            return None
        return executor_id

    def _image_of(self, executor_id: int) -> str:
        """The image of the executor's worker container as created (a group's template may pin its own)."""
        components = self.backend.components
        state = components.store.current.executor_pods.get(executor_id) if components is not None else None
        containers = ((state.pod.get("spec") or {}).get("containers") or []) if state is not None else []
        wanted = self.backend.settings.worker.pod_template_container_name
        chosen = next((c for c in containers if c.get("name") == wanted), containers[0] if containers else {})
        return chosen.get("image") or self.backend.settings.image

    def _block_group(self, executor_id: int, versions: dict[str, Any]) -> None:
        """Versions never fix themselves: stop creating pods for this group with one clear error."""
        components = self.backend.components
        if components is None:
            return
        group = components.group_of(executor_id) or "default"
        packages = self._versions.get("packages", {})
        pins = " and ".join(f"{pkg}=={packages.get(pkg)}" for pkg in CHECKED_PACKAGES)
        message = (
            f"Worker group {group!r} cannot run: its image {self._image_of(executor_id)!r} (executor {executor_id}) "
            f"runs {versions_text(versions)}, but the scheduler runs {versions_text(self._versions)}. Workers with "
            "other versions fail in obscure ways, so they are refused and no more pods are created for this group. "
            f"Use an image with {pins} (or run the scheduler with the image's versions), then recreate the "
            "cluster or the worker group."
        )
        components.failures.record_failure(group, executor_id, message)
        components.failures.block(group, message)

    async def register_worker(self, comm: Any, **msg: Any) -> None:
        reason = self.refusal(msg.get("name"), msg.get("versions") or {})
        if reason is None:
            return await self._original(comm, **msg)
        self.refused.append((str(msg.get("name")), reason))
        self.backend.record(reason, logging.WARNING)
        executor_id = self._wanted_executor(msg.get("name"))
        if executor_id is not None and version_mismatch(self._versions, msg.get("versions") or {}):
            self._block_group(executor_id, msg.get("versions") or {})
        from distributed.metrics import time

        await comm.write({"status": "error", "message": reason, "time": time()})
