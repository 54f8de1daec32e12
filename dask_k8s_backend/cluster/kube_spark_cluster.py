"""KubeSparkCluster: the notebook user's handle on Dask workers running as Kubernetes pods.

A thin layer over :class:`distributed.deploy.Cluster`. Everything interesting happens in the
scheduler process, in :class:`~dask_k8s_backend.backend.plugin.KubernetesSchedulerBackend`;
this class only

1. validates the configuration and the master URL (before anything is created),
2. connects to Kubernetes through the cluster-manager registry (``master.py``),
3. in client mode starts a Dask scheduler in this process with the backend plugin installed,
4. and forwards ``scale``/``scale_down``/``status``/``logs``/``close`` to the plugin's RPC
   handlers over ``scheduler_comm``, exactly as it would for a scheduler in a pod.

After ``close()`` there is no scheduler to forward to: scaling, adapting and changing groups raise
:class:`ClusterClosedError` saying what to do, and the status view says the cluster is closed.

Written async-first; distributed's ``SyncMethodMixin`` gives the blocking API.
"""

from __future__ import annotations

import asyncio
import datetime
import html
import math
import time
import logging
import uuid
import warnings
import weakref
from contextlib import suppress
from typing import Any

from distributed.core import Status, rpc
from tornado.ioloop import PeriodicCallback
from distributed.deploy.cluster import Cluster
from distributed.scheduler import Scheduler
from distributed.security import Security
from distributed.utils import Log, Logs, in_async_call

from .. import labels
from ..backend.allocation.groups import group_settings, validate_group_name
from ..backend.plugin import KubernetesSchedulerBackend
from ..config import Settings, load_settings
from ..kube.errors import Forbidden
from ..kube.master import KubeConnection, resolve_manager
from ..pods.builder import AppSpec, base_pod, check_executor_pod
from .adaptive import GroupView, RemoteAdaptive, adapt_options
from .cluster_mode import start_cluster_mode, find_scheduler_pod, scheduler_address, scheduler_uses_tls, delete_scheduler_pod
from .preflight import check_cluster, check_worker_group, warn_before_scale
from .preflight_access import POD_LOGS, Permission, feature_refusal
from .preflight_policies import group_argument
from .status_view import ClusterStatus, format_status_table, render_cluster_status_html
from .tls_secret import create_tls_secret, generate_tls_material, scheduler_security, read_tls_material, delete_tls_secret
from .waiting import wait_for_workers

logger = logging.getLogger(__name__)

STATUS_REFRESH_MS = 500
DISPLAY_REFRESH_TIMEOUT = 5  # seconds a notebook's repr may wait for the backend before showing the last poll


def _kwargs_to_overrides(**kwargs: Any) -> dict[str, Any]:
    """Map the explicit constructor arguments to dotted configuration keys (None = unset)."""
    mapping = {
        "master": "master",
        "namespace": "namespace",
        "image": "image",
        "name": "name",
        "deploy_mode": "deploy-mode",
        "worker_cores": "worker.cores",
        "worker_memory": "worker.memory",
        "env": "worker.env",
        "labels": "worker.labels",
        "annotations": "worker.annotations",
        "node_selector": "worker.node-selector",
        "tolerations": "worker.tolerations",
        "service_account": "worker.service-account",
        "pod_template": "worker.pod-template",
    }
    return {mapping[k]: v for k, v in kwargs.items() if v is not None}


SECTIONS = ("scheduler", "worker", "allocation", "adaptive", "executor", "api", "authenticate", "security")


