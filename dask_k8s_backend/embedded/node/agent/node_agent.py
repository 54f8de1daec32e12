"""The node agent: one kubelet (process or simulated runtime) joined to an API server over HTTP.

Data flow: :meth:`NodeAgent.start` builds, in order, the HTTP client from the kubeconfig
(:class:`~.http.ApiHttp`), the :class:`~.api_transport.ApiTransport`, the runtime (the embedded
``ProcessKubelet``/``SimulatedKubelet`` given that transport; the process one also gets the
:class:`~.tokens.TokenProjector` as its pod sandbox), and the :class:`~.server.KubeletServer`
whose port the Node announces; then starts the kubelet (registers the Node, renews the Lease,
watches its pods). :meth:`NodeAgent.stop` undoes it: pods stopped gracefully (SIGTERM, grace,
SIGKILL; final status written), the Node deleted, the server and token refresher stopped. Each
step is guarded, so one failure does not leave the rest running. :func:`run` is the CLI's
foreground loop (SIGINT/SIGTERM, or a lost pod watch, end it).
"""

from __future__ import annotations

import logging
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable

from ..process.kubelet import ProcessKubelet
from dask_k8s_backend.kube.errors import KubernetesApiError
from ..simulated import SimulatedKubelet
from .api_transport import ApiTransport
from .http import ApiHttp
from .options import NodeOptions, OptionError, blocks_in_use, derived_ip_block, parse_node_options
from .server import KubeletServer
from .tokens import TokenProjector

logger = logging.getLogger(__name__)

HOSTNAME = "localhost"  # the Hostname address: resolvable, so the API server reaches the kubelet endpoint


class NodeAgent:
    """One node of any API server (see the module docstring)."""

    def __init__(self, options: NodeOptions, *, work_dir: str | Path | None = None, lease_duration: int = 40,
                 kubelet_options: dict[str, Any] | None = None) -> None:
        self.options = options
        self.lease_duration = lease_duration
        self.kubelet_options = dict(kubelet_options or {})
        self._own_work_dir = work_dir is None
        self.work_dir = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix=f"node-{options.name}-"))
        self.failed = threading.Event()  # set when the pod watch gave up
        self.ip_block = options.ip_block or 0
        self.http: ApiHttp | None = None
        self.transport: ApiTransport | None = None
        self.tokens: TokenProjector | None = None
        self.kubelet: Any = None
        self.server: KubeletServer | None = None

    def __repr__(self) -> str:
        return f"NodeAgent({self.options.name!r}, kubelet={self.options.kubelet!r})"

    def start(self) -> "NodeAgent":
        """Start every part; on failure, stop what started and re-raise."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        opts = self.options
        self.http = ApiHttp(opts.kubeconfig)
        self.ip_block = opts.ip_block or self._free_ip_block(self.http)
        self.transport = ApiTransport(self.http, lease_duration=self.lease_duration, on_fatal=self._fatal)
        self.kubelet = self._make_kubelet(self.transport)
        self.server = KubeletServer(self.kubelet, port=opts.port, cert_dir=self.work_dir / "pki")
        self.server.start()
        self.kubelet.kubelet_port = self.server.port
        self.kubelet.start()
        logger.info("node %s joined %s (kubelet endpoint %s, pod IPs 127.%d.x.y)", opts.name, self.http.server,
                    self.server.url, self.ip_block)

    def _free_ip_block(self, http: ApiHttp) -> int:
        """The name's block, or the next one no other node of this API server uses."""
        nodes = http.request("GET", "/api/v1/nodes", action="list the nodes (to pick a free pod IP block)")
        return derived_ip_block(self.options.name, blocks_in_use(nodes.get("items") or [], self.options.name))

    def _make_kubelet(self, transport: ApiTransport) -> Any:
        opts = self.options
        common = dict(cpu=opts.cpu, memory=opts.memory, pods=opts.pods, labels=opts.labels, taints=opts.taints,
                      extended_resources=opts.resources, ip_block=self.ip_block, work_dir=self.work_dir / "kubelet",
                      hostname=HOSTNAME, **self.kubelet_options)
        if opts.kubelet == "simulated":
            return SimulatedKubelet(transport, opts.name, **common)
        self.tokens = TokenProjector(transport.http, transport.lookup)
        return ProcessKubelet(transport, opts.name, sandbox=self.tokens, **common)

    def _fatal(self, error: BaseException) -> None:
        logger.error("node %s lost its pod watch (%s); stopping", self.options.name, error)
        self.failed.set()

    def stop(self) -> None:
        """Stop pods gracefully, delete the Node, stop the server; idempotent, each step guarded."""
        steps: list[tuple[str, Callable[[], Any]]] = [
            ("the kubelet", lambda: self.kubelet is not None and self.kubelet.stop(graceful=True)),
            ("the token refresher", lambda: self.tokens is not None and self.tokens.stop()),
            ("the kubelet endpoint", lambda: self.server is not None and self.server.stop()),
            ("the API connections", lambda: self.transport is not None and self.transport.close()),
        ]
        for what, step in steps:
            try:
                step()
            except Exception:
                logger.exception("node %s: stopping %s failed", self.options.name, what)
        self.kubelet = self.server = self.tokens = self.transport = None
        if self._own_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def __enter__(self) -> "NodeAgent":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def run(**raw: Any) -> int:
    """``python -m dask_k8s_backend node ...``: check the options, serve until SIGINT/SIGTERM; the exit code."""
    try:
        options = parse_node_options(**raw)
    except OptionError as e:
        print(f"node: {e}", file=sys.stderr, flush=True)
        return 2
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            agent = NodeAgent(options).start()
        except KubernetesApiError as e:
            print(f"node: {options.name} could not join the API server of {options.kubeconfig}: {e}",
                  file=sys.stderr, flush=True)
            return 1
        try:
            return _serve(agent, stop)
        finally:
            agent.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _serve(agent: NodeAgent, stop: threading.Event) -> int:
    """Announce the node, wait for a signal (or a lost pod watch); 1 when the watch was lost."""
    name = agent.options.name
    assert agent.server is not None and agent.http is not None
    print(f"Node {name} ({agent.options.kubelet}) joined {agent.http.server}; kubelet endpoint "
          f"{agent.server.url}; pod IPs 127.{agent.ip_block}.x.y", flush=True)
    print("Press Ctrl-C to stop (pods get their grace period, then the Node is deleted).", flush=True)
    while not stop.wait(0.5) and not agent.failed.is_set():
        pass
    print(f"Stopping node {name}...", flush=True)
    return 1 if agent.failed.is_set() else 0
