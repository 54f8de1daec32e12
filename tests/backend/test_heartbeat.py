"""The app's heartbeat Lease: rules of app_lease (alive, dead, released, owner references) and the
AppHeartbeat's renewals on a manual clock against an in-memory Lease API."""

from __future__ import annotations

from fakes import run_async, settle

from dask_k8s_backend.kube import app_lease
from dask_k8s_backend.backend.heartbeat import AppHeartbeat
from dask_k8s_backend.clock import ManualClock
from dask_k8s_backend.kube.errors import AlreadyExists, NotFound
from dask_k8s_backend.pods.builder import AppSpec

APP = AppSpec(app_id="abc123", app_name="dask-x", namespace="default")
SCHEDULER_POD = {"apiVersion": "v1", "kind": "Pod", "name": "dask-x-scheduler", "uid": "pod-uid", "controller": True}


class FakeLeaseApi:
    def __init__(self) -> None:
        self.leases: dict[str, dict] = {}
        self.renewals = 0
        self._uids = iter(range(1, 1000))

    async def create(self, lease: dict) -> dict:
        name = lease["metadata"]["name"]
        if name in self.leases:
            raise AlreadyExists(f'leases.coordination.k8s.io "{name}" already exists')
        stored = {**lease, "metadata": {**lease["metadata"], "uid": f"uid-{next(self._uids)}", "namespace": "default"}}
        self.leases[name] = stored
        return stored

    async def read(self, name: str) -> dict:
        if name not in self.leases:
            raise NotFound(name)
        return self.leases[name]

    async def replace(self, lease: dict) -> dict:
        name = lease["metadata"]["name"]
        if name not in self.leases:
            raise NotFound(name)
        self.renewals += 1
        self.leases[name] = lease
        return lease

    async def delete(self, name: str) -> None:
        self.leases.pop(name, None)


def heartbeat(api, clock, wall, owner=None):
    return AppHeartbeat(api=api, app=APP, clock=clock, interval=10, duration=30, owner=owner,
                        wall_time=lambda: wall[0])


def test_a_lease_is_alive_while_renewed_within_its_duration_and_dead_after_or_once_released():
    lease = app_lease.build_lease(app_id="a", app_name="n", holder="h", duration=30, now=1000.0)
    assert lease["metadata"]["name"] == "n-a" and lease["metadata"]["labels"]["dask-k8s-backend/role"] == "owner"
    assert app_lease.is_alive(lease, 1029.0) and not app_lease.is_alive(lease, 1031.0)
    assert "alive (heartbeat 5 s ago)" == app_lease.describe(lease, 1005.0)
    assert app_lease.describe(lease, 1100.0).startswith("dead (no heartbeat for 100 s")
    released = app_lease.released(lease, now=1010.0)
    assert not app_lease.is_alive(released, 1011.0) and "closed" in app_lease.describe(released, 1011.0)
    assert "no heartbeat lease" in app_lease.describe(None, 0.0)


@run_async
async def test_the_lease_is_created_first_and_renewed_every_interval_with_the_wall_time():
    api, clock, wall = FakeLeaseApi(), ManualClock(), [1000.0]
    beat = heartbeat(api, clock, wall)
    lease = await beat.start()
    assert beat.owner_references(controller=True) == [
        {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "name": "dask-x-abc123", "uid": lease["metadata"]["uid"],
         "controller": True}]
    await settle()  # the renewal loop sleeps on the clock
    wall[0] = 1010.0
    clock.advance(10)
    await settle()
    assert api.renewals == 1
    assert app_lease.heartbeat_age(api.leases["dask-x-abc123"], 1010.0) == 0.0
    await beat.stop(delete=True)
    assert api.leases == {}


@run_async
async def test_in_cluster_mode_the_scheduler_pod_owns_the_lease_and_a_restart_takes_it_over():
    api, clock, wall = FakeLeaseApi(), ManualClock(), [1000.0]
    before = heartbeat(api, clock, wall, owner=SCHEDULER_POD)
    first = await before.start()
    assert first["metadata"]["ownerReferences"] == [SCHEDULER_POD]
    await before.stop(delete=False)
    again = heartbeat(api, clock, wall, owner=SCHEDULER_POD)
    taken = await again.start()
    assert taken["metadata"]["uid"] == first["metadata"]["uid"]  # the pods it owns keep their owner
    assert again.owner_references(controller=False)[0]["controller"] is False
    await again.stop(delete=True)


@run_async
async def test_a_lease_deleted_from_outside_is_recreated_and_closing_with_kept_pods_releases_it():
    api, clock, wall = FakeLeaseApi(), ManualClock(), [1000.0]
    beat = heartbeat(api, clock, wall)
    await beat.start()
    api.leases.clear()
    await beat.renew()
    assert "dask-x-abc123" in api.leases
    await beat.stop(delete=False)
    assert not app_lease.is_alive(api.leases["dask-x-abc123"], 1000.0)