def flatten_overrides(config: dict[str, Any]) -> dict[str, Any]:
    """{"worker": {"memory": "2GiB"}, "image_pull_policy": "Always"} -> dotted kebab-case keys.

    Only the configuration's sections are descended into: mapping-valued options such as
    ``worker.env`` stay whole.
    """
    flat: dict[str, Any] = {}
    for key, value in config.items():
        key = key.replace("_", "-")
        if key in SECTIONS and isinstance(value, dict):
            flat.update({f"{key}.{k.replace('_', '-')}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


# add_worker_group's arguments -> the group's worker.* keys (the constructor's names, minus the app-wide ones)
GROUP_OPTIONS = {
    "worker_cores": "cores", "worker_memory": "memory", "resources": "resources", "node_selector": "node-selector",
    "tolerations": "tolerations", "pod_template": "pod-template", "env": "env", "labels": "labels",
    "annotations": "annotations",
}
DEPRECATED_GROUP_OPTIONS = {"cores": "worker_cores", "memory": "worker_memory"}


def group_options(group: str, given: dict[str, Any], deprecated: dict[str, Any]) -> dict[str, Any]:
    """``add_worker_group``'s explicit arguments as worker.* keys (a template dict travels apart).

    The old names ``cores=``/``memory=`` still work, with a FutureWarning naming the new one; giving
    both names of one option is refused, since which one wins would be a guess.
    """
    options = dict(given)
    for old, value in deprecated.items():
        if value is None:
            continue
        new = DEPRECATED_GROUP_OPTIONS[old]
        if options.get(new) is not None:
            raise ValueError(f"add_worker_group({group!r}, {old}={value!r}, {new}={options[new]!r}): {old} is the "
                             f"deprecated name of {new}; pass only {new}=...")
        warnings.warn(f"add_worker_group({old}=...) is deprecated and will be removed; use {new}={value!r}, the "
                      "name KubeSparkCluster(...) uses", FutureWarning, stacklevel=3)
        options[new] = value
    if isinstance(options.get("pod_template"), dict):
        options["pod_template"] = None
    return {GROUP_OPTIONS[k]: v for k, v in options.items() if v is not None}


def validate_group_image(group: str, image: Any) -> str | None:
    """The group's own image, or None to use the cluster's; refused before anything is created when blank."""
    if image is not None and (not isinstance(image, str) or not image.strip() or image != image.strip()):
        raise ValueError(f"add_worker_group({group!r}, image={image!r}): expected an image reference such as "
                         "'ghcr.io/dask/dask:latest'; leave image out to use the cluster's image")
    return image


def check_group_template_image(group: str, image: str | None, template: dict | None, settings: Settings) -> None:
    """A group's ``image=`` and an image pinned by its pod template contradict each other (the template's
    would win, silently): refuse the pair and say which to drop."""
    if image is None:
        return
    pod, index = base_pod(template, settings)
    pinned = pod["spec"]["containers"][index].get("image")
    if pinned and pinned != image:
        raise ValueError(f"add_worker_group({group!r}, image={image!r}): the group's pod_template already sets the "
                         f"worker container's image to {pinned!r}, which would win; pass only one of them")


def refuse_outliving_embedded(settings: Settings, shutdown_on_close: bool) -> None:
    """Cluster deploy mode with shutdown_on_close=False keeps the scheduler pod after this process ends; on
    the in-process embedded Kubernetes that pod would outlive the Kubernetes that runs it. Refused before
    anything is created, pointing to an embedded Kubernetes in a process of its own."""
    if settings.deploy_mode != "cluster" or shutdown_on_close or not settings.master.startswith("embedded://"):
        return
    raise ValueError(
        f"KubeSparkCluster(deploy_mode='cluster', shutdown_on_close=False) on master {settings.master!r}: the embedded "
        "Kubernetes runs inside this Python process, so the scheduler pod meant to outlive it would lose its "
        "Kubernetes (and keep running unmanaged) when this process exits; nothing was created. Run the embedded "
        "Kubernetes in a process of its own, `python -m dask_k8s_backend embedded --kubeconfig F`, and connect with "
        "KubeSparkCluster(master=\"k8s://\", authenticate={\"kubeconfig\": F}, deploy_mode=\"cluster\", "
        "shutdown_on_close=False) (or export KUBECONFIG=F); or keep shutdown_on_close=True."
    )


def _validate_worker_count(value: Any, option: str) -> int:
    """Worker counts must be whole numbers >= 0; reject before anything is created."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{option}: expected a whole number of workers >= 0, got {value!r}; pass an int such as 4")
    return value


def _loopback_if_local(connection: KubeConnection) -> str | None:
    """A local API server (e.g. the embedded one reached through k8s://) runs pods on this machine:
    they reach the scheduler on the loopback. Otherwise None lets Dask pick the outbound address."""
    from urllib.parse import urlsplit

    host = urlsplit(connection.api_client.configuration.host).hostname or ""
    return "127.0.0.1" if host in ("localhost", "::1") or host.startswith("127.") else None


class ClusterClosedError(RuntimeError):
    """A closed cluster was asked to scale, adapt or change its groups; the message says what to do instead."""


class KubeSparkCluster(Cluster):
    """Dask workers as Kubernetes pods, allocated and replaced the way Spark manages executors.

    >>> cluster = KubeSparkCluster()                      # embedded Kubernetes, no setup
    >>> cluster = KubeSparkCluster(master="k8s://https://host:443", image="ghcr.io/dask/dask")
    >>> client = Client(cluster); cluster.scale(10)       # or cluster.adapt(minimum=0, maximum=50)

    Every argument left at None takes its ``k8s-backend.*`` configuration value; all of them are
    validated before anything is created (a bad value raises ``ValueError`` naming the key).

    Args:
        master: ``embedded://`` (the default), ``k8s://https://host:port``, several API servers
            separated by commas, or ``k8s://`` for the kubeconfig or in-cluster account
            (``k8s-backend.master``).
        name: application name; pod names derive from it (``k8s-backend.name``; None: ``dask-<random>``).
        namespace: namespace of the worker pods (``k8s-backend.namespace``).
        image: container image of the workers, and of the scheduler in cluster mode (``k8s-backend.image``).
        n_workers: workers of the default group to start with (``scale(n_workers)`` once started).
        worker_cores: threads per worker and the pod's cpu request (``k8s-backend.worker.cores``).
        worker_memory: memory of each worker, e.g. ``"2GiB"`` (``k8s-backend.worker.memory``).
        env: environment variables of the worker containers (``k8s-backend.worker.env``).
        labels: extra labels of the worker pods (``k8s-backend.worker.labels``).
        annotations: extra annotations of the worker pods (``k8s-backend.worker.annotations``).
        node_selector: nodeSelector of the worker pods (``k8s-backend.worker.node-selector``).
        tolerations: tolerations of the worker pods (``k8s-backend.worker.tolerations``).
        service_account: service account of the worker pods, and of the scheduler pod in cluster mode
            (``k8s-backend.worker.service-account``).
        pod_template: path of a pod template file, or the template itself as a dict
            (``k8s-backend.worker.pod-template``).
        deploy_mode: ``"client"`` (the scheduler runs in this process) or ``"cluster"`` (in a pod)
            (``k8s-backend.deploy-mode``).
        asynchronous: use the cluster from async code (``await KubeSparkCluster(..., asynchronous=True)``).
        loop: the event loop to run on, as for any distributed cluster.
        quiet: do not print the cluster's log lines.
        shutdown_on_close: ``close()`` deletes the workers (and the scheduler pod); in cluster mode False
            only disconnects, and ``from_name`` reconnects later.
        **config: any other option, as a section mapping (``worker={"memory": "2GiB"}``) or a top-level
            key (``image_pull_policy="Always"``); underscores stand for dashes.
    """

    def __init__(
        self,
        master: str | None = None,
        name: str | None = None,
        namespace: str | None = None,
        image: str | None = None,
        n_workers: int = 0,
        worker_cores: float | None = None,
        worker_memory: str | int | None = None,
        env: dict[str, str] | None = None,
        labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
        node_selector: dict[str, str] | None = None,
        tolerations: list[dict[str, Any]] | None = None,
        service_account: str | None = None,
        pod_template: str | dict | None = None,
        deploy_mode: str | None = None,
        asynchronous: bool = False,
        loop: Any = None,
        quiet: bool = False,
        shutdown_on_close: bool = True,
        _attach: bool = False,
        **config: Any,
    ) -> None:
        self._n_workers = _validate_worker_count(n_workers, "KubeSparkCluster(n_workers=...)")
        overrides = _kwargs_to_overrides(
            master=master, namespace=namespace, image=image, name=name, deploy_mode=deploy_mode,
            worker_cores=worker_cores, worker_memory=worker_memory, env=env, labels=labels,
            annotations=annotations, node_selector=node_selector, tolerations=tolerations,
            service_account=service_account,
            pod_template=pod_template if not isinstance(pod_template, dict) else None,
        )
        # Validate everything before anything is created: a bad value raises here.
        self.overrides = {**flatten_overrides(config), **overrides}
        self.settings: Settings = load_settings(self.overrides)
        self._pod_template = pod_template if isinstance(pod_template, dict) else None
        self._manager = resolve_manager(self.settings.master)
        self.app = AppSpec(
            app_id=uuid.uuid4().hex[:10],
            app_name=self.settings.name or f"dask-{uuid.uuid4().hex[:6]}",
            namespace=self.settings.namespace,
        )
        self.shutdown_on_close = shutdown_on_close
        self._attach = _attach
        if not _attach:
            refuse_outliving_embedded(self.settings, shutdown_on_close)
        if not _attach:  # a bad template or worker setting fails now, before anything is created
            check_executor_pod(app=self.app, settings=self.settings, template=self._pod_template)
        self.connection: KubeConnection | None = None
        self.scheduler: Scheduler | None = None
        self._status_cache: ClusterStatus = ClusterStatus.empty(self.app)
        self.pods_left_after_close = -1  # counted through the API by close()
        # optional permissions the preflight found missing (warned once); the features needing them say so
        self.missing_optional_permissions: tuple[Permission, ...] = ()
        self.security = Security()  # replaced by the app's own TLS Security when security.tls is set
        self._tls_secret = False
        self._group_adaptives: dict[str, Any] = {}
        self._status_pane: Any = None  # the live widget's Status pane, once distributed built the widget
        # name -> (settings, template) of the groups this client added: their pods' quota checks
        self._group_recipes: dict[str, tuple[Settings, dict | None]] = {}
        super().__init__(asynchronous=asynchronous, loop=loop, quiet=quiet, name=self.app.app_name)
        self._pod_reaper: weakref.finalize | None = None
        if not self.called_from_running_loop:
            self._loop_runner.start()
            try:
                self.sync(self._start)
            except BaseException:
                self.close()
                raise

    # ------------------------------------------------------------------ start / close
    def __await__(self):
        async def _() -> KubeSparkCluster:
            if self.status == Status.created:
                try:
                    await self._start()
                except BaseException:
                    await self._close()
                    raise
            return self

        return _().__await__()

    async def _start(self) -> None:
        if self.status != Status.created:
            return
        self.status = Status.starting
        self.connection = await asyncio.to_thread(self._manager.connect, self.settings.master, self.settings)
        if not self._attach:  # RBAC, namespace, quotas: fail here, before anything is created
            await check_cluster(self)
        if self._attach:
            address = await self._attach_to_running_scheduler()
        elif self.settings.deploy_mode == "cluster":
            address = await start_cluster_mode(self)
        else:
            address = await self._start_local_scheduler()
        self.scheduler_comm = rpc(address, connection_args=self.security.get_connection_args("client"))
        if self.shutdown_on_close:
            # An unclosed cluster still deletes its pods when collected or at interpreter exit (weakref.finalize
            # runs at exit too); the callback holds only what deletion needs, never self.
            self._pod_reaper = weakref.finalize(self, _reap_pods, self.connection, self.app.namespace, self.app.app_id)
        # Adaptive reads plan/requested/observed each tick: keep the executors' view fresh.
        self.periodic_callbacks["k8s-status"] = PeriodicCallback(self._refresh_status_quietly, STATUS_REFRESH_MS)
        await super()._start()
        self._log(f"KubeSparkCluster {self.app.app_name} ({self.app.app_id}) on {self.connection.master}")
        if self._n_workers:
            await self._scale(self._n_workers)

    async def _start_local_scheduler(self) -> str:
        assert self.connection is not None
        options = self.settings.scheduler
        host = options.host or self.connection.scheduler_host or _loopback_if_local(self.connection)
        plugin = KubernetesSchedulerBackend(
            settings=self.settings, app=self.app, connection=self.connection, pod_template=self._pod_template
        )
        protocol = await self._start_tls() if self.settings.security.tls else None
        self.scheduler = Scheduler(
            security=self.security,
            protocol=protocol,
            host=host,
            port=options.port,
            dashboard_address=options.dashboard_address,
            dashboard=options.dashboard_address is not None,
            plugins=[plugin],
            validate=False,
        )
        await self.scheduler
        return self.scheduler.address

    async def _start_tls(self) -> str:
        """Generate this app's certificates, store them in its Secret for the pods; returns "tls"."""
        assert self.connection is not None
        material = await asyncio.to_thread(generate_tls_material, self.app.app_id)
        await asyncio.to_thread(create_tls_secret, self.connection.api_client, self.app, material)
        self._tls_secret = True
        self.security = scheduler_security(material)
        return "tls"

    @classmethod
    def from_name(
        cls, name: str, master: str | None = None, namespace: str | None = None, asynchronous: bool = False,
        shutdown_on_close: bool = True, **config: Any,
    ) -> KubeSparkCluster:
        """Reconnect to a running cluster-mode cluster called ``name`` (its scheduler runs in a pod)."""
        return cls(
            master=master, name=name, namespace=namespace, deploy_mode="cluster", asynchronous=asynchronous,
            shutdown_on_close=shutdown_on_close, _attach=True, **config,
        )

    async def _attach_to_running_scheduler(self) -> str:
        assert self.connection is not None
        pod = await find_scheduler_pod(self.connection, self.app.namespace, self.app.app_name)
        self.app = AppSpec(app_id=pod["metadata"]["labels"][labels.APP_ID], app_name=self.app.app_name, namespace=self.app.namespace)
        tls = scheduler_uses_tls(pod, self.app)
        if tls:
            await self._attach_tls()
        return scheduler_address(pod, self.app, self.connection, self.settings.scheduler.connect_via, tls)

    async def _attach_tls(self) -> None:
        """A TLS cluster-mode scheduler accepts only this app's certificates: read them from its Secret."""
        assert self.connection is not None
        material = await asyncio.to_thread(read_tls_material, self.connection.api_client, self.app)
        self.security = scheduler_security(material)
        self._tls_secret = True  # ours to delete when this handle shuts the cluster down

    async def _close(self) -> None:
        if self.status in (Status.closed, Status.closing):
            return
        was_running = self.status == Status.running
        # A cluster that failed to start removes whatever it created, whatever shutdown_on_close says.
        shutdown = self.shutdown_on_close or not was_running
        self._forget_adaptives()
        if was_running and shutdown and self.scheduler_comm is not None:
            await self._shutdown_backend()
        if self._tls_secret and shutdown and self.connection is not None:
            await self._guarded("deleting the TLS secret",
                                asyncio.to_thread(delete_tls_secret, self.connection.api_client, self.app))
        if shutdown and self.settings.deploy_mode == "cluster" and self.connection is not None and not self._attach_failed():
            await self._guarded("deleting the scheduler pod", delete_scheduler_pod(self))
        await super()._close()
        self.status = Status.closing
        if self.scheduler is not None:
            await self._guarded("closing the scheduler", self.scheduler.close())
        if self.connection is not None and (shutdown or self.connection.embedded is None):
            await self._guarded("closing the Kubernetes connection", asyncio.to_thread(self.connection.close))
        self.status = Status.closed
        self._status_cache = self._status_cache.after_close(self._what_close_left(shutdown))
        self.scheduler_info = {"workers": {}}  # the last poll's workers are gone with the scheduler
        self._refresh_widget_after_close()
        if self._pod_reaper is not None and (shutdown or not self.shutdown_on_close):
            self._pod_reaper.detach()  # closed properly (or deliberately left running)

    def _what_close_left(self, shutdown: bool) -> str:
        """One sentence for the closed cluster's status and for refusing its scale/adapt: what is left, what to do."""
        if not shutdown and self.settings.deploy_mode == "cluster":
            return (f"its scheduler pod and workers were left running (shutdown_on_close=False); reconnect with "
                    f"KubeSparkCluster.from_name({self.app.app_name!r})")
        if not shutdown:
            return ("its scheduler stopped and its worker pods were left to exit on their own after "
                    "k8s-backend.worker.death-timeout (shutdown_on_close=False); create a new KubeSparkCluster to run "
                    "workers again")
        left = (f"{self.pods_left_after_close} of its pods were still present at close; "
                if self.pods_left_after_close > 0 else "")
        return f"{left}its scheduler and worker pods were shut down; create a new KubeSparkCluster to run workers again"

    def _refuse_if_closed(self, what: str) -> None:
        """A closed cluster has no scheduler to ask: say so, instead of an RPC error about a closed comm."""
        if self.status in (Status.closing, Status.closed):
            raise ClusterClosedError(f"{what}: this cluster is closed (KubeSparkCluster {self.app.app_name!r}, app "
                                     f"{self.app.app_id}): {self._status_cache.closed or 'it is closing'}.")

    def _attach_failed(self) -> bool:
        """from_name found no scheduler: there is nothing of ours to delete."""
        return self._attach and self.scheduler_comm is None

    async def _shutdown_backend(self) -> None:
        """Retire workers (their data is not needed any more, so just close them) and delete every pod."""
        result = await self._guarded(
            "deleting the worker pods", self.scheduler_comm.k8s_shutdown(timeout=60)  # type: ignore[union-attr]
        )
        self.pods_left_after_close = result.get("remaining", -1) if result else -1
        if result and result.get("remaining"):
            logger.warning("%d pods of app %s were still present after close", result["remaining"], self.app.app_id)

    def keep_log(self, message: str) -> None:
        """Keep a message that was already logged in ``get_logs()`` without printing it again
        (``Cluster._log`` prints too, so a logged warning would be shown twice)."""
        self._cluster_manager_logs.append((datetime.datetime.now(), message))

    @staticmethod
    async def _guarded(what: str, awaitable: Any) -> Any:
        """Shutdown is best effort: log a failing step and let the next one run."""
        try:
            return await awaitable
        except Exception:
            logger.warning("Error while %s", what, exc_info=True)
            return None

    # ------------------------------------------------------------------ scaling
    def scale(self, n: int = 0, group: str = "default", memory: Any = None, cores: Any = None) -> Any:
        """Ask for ``n`` workers (of ``group``); pods are created or retired-then-deleted to match."""
        self._refuse_if_closed(f"scale({n!r})")
        _validate_worker_count(n, "KubeSparkCluster.scale(n)")
        if memory is not None or cores is not None:
            raise ValueError(
                "KubeSparkCluster.scale(memory=..., cores=...) is not supported: set worker_memory/"
                "worker_cores on the cluster, or use a worker group with its own resources"
            )
        return self.sync(self._scale, n, group)

    async def _scale(self, n: int, group: str = "default") -> None:
        await warn_before_scale(self, n, group)  # logs when the quota cannot hold the new pods
        await self.scheduler_comm.k8s_request_total_executors(n=n, group=group)  # type: ignore[union-attr]
        await self._refresh_status()

    def scale_up(self, n: int, group: str = "default") -> Any:
        return self.scale(n, group=group)

    def scale_down(self, workers: Any) -> Any:
        """Retire these workers (names = executor ids, or addresses), then delete their pods."""
        self._refuse_if_closed("scale_down(...)")
        return self.sync(self._scale_down, list(workers))

    async def _scale_down(self, workers: list[Any]) -> None:
        await self.scheduler_comm.k8s_kill_executors(workers=[str(w) for w in workers])  # type: ignore[union-attr]
        await self._refresh_status()

    # ------------------------------------------------------------------ worker groups and adapt
    def add_worker_group(
        self, name: str, *, worker_cores: float | None = None, worker_memory: str | int | None = None,
        resources: dict[str, float] | None = None, node_selector: dict[str, str] | None = None,
        tolerations: list[dict[str, Any]] | None = None, pod_template: str | dict | None = None,
        env: dict[str, str] | None = None, labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None, image: str | None = None,
        cores: float | None = None, memory: str | int | None = None,
    ) -> Any:
        """Add a group of workers with their own resources and image (scale it with ``scale(n, group=name)``).

        The arguments are the constructor's (``worker_cores``, ``worker_memory``, ``env``, ...), so a
        group reads like a cluster; ``image`` gives the group's pods their own image, as the Dask
        operator's worker groups do. ``cores``/``memory`` are the old names, deprecated.
        """
        self._refuse_if_closed(f"add_worker_group({name!r}, ...)")
        validate_group_name(name)
        explicit = group_options(name, dict(
            worker_cores=worker_cores, worker_memory=worker_memory, resources=resources, node_selector=node_selector,
            tolerations=tolerations, pod_template=pod_template, env=env, labels=labels, annotations=annotations,
        ), {"cores": cores, "memory": memory})
        worker_overrides = {k.split(".", 1)[1]: v for k, v in self.overrides.items() if k.startswith("worker.")}
        worker_overrides.update(explicit)
        image = validate_group_image(name, image)
        settings = group_settings(self.settings, worker_overrides, image)  # validates before anything is created
        template = pod_template if isinstance(pod_template, dict) else None
        check_group_template_image(name, image, template, settings)
        pod = check_executor_pod(app=self.app, settings=settings, template=template)
        return self.sync(self._add_worker_group, name, worker_overrides, template, settings, pod, explicit, image)

    async def _add_worker_group(self, name: str, worker_overrides: dict[str, Any], template: dict | None,
                                settings: Settings, pod: dict, explicit: dict[str, Any], image: str | None) -> None:
        await check_worker_group(self, name, pod, settings, explicit)  # LimitRange/quota: before anything exists
        await self.scheduler_comm.k8s_add_worker_group(  # type: ignore[union-attr]
            name=name, worker_overrides=worker_overrides, template=template, image=image)
        self._group_recipes[name] = (settings, template)
        await self._refresh_status()

    def remove_worker_group(self, name: str) -> Any:
        """Retire and delete the group's workers, then forget the group."""
        self._refuse_if_closed(f"remove_worker_group({name!r})")
        adaptive = self._group_adaptives.pop(name, None)
        if adaptive is not None and not isinstance(adaptive, RemoteAdaptive):
            adaptive.stop(reason="group removed")  # a loop in this process; the backend stops its own
        return self.sync(self._remove_worker_group, name)

    async def _remove_worker_group(self, name: str) -> None:
        await self.scheduler_comm.k8s_remove_worker_group(name=name)  # type: ignore[union-attr]
        self._group_recipes.pop(name, None)
        await self._refresh_status()

    def adapt(self, Adaptive: Any = None, *, minimum: int = 0, maximum: int | float = math.inf,
              group: str = "default", scale_down_window: float | str | None = None, interval: float | str | None = None,
              wait_count: int | None = None, target_duration: float | str | None = None, **kwargs: Any) -> Any:
        """Adaptive scaling of one group (default: the default group) between minimum and maximum.

        The loop runs beside the scheduler, in the backend (so a cluster-mode cluster keeps scaling with no
        client connected): scale-up is immediate, scale-down waits until the highest target recommended
        within ``scale_down_window`` (default ``k8s-backend.adaptive.scale-down-window``, 30 s) comes down,
        so short idle gaps between bursts keep their workers. ``interval``, ``wait_count`` and
        ``target_duration`` are distributed's Adaptive options. An ``Adaptive`` class of your own runs in
        this process instead, as with any distributed cluster.
        """
        self._refuse_if_closed(f"adapt(minimum={minimum!r}, maximum={maximum!r})")
        _validate_worker_count(minimum, "adapt(minimum=...)")
        if maximum != math.inf:
            _validate_worker_count(maximum, "adapt(maximum=...)")
        if minimum > maximum:
            raise ValueError(f"adapt(minimum={minimum}, maximum={maximum}): minimum is larger than maximum; "
                             "use minimum <= maximum")
        previous = self._group_adaptives.pop(group, None)
        if previous is not None and not isinstance(previous, RemoteAdaptive):
            previous.stop(reason="replaced")
        if Adaptive is not None:
            options = {k: v for k, v in dict(interval=interval, wait_count=wait_count,
                                             target_duration=target_duration).items() if v is not None}
            adaptive = Adaptive(cluster=GroupView(self, group), minimum=minimum, maximum=maximum, **options, **kwargs)
        else:
            if kwargs:
                raise TypeError(f"adapt() got unexpected keyword arguments {sorted(kwargs)}; it takes minimum, maximum, "
                                "group, scale_down_window, interval, wait_count and target_duration")
            adaptive = RemoteAdaptive(self, group, adapt_options(
                minimum=minimum, maximum=maximum, scale_down_window=scale_down_window, interval=interval,
                wait_count=wait_count, target_duration=target_duration))
            adaptive.start()
        self._group_adaptives[group] = adaptive
        if group == "default":
            self._adaptive = adaptive
        if maximum != math.inf:
            self._warn_before_adapt(int(maximum), group)
        return adaptive

    def _forget_adaptives(self) -> None:
        """At close: loops in this process stop; the backend's keep running while their scheduler lives
        (shutdown stops them with it; cluster mode with shutdown_on_close=False keeps scaling)."""
        for adaptive in list(self._group_adaptives.values()):
            if not isinstance(adaptive, RemoteAdaptive):
                adaptive.stop(reason="cluster closing")
        self._group_adaptives.clear()
        self._adaptive = None

    async def _start_adapt(self, group: str, options: dict[str, Any]) -> None:
        await self.scheduler_comm.k8s_adapt(group=group, **options)  # type: ignore[union-attr]
        await self._refresh_status()

    async def _stop_adapt(self, group: str) -> None:
        await self.scheduler_comm.k8s_adapt_stop(group=group)  # type: ignore[union-attr]
        await self._refresh_status()

    def _warn_before_adapt(self, maximum: int, group: str) -> None:
        """adapt(maximum=...) warns, as scale(n) does, when that many pods of the group cannot fit the quota."""
        asked = f"adapt(maximum={maximum}{group_argument(group)}) may need {{extra}} more worker pods"
        if self.asynchronous or self.called_from_running_loop:
            self.loop.add_callback(warn_before_scale, self, maximum, group, asked)  # logged when it answers
        else:
            self.sync(warn_before_scale, self, maximum, group, asked)

    # Adaptive's view of the cluster: planned, requested (pods that exist) and observed (registered).
    @property
    def plan(self) -> set[str]:
        return set(self._status_cache.planned_names())

    @property
    def requested(self) -> set[str]:
        return set(self._status_cache.requested_names())

    @property
    def observed(self) -> set[str]:
        return {str(d["name"]) for d in self.scheduler_info.get("workers", {}).values()}

    # ------------------------------------------------------------------ status / logs
    async def _refresh_status(self) -> ClusterStatus:
        if self._status_cache.closed:
            return self._status_cache  # nothing to ask any more; it says the cluster is closed
        raw = await self.scheduler_comm.k8s_status()  # type: ignore[union-attr]
        self._status_cache = ClusterStatus.from_dict(raw)
        return self._status_cache

    async def _refresh_status_quietly(self) -> None:
        if self.status != Status.running:
            return
        try:
            await self._refresh_status()
        except Exception as e:  # a transient RPC failure must not kill the periodic callback
            logger.debug("refreshing the executors' status failed: %s", e)

    def refresh_status(self) -> ClusterStatus:
        return self.sync(self._refresh_status)

    @property
    def status_table(self) -> str:
        """The terminal view: app, master, namespace, dashboard, a row per worker group and a table of executors."""
        return format_status_table(self._status_for_display(), dashboard=self._dashboard_or_none())

    def executors(self) -> list[dict[str, Any]]:
        return [dict(e) for e in self.refresh_status().executors]

    async def _wait_for_workers(self, n_workers: int = 0, timeout: float | None = None) -> None:
        await wait_for_workers(self, n_workers, timeout)

    def logs(self, executor_id: int | str, tail_lines: int | None = None) -> str:
        """The log of one executor pod (via pods/log)."""
        return self.sync(self._executor_log, executor_id, tail_lines)

    async def _executor_log(self, executor_id: int | str, tail_lines: int | None = None) -> str:
        what = f"cluster.logs({executor_id!r})"
        if POD_LOGS in self.missing_optional_permissions:  # the preflight knew: say it without asking again
            raise feature_refusal(what, "read pod logs", POD_LOGS, self.app.namespace)
        try:
            return await self.scheduler_comm.k8s_logs(executor_id=str(executor_id), tail_lines=tail_lines)  # type: ignore[union-attr]
        except Forbidden as e:  # the preflight could not ask (or the scheduler pod's account lacks it)
            raise feature_refusal(what, "read pod logs", POD_LOGS, self.app.namespace) from e

    async def _get_logs(self, cluster: bool = True, scheduler: bool = True, workers: Any = True) -> Logs:
        logs = await super()._get_logs(cluster=cluster, scheduler=scheduler, workers=False)
        if workers and POD_LOGS in self.missing_optional_permissions:
            logs["workers"] = Log(str(feature_refusal("get_logs()", "read pod logs", POD_LOGS, self.app.namespace)))
        elif workers:
            for executor_id, pod in (await self._log_sources()).items():
                if workers is not True and executor_id not in {str(w) for w in workers}:
                    continue
                logs[pod] = Log(await self._log_or_reason(executor_id))
        return logs

    async def _log_sources(self) -> dict[str, str]:
        """Executor id -> pod name: the current pods and those whose logs were kept after deletion."""
        status = await self._refresh_status()
        sources = await self.scheduler_comm.k8s_kept_logs()  # type: ignore[union-attr]
        sources.update({str(e["id"]): e["pod"] for e in status.executors})
        return dict(sorted(sources.items(), key=lambda item: int(item[0])))

    async def _log_or_reason(self, executor_id: str) -> str:
        """A log, or one line saying why there is none (a pod removed by scale-down has none): no traceback."""
        try:
            return await self._executor_log(executor_id)
        except Exception as e:
            return f"(no log for executor {executor_id}: {e})"

    # ------------------------------------------------------------------ display
    def _status_for_display(self) -> ClusterStatus:
        """Fresh from the backend when the caller may block (a notebook cell, a terminal); on the event loop
        (distributed's widget refresh) the periodic poll's, which is at most STATUS_REFRESH_MS old."""
        if self.status != Status.running or self.asynchronous or in_async_call(self.loop):
            return self._status_cache
        try:
            return self.sync(self._refresh_status, callback_timeout=DISPLAY_REFRESH_TIMEOUT)
        except Exception as e:  # the view still renders: with the last poll, and the error logged
            logger.debug("refreshing the status for display failed: %s", e)
            return self._status_cache

    def _dashboard_or_none(self) -> str | None:
        try:
            return self.dashboard_link
        except Exception:  # no scheduler address yet (starting) or dashboard disabled
            return None

    def _repr_html_(self, cluster_status: str | None = None) -> str:
        """distributed's cluster view (its template and look), with our app, groups and executors in its
        ``cluster_status`` slot, as LocalCluster fills it."""
        rows = render_cluster_status_html(self._status_for_display())
        return super()._repr_html_(cluster_status=rows + (cluster_status or ""))

    def _widget(self) -> Any:
        """distributed's live widget (Status and Scaling tabs, refreshed every cluster-repr-interval); we keep
        its Status pane to show the closed view once, since the refresh stops with the cluster."""
        widget = super()._widget()
        if widget is not None and self._status_pane is None:
            self._status_pane = widget.children[0]
        return widget

    def _refresh_widget_after_close(self) -> None:
        if self._status_pane is not None:
            self._status_pane.value = self._repr_html_()

    def _scaling_status(self) -> str:
        """The widget's Scaling tab: each group's policy (adaptive bounds or a manual target)."""
        status = self._status_cache
        rows = "".join(
            f'<tr><td style="text-align: left;">{html.escape(g)}: {html.escape(status.adaptive.get(g) or "manual")}, '
            f'target {status.targets.get(g, 0)}</td></tr>'
            for g in status.group_names()
        )
        return f"<table>{rows}</table>"

    def __repr__(self) -> str:
        counts = self._status_cache.phase_counts()
        text = ", ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "no pods"
        if self._status_cache.closed:
            text = f"closed: {self._status_cache.closed}"
        return f"KubeSparkCluster({self.app.app_name!r}, master={self.settings.master!r}, {text}, status={self.status.name})"


def delete_app_pods_now(connection: KubeConnection, namespace: str, app_id: str, timeout: float = 30) -> int:
    """Synchronously delete every pod of an app and wait until none is listed; returns how many remain.

    For interpreter exit: by then Python's thread pools refuse new work, so the asynchronous
    shutdown path cannot run; this uses the blocking client directly.
    """
    from kubernetes import client as k8s

    core = k8s.CoreV1Api(connection.api_client)
    selector = f"{labels.APP_ID}={app_id}"
    deadline = time.monotonic() + timeout
    while True:
        core.delete_collection_namespaced_pod(namespace, label_selector=selector, _preload_content=False)
        remaining = len(core.list_namespaced_pod(namespace, label_selector=selector).items)
        if remaining == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    _delete_app_leases_now(k8s.CoordinationV1Api(connection.api_client), namespace, selector)
    return remaining


def _delete_app_leases_now(coordination: Any, namespace: str, selector: str) -> None:
    """The app's heartbeat Lease goes with its pods (else `status` shows a dead app until `gc`)."""
    from kubernetes import client as k8s

    try:
        for lease in coordination.list_namespaced_lease(namespace, label_selector=selector).items:
            coordination.delete_namespaced_lease(lease.metadata.name, namespace)
    except k8s.ApiException as e:
        logger.debug("deleting the heartbeat lease at exit failed (%s); it expires and gc removes it", e.reason)


def _reap_pods(connection: KubeConnection, namespace: str, app_id: str) -> None:
    """Runs when a cluster that was never closed is garbage-collected or the interpreter exits."""
    try:
        remaining = delete_app_pods_now(connection, namespace, app_id)
        if remaining:
            logger.warning("%d pods of app %s were still present after cleanup", remaining, app_id)
    except Exception as e:
        logger.warning("deleting the pods of app %s failed: %s; run `python -m dask_k8s_backend gc --app %s`",
                       app_id, e, app_id)
    finally:
        with suppress(Exception):
            connection.close()
