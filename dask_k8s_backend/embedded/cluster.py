"""``EmbeddedKubernetes``: a whole Kubernetes in this process, started and stopped as one thing.

It wires the parts together (docs/contracts.md): an :class:`ObjectStore`; one kubelet per node
(``ProcessKubelet`` runs real processes, ``SimulatedKubelet`` only pretends; ``kubelet=None``
runs with no nodes); the :class:`EmbeddedScheduler` binding pods to nodes; and the
:class:`ApiServer` on 127.0.0.1 with TLS and a random bearer token by default, whose
kubeconfig (mode 0600) kubectl and the official client use unchanged. Start order is store,
API server, kubelets, scheduler; :meth:`EmbeddedKubernetes.stop` undoes it in reverse, is
idempotent, and leaves no threads, ports or processes behind.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .api.admission import Admission
from .api.apiserver import ApiServer
from .api.authz import Identities, PolicyRule
from .api.faults import FaultInjector
from .api.tls import Credentials, make_credentials, write_kubeconfig
from .control.scheduler import EmbeddedScheduler
from .node.process.kubelet import ProcessKubelet
from .node.simulated import SimulatedKubelet
from .store.object_store import ObjectStore

logger = logging.getLogger(__name__)

KUBELETS = ("process", "simulated", None)


class EmbeddedKubernetes:
    """A local Kubernetes API with kubelets and a scheduler; a sync and async context manager.

    ``min_request_timeout`` (seconds, kube-apiserver's ``--min-request-timeout``, default 1800):
    a watch whose client gave no ``timeoutSeconds`` ends cleanly after a random time in
    [min_request_timeout, 2 * min_request_timeout), as on a real cluster, so clients must
    re-watch. Tests set it low to exercise that path; a client's ``timeoutSeconds`` always wins.
    """

    def __init__(self, kubelet: str | None = "process", nodes: int = 1, cpu: str = "4", memory: str = "8Gi",
                 pods: int = 110, node_labels: dict[str, str] | None = None, node_taints: list[dict] | None = None,
                 port: int = 0, tls: bool = True, faults: bool = False, work_dir: str | Path | None = None,
                 users: dict[str, list[dict]] | None = None, node_specs: list[dict[str, Any]] | None = None,
                 min_request_timeout: float = 1800.0, **kubelet_options: Any) -> None:
        if kubelet not in KUBELETS:
            raise ValueError(f"EmbeddedKubernetes: kubelet must be 'process', 'simulated' or None, got {kubelet!r}.")
        if not isinstance(nodes, int) or nodes < 0:
            raise ValueError(f"EmbeddedKubernetes: nodes must be a whole number >= 0, got {nodes!r}.")
        if not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"EmbeddedKubernetes: port must be 0 (any free port) or 1-65535, got {port!r}.")
        if not isinstance(min_request_timeout, (int, float)) or not min_request_timeout > 0:
            raise ValueError("EmbeddedKubernetes: min_request_timeout must be a number of seconds > 0, got "
                             f"{min_request_timeout!r}.")
        self.kubelet_kind = kubelet
        self.min_request_timeout = float(min_request_timeout)
        # restricted users (embedded/authz.py), validated now; tokens are made at start (TLS only)
        self._users = {name: [PolicyRule.from_dict(r) for r in rules] for name, rules in (users or {}).items()}
        self.identities: Identities | None = None
        # node_specs: one dict per node ({"name", "cpu", "memory", "pods", "labels", "taints",
        # "extended_resources"}) for heterogeneous nodes; the other node options are their defaults.
        self._node_specs = [dict(spec) for spec in node_specs] if node_specs else None
        self.node_count = (len(self._node_specs) if self._node_specs else nodes) if kubelet is not None else 0
        self._node_options = {"cpu": cpu, "memory": memory, "pods": pods, "labels": node_labels,
                              "taints": node_taints, **kubelet_options}
        self._port = port
        self._tls = tls
        self._own_work_dir = work_dir is None
        self._work_dir_arg = work_dir
        self.work_dir: Path | None = None
        self.store = ObjectStore()
        self.admission = Admission(self.store)  # LimitRange defaults and ResourceQuota on pod creation
        self.faults = FaultInjector(enabled=faults)
        self.kubelets: dict[str, Any] = {}
        self.scheduler: Any = None
        self.apiserver: ApiServer | None = None
        self._credentials: Credentials | None = None
        self.kubeconfig: str | None = None
        self._started = False

    def __repr__(self) -> str:
        state = self.url if self.apiserver is not None else "stopped"
        return f"EmbeddedKubernetes({state}, kubelet={self.kubelet_kind!r}, nodes={self.node_count})"

    # -------------------------------------------------------------- accessors

    @property
    def url(self) -> str:
        if self.apiserver is None:
            raise RuntimeError("EmbeddedKubernetes is not started; call start() or use it as a context manager.")
        return self.apiserver.url

    @property
    def token(self) -> str | None:
        return self._credentials.token if self._credentials else None

    def kubeconfig_for(self, user: str) -> str:
        """A kubeconfig (mode 0600) authenticating as the restricted ``user`` given in ``users=``."""
        if self.identities is None or self.work_dir is None or self.apiserver is None:
            raise RuntimeError("EmbeddedKubernetes is not started; call start() or use it as a context manager.")
        if not self._tls:
            raise ValueError("EmbeddedKubernetes(users=...) needs tls=True: tokens are only sent over https.")
        return str(write_kubeconfig(self.work_dir / f"kubeconfig-{user}", server=self.apiserver.url,
                                    ca_file=self._credentials.ca_file if self._credentials else None,
                                    token=self.identities.token_for(user)))

    @property
    def ca_file(self) -> str | None:
        return str(self._credentials.ca_file) if self._credentials else None

    # -------------------------------------------------------------- lifecycle

    def start(self) -> "EmbeddedKubernetes":
        """Start every part; on failure, stop what started and re-raise."""
        if self._started:
            return self
        self._started = True
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        if self._work_dir_arg is None:
            self.work_dir = Path(tempfile.mkdtemp(prefix="embedded-k8s-"))
        else:
            self.work_dir = Path(self._work_dir_arg)
            self.work_dir.mkdir(parents=True, exist_ok=True)
        if self._tls:
            self._credentials = make_credentials(self.work_dir / "pki")
        self.identities = Identities(admin_token=self.token)
        for user, rules in self._users.items():
            self.identities.add_user(user, rules)
        self.admission.start()
        self.apiserver = ApiServer(self.store, port=self._port, credentials=self._credentials,
                                   kubelets=self.kubelets, faults=self.faults, identities=self.identities,
                                   admission=self.admission, min_request_timeout=self.min_request_timeout)
        self.apiserver.start()
        self.kubeconfig = str(write_kubeconfig(self.work_dir / "kubeconfig", server=self.apiserver.url,
                                               ca_file=self._credentials.ca_file if self._credentials else None,
                                               token=self.token))
        for i in range(self.node_count):
            spec = dict(self._node_specs[i]) if self._node_specs else {}
            name = spec.pop("name", f"node-{i + 1}")
            kubelet = self._make_kubelet(name, i, spec)
            self.kubelets[name] = kubelet
            kubelet.start()
        if self.kubelet_kind is not None:
            self.scheduler = EmbeddedScheduler(self.store)
            self.scheduler.start()
        logger.info("Embedded Kubernetes ready at %s with %d %s node(s)", self.apiserver.url, self.node_count,
                    self.kubelet_kind)

    def _make_kubelet(self, name: str, index: int, spec: dict[str, Any] | None = None) -> Any:
        options = {k: v for k, v in {**self._node_options, **(spec or {})}.items() if v is not None}
        options["work_dir"] = self.work_dir / "nodes" / name  # type: ignore[operator]
        if self.kubelet_kind == "process":
            return ProcessKubelet(self.store, name, ip_block=index, **options)
        return SimulatedKubelet(self.store, name, ip_block=index, **options)

    def stop(self) -> None:
        """Stop scheduler, kubelets (killing their processes) and API server; idempotent."""
        if self.scheduler is not None:
            self._quietly(self.scheduler.stop, "the scheduler")
            self.scheduler = None
        for name, kubelet in list(self.kubelets.items()):
            self._quietly(lambda k=kubelet: k.stop(), f"kubelet {name}")
        self.kubelets.clear()
        if self.apiserver is not None:
            self._quietly(self.apiserver.stop, "the API server")
        self._quietly(self.admission.stop, "the quota controller")
        if self._own_work_dir and self.work_dir is not None:
            shutil.rmtree(self.work_dir, ignore_errors=True)
            self.work_dir = None
        self._started = False

    @staticmethod
    def _quietly(fn: Any, what: str) -> None:
        try:
            fn()
        except Exception:
            logger.exception("Stopping %s of the embedded Kubernetes failed", what)

    def __enter__(self) -> "EmbeddedKubernetes":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    async def __aenter__(self) -> "EmbeddedKubernetes":
        import asyncio
        return await asyncio.get_running_loop().run_in_executor(None, self.start)

    async def __aexit__(self, *exc: Any) -> None:
        import asyncio
        await asyncio.get_running_loop().run_in_executor(None, self.stop)
