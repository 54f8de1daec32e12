"""``UpstreamKubernetes``: etcd, kube-apiserver, kube-controller-manager, kube-scheduler and N node agents.

Why: the suites must also run against the Kubernetes users run, not only against ours. This is
the upstream counterpart of ``EmbeddedKubernetes`` with the same surface (``.kubeconfig``,
``.url``, a context manager), so a fixture or ``ci/upstream_k8s.py up`` can start either.

Data flow of :meth:`UpstreamKubernetes.start`: binaries (built or reused) -> a private state
directory with credentials and component kubeconfigs -> etcd -> kube-apiserver (/readyz) ->
controller manager and scheduler -> node agents (``python -m dask_k8s_backend node``) -> wait
until every node is Ready and untainted and the ``default`` ServiceAccount exists. :meth:`stop`
undoes it in reverse order (agents first, etcd last), each step guarded, then deletes the state.

A fixture (put ``ci/`` on ``sys.path`` first; start it on the main thread, see ``processes``)::

    @pytest.fixture(scope="session")
    def upstream():
        with UpstreamKubernetes(nodes=NodeOptions(count=1, kubelet="simulated")) as kube:
            yield kube  # kube.kubeconfig (admin, system:masters), kube.url
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import yaml

from dask_k8s_backend.embedded.api.tls import write_private

from . import flags, readiness
from .binaries import ensure_built
from .pki import Pki, kubeconfig, make_pki
from .processes import Component, free_ports, log_tail

logger = logging.getLogger(__name__)

KUBELETS = ("process", "simulated")
FIRST_IP_BLOCK = 100  # the node agent's own blocks are 100-254 (dask_k8s_backend/embedded/node/agent/options.py)


@dataclass(frozen=True)
class NodeOptions:
    """What each node agent is told: how many, which runtime, what capacity."""

    count: int = 0
    kubelet: str = "process"
    cpu: str = "4"
    memory: str = "8Gi"
    pods: int = 110  # the kubelet's default max-pods; a scale benchmark raises it

    def names(self) -> list[str]:
        return [f"node-{i}" for i in range(1, self.count + 1)]


class UpstreamKubernetes:
    """The upstream control plane and node agents as local processes, for one ``with`` block."""

    def __init__(self, *, nodes: NodeOptions | None = None, bin_dir: Path | None = None,
                 start_timeout: float = 180.0, stop_timeout: float = 10.0, agent_stop_timeout: float = 45.0,
                 keep_logs: Path | None = None) -> None:
        """``agent_stop_timeout`` covers a pod's default 30 s grace period: agents stop their pods first."""
        self.nodes = nodes or NodeOptions()
        self.keep_logs = keep_logs
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.agent_stop_timeout = agent_stop_timeout
        self._bin_dir = bin_dir
        self.state_dir: Path | None = None
        self.layout: flags.Layout | None = None
        self._control_plane: list[Component] = []
        self._agents: list[Component] = []

    # -- the surface shared with EmbeddedKubernetes ------------------------------------------------
    @property
    def url(self) -> str:
        assert self.layout is not None, "not started"
        return self.layout.apiserver_url

    @property
    def kubeconfig(self) -> str:
        """The admin kubeconfig (system:masters, client certificate inlined), inside the state directory."""
        assert self.state_dir is not None, "not started"
        return str(self.state_dir / "admin.kubeconfig")

    def __enter__(self) -> UpstreamKubernetes:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- start -------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start everything and wait until it is usable; on any failure stop what was started, then raise."""
        try:
            try:
                self._prepare()
                self._start_control_plane()
                self._start_agents()
                self._wait_usable()
            except readiness.StartTimeout as e:  # the logs say why; read them before the state goes
                raise readiness.StartTimeout(f"{e}\n{self._log_tails()}") from None
        except BaseException:
            self.stop()
            raise

    def _prepare(self) -> None:
        bin_dir = self._bin_dir or ensure_built()
        self.state_dir = Path(tempfile.mkdtemp(prefix="dask-k8s-upstream-"))  # 0700
        logger.info("State directory (logs, credentials, etcd data): %s", self.state_dir)
        pki = make_pki(self.state_dir / "pki")
        ports = flags.Ports(*free_ports(5))
        self.layout = flags.Layout(
            bin_dir=bin_dir, state=self.state_dir, pki=pki, ports=ports,
            scheduler_kubeconfig=self.state_dir / "kube-scheduler.kubeconfig",
            controller_manager_kubeconfig=self.state_dir / "kube-controller-manager.kubeconfig",
        )
        self._write_kubeconfigs(pki)

    def _write_kubeconfigs(self, pki: Pki) -> None:
        """One kubeconfig per identity, 0600 because each inlines a private key."""
        assert self.layout is not None
        for stem, path in (("admin", Path(self.kubeconfig)),
                           ("kube-scheduler", self.layout.scheduler_kubeconfig),
                           ("kube-controller-manager", self.layout.controller_manager_kubeconfig)):
            config = kubeconfig(server=self.layout.apiserver_url, ca=pki.ca.cert, client=pki.clients[stem])
            write_private(path, yaml.safe_dump(config, sort_keys=False).encode())

    def _component(self, name: str, argv: list[str]) -> Component:
        assert self.state_dir is not None
        component = Component(name, argv, log_dir=self.state_dir)
        self._control_plane.append(component)
        component.start()
        return component

    def _wait(self, what: str, probe: Callable[[], tuple[bool, str]]) -> None:
        readiness.wait_until(what, probe, timeout=self.start_timeout, check=self.check_alive)

    def _start_control_plane(self) -> None:
        layout = self.layout
        assert layout is not None
        self._component("etcd", flags.etcd(layout))
        self._wait("etcd /health", lambda: readiness.etcd_healthy(layout.etcd_url))
        self._component("kube-apiserver", flags.kube_apiserver(layout))
        self._wait("kube-apiserver /readyz", lambda: readiness.apiserver_ready(self.admin_api()))
        self._component("kube-controller-manager", flags.kube_controller_manager(layout))
        self._component("kube-scheduler", flags.kube_scheduler(layout))

    def _start_agents(self) -> None:
        assert self.state_dir is not None
        for index, name in enumerate(self.nodes.names()):
            # Agents start together, so none sees the others' Nodes: give each its own block of pod
            # IPs (127.<block>.x.y) rather than letting two names hash to the same one.
            argv = [sys.executable, "-m", "dask_k8s_backend", "node", "--kubeconfig", self.kubeconfig,
                    "--name", name, "--kubelet", self.nodes.kubelet, "--cpu", self.nodes.cpu,
                    "--memory", self.nodes.memory, "--pods", str(self.nodes.pods),
                    "--ip-block", str(FIRST_IP_BLOCK + index)]
            agent = Component(f"agent-{name}", argv, log_dir=self.state_dir)
            self._agents.append(agent)
            agent.start()

    def _wait_usable(self) -> None:
        api = self.admin_api()
        names = self.nodes.names()
        if names:
            self._wait(f"{len(names)} Ready node(s)", lambda: readiness.nodes_ready(api, names))
        self._wait("ServiceAccount default/default", lambda: readiness.default_service_account(api))

    def admin_api(self) -> readiness.AdminApi:
        """A small admin client (stdlib HTTPS) for readiness checks."""
        assert self.layout is not None
        pki = self.layout.pki
        return readiness.AdminApi(self.url, ca=pki.ca, admin=pki.clients["admin"])

    def _log_tails(self, lines: int = 10) -> str:
        return "\n".join(f"--- last lines of {c.log.name} ---\n{log_tail(c.log, lines)}"
                         for c in self._control_plane + self._agents)

    def check_alive(self) -> None:
        """Raise :class:`~upstream.processes.ComponentDied` (with its log tail) if any child has exited."""
        for component in self._control_plane + self._agents:
            component.check_alive()

    # -- faults (ci/upstream_chaos.py) -------------------------------------------------------------
    def restart_apiserver(self) -> float:
        """Stop kube-apiserver (SIGTERM, bounded) and start it again with the same port and flags.

        Why: only a real API server restart shows that clients' watches resume and their creations are
        not repeated; etcd and the other components stay up, as in a control-plane upgrade. Returns the
        seconds the API server was not serving.
        """
        component = self._named("kube-apiserver")
        started = time.monotonic()
        _stop_together([component], self.stop_timeout)
        component.start()
        self._wait("kube-apiserver /readyz after restart", lambda: readiness.apiserver_ready(self.admin_api()))
        return time.monotonic() - started

    def kill_node_agent(self, name: str) -> None:
        """SIGKILL one node agent and its pods, as a machine that loses power; its Node object stays."""
        for agent in self._agents:
            if agent.name == f"agent-{name}":
                agent.kill()
                return
        raise KeyError(f"No node agent named {name!r}; the agents are {self.nodes.names()}.")

    def _named(self, name: str) -> Component:
        for component in self._control_plane:
            if component.name == name:
                return component
        raise KeyError(f"No control-plane component named {name!r}.")

    # -- stop --------------------------------------------------------------------------------------
    def stop(self) -> None:
        """Agents first, all at once (they stop their pods, which needs the API server), then the scheduler,
        the controller manager, the API server and etcd, one by one; idempotent."""
        _stop_together(self._agents, self.agent_stop_timeout)
        for component in reversed(self._control_plane):
            _stop_together([component], self.stop_timeout)
        self._agents.clear()
        self._control_plane.clear()
        if self.state_dir is not None:
            self._archive_logs()
            shutil.rmtree(self.state_dir, ignore_errors=True)
            logger.info("Removed %s", self.state_dir)

    def _archive_logs(self) -> None:
        """Copy the component logs out before the state goes (CI keeps them for a failed run)."""
        if self.keep_logs is None or self.state_dir is None or not self.state_dir.exists():
            return
        self.keep_logs.mkdir(parents=True, exist_ok=True)
        for log in self.state_dir.glob("*.log"):
            shutil.copy2(log, self.keep_logs / log.name)
        logger.info("Component logs copied to %s", self.keep_logs)


def _stop_together(components: list[Component], timeout: float) -> None:
    """SIGTERM to all, then wait for each within one shared bound; a failure never skips the rest."""
    for component in components:
        try:
            component.terminate()
        except Exception:
            logger.exception("Could not signal %s (pid %s)", component.name, component.pid)
    deadline = time.monotonic() + timeout
    for component in components:
        try:
            component.wait_or_kill(deadline - time.monotonic())
        except Exception:
            logger.exception("Could not stop %s (pid %s)", component.name, component.pid)
