"""AppHeartbeat: creates the app's Lease before its first pod and renews it while the backend lives.

Data flow::

    start() ──> LeaseApi.create (409: read, then take it over) ──> lease (uid) ──> owner_references()
                                                                                  (the pod builder)
    every renew-interval: renewed(lease, now) ──> LeaseApi.replace  (404: recreated, said once)
    stop(delete) ──> LeaseApi.delete (after the pods are gone: the garbage collector takes any left)
                 └─> or, when pods are kept, the Lease is released (no holder): dead at once for `gc`

The Lease and its rules are in :mod:`dask_k8s_backend.kube.app_lease`; this module is the I/O around
them. A server that serves no Leases, or credentials that may not create one, leave the app
without an owner and heartbeat (one warning): the backend still works, ``gc`` just cannot tell
that it died. Blocking client calls run in threads so the scheduler's loop never waits on them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from kubernetes import client as k8s

from ..clock import Clock
from ..kube import app_lease
from ..kube.errors import AlreadyExists, Forbidden, NotFound, translate
from ..pods.builder import AppSpec
from .tasks import stop_quietly

logger = logging.getLogger(__name__)


class LeaseApi:
    """The four Lease calls the heartbeat makes, on the official client, errors translated in one place."""

    def __init__(self, api_client: Any, namespace: str, request_timeout: float | None = None) -> None:
        self._api = k8s.CoordinationV1Api(api_client)
        self.namespace = namespace
        self._timeout = request_timeout

    async def _call(self, action: str, method: Callable[..., Any], *args: Any) -> dict:
        def run() -> dict:
            response = method(*args, _preload_content=False, _request_timeout=self._timeout)
            try:
                return json.loads(response.data or b"{}")
            finally:
                response.release_conn()

        try:
            return await asyncio.to_thread(run)
        except Exception as e:
            translated = translate(e, action)
            if translated is e:
                raise
            raise translated from e

    async def create(self, lease: dict) -> dict:
        return await self._call(f"create lease {lease['metadata']['name']} in namespace {self.namespace}",
                                self._api.create_namespaced_lease, self.namespace, lease)

    async def read(self, name: str) -> dict:
        return await self._call(f"read lease {name} in namespace {self.namespace}", self._api.read_namespaced_lease,
                                name, self.namespace)

    async def replace(self, lease: dict) -> dict:
        name = lease["metadata"]["name"]
        return await self._call(f"renew lease {name} in namespace {self.namespace}", self._api.replace_namespaced_lease,
                                name, self.namespace, lease)

    async def delete(self, name: str) -> None:
        await self._call(f"delete lease {name} in namespace {self.namespace}", self._api.delete_namespaced_lease,
                         name, self.namespace)


class AppHeartbeat:
    """The app's Lease: owner of its pods, renewed every ``interval`` seconds for ``duration``."""

    def __init__(self, *, api: Any, app: AppSpec, clock: Clock, interval: float, duration: float,
                 owner: dict[str, Any] | None = None, wall_time: Callable[[], float] = time.time) -> None:
        self.api = api
        self.app = app
        self.clock = clock  # paces the renewals
        self.wall_time = wall_time  # stamps them: other processes compare renewTime with their own wall clock
        self.interval = interval
        self.duration = max(1, int(round(duration)))
        self.owner = owner
        self.holder = f"{socket.gethostname()}/{os.getpid()}"
        self.lease: dict[str, Any] | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> dict[str, Any] | None:
        """Create (or take over) the Lease and start renewing it; None when there can be none."""
        try:
            self.lease = await self._create_or_take_over()
        except (NotFound, Forbidden) as e:
            logger.warning("app %s has no heartbeat lease (%s): its pods have no owner, and `python -m "
                           "dask_k8s_backend gc` cannot tell when it dies; grant create/get/update/delete/list on "
                           "leases.coordination.k8s.io", self.app.app_id, e)
            return None
        self._task = asyncio.get_running_loop().create_task(self._renew_forever())
        return self.lease

    async def _create_or_take_over(self) -> dict[str, Any]:
        lease = app_lease.build_lease(app_id=self.app.app_id, app_name=self.app.app_name, holder=self.holder,
                                      duration=self.duration, now=self.wall_time(), owner=self.owner)
        try:
            return await self.api.create(lease)
        except AlreadyExists:  # the same app's backend again (a restarted scheduler pod): keep its uid
            current = await self.api.read(lease["metadata"]["name"])
            return await self.api.replace(app_lease.renewed(current, holder=self.holder, duration=self.duration,
                                                            now=self.wall_time()))

    def owner_references(self, *, controller: bool) -> list[dict[str, Any]]:
        """References the pod builder adds to each worker pod (none without a Lease)."""
        if self.lease is None:
            return []
        return [app_lease.lease_owner_reference(self.lease, controller=controller)]

    async def renew(self) -> None:
        """One renewal; a Lease deleted from outside is recreated (its pods were garbage-collected with it)."""
        assert self.lease is not None
        try:
            self.lease = await self.api.replace(app_lease.renewed(self.lease, holder=self.holder,
                                                                  duration=self.duration, now=self.wall_time()))
        except NotFound:
            logger.warning("the heartbeat lease of app %s was deleted from outside (by `gc`?); Kubernetes deleted "
                           "the pods it owned; recreating it", self.app.app_id)
            self.lease = await self._create_or_take_over()

    async def _renew_forever(self) -> None:
        while True:
            await self.clock.sleep(self.interval)
            try:
                await self.renew()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                logger.warning("renewing the heartbeat lease of app %s failed (%s); retrying in %g s",
                               self.app.app_id, e, self.interval)

    async def stop(self, *, delete: bool) -> None:
        """Stop renewing; with ``delete`` remove the Lease (do it after the pods are gone), else release it."""
        await stop_quietly(self._task)
        self._task = None
        if delete and self.lease is not None:
            try:
                await self.api.delete(self.lease["metadata"]["name"])
            except NotFound:
                pass
            except Exception as e:
                logger.warning("deleting the heartbeat lease of app %s failed (%s); it expires in %d s and "
                               "`python -m dask_k8s_backend gc` removes it", self.app.app_id, e, self.duration)
            self.lease = None
        elif self.lease is not None:
            try:
                self.lease = await self.api.replace(app_lease.released(self.lease, now=self.wall_time()))
            except Exception as e:
                logger.warning("releasing the heartbeat lease of app %s failed (%s); it expires in %d s",
                               self.app.app_id, e, self.duration)
