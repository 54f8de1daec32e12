"""Master URLs and the cluster-manager registry.

Data flow: a master string (``k8s://...`` or ``embedded://...``) goes to :func:`resolve_manager`,
which asks every manager registered under the entry-point group
``dask_k8s_backend.cluster_managers`` (like Spark's ``ExternalClusterManager`` services file)
whether it ``can_create`` that master; exactly one must. The manager's ``connect`` turns the
master plus :class:`~dask_k8s_backend.config.Settings` into a :class:`KubeConnection`: an ApiClient
from :mod:`dask_k8s_backend.kube.client` (retries, rate limit, failover built in) and, for
``embedded://``, the embedded Kubernetes it started.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from importlib import import_module
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlsplit

import kubernetes.client

from ..config import Settings
from .client import create_api_client

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "dask_k8s_backend.cluster_managers"
#: The managers of this package, as setup.cfg registers them: loaded by name when running from a source
#: tree that was never installed. By name, so that kube does not import embedded (docs/contracts.md, Layout).
BUILT_IN_MANAGERS = {
    "kubernetes": "dask_k8s_backend.kube.master:KubernetesClusterManager",
    "embedded": "dask_k8s_backend.embedded.manager:EmbeddedClusterManager",
}
EMBEDDED_VERSION_SUFFIX = "-embedded"

ACCEPTED_FORMS = (
    "  k8s://https://host:port    that API server (https)\n"
    "  k8s://http://host:port     that API server (plain http)\n"
    "  k8s://host:port            https assumed\n"
    "  k8s://https://a:6443,https://b:6443   several API servers, failover on connection errors\n"
    "  k8s://                     current kubeconfig context, or the in-cluster service account\n"
    "  embedded://[?kubelet=process|simulated&nodes=N&cpu=C&memory=M&tls=true|false&faults=true|false]\n"
    "                             an embedded Kubernetes started in this process"
)

# embedded:// query option -> converter to the EmbeddedKubernetes keyword argument
_EMBEDDED_OPTIONS: dict[str, Any] = {
    "kubelet": str, "nodes": int, "cpu": str, "memory": str, "pods": int, "port": int,
    "tls": "bool", "faults": "bool",
}


def _bad_master(master: str, problem: str) -> ValueError:
    return ValueError(f"Invalid master {master!r}: {problem}. Accepted forms:\n{ACCEPTED_FORMS}")


class ClusterManager(Protocol):
    """What every registered manager provides (see docs/contracts.md)."""

    name: str

    def can_create(self, master: str) -> bool: ...

    def connect(self, master: str, settings: Settings) -> KubeConnection: ...


@dataclass
class StartedKubernetes(Protocol):
    """A Kubernetes a manager started for one connection (the embedded one), stopped with the connection."""

    kubeconfig: str | None

    def stop(self) -> None: ...


@dataclass
class KubeConnection:
    """A live connection to a Kubernetes API (and the embedded Kubernetes behind it, if any)."""

    api_client: kubernetes.client.ApiClient
    master: str
    embedded: StartedKubernetes | None = None
    scheduler_host: str | None = None
    kubeconfig: str | None = None
    _closed: bool = field(default=False, repr=False)
    _embedded_server: bool | None = field(default=None, repr=False)

    def serves_embedded_kubernetes(self) -> bool:
        """Whether the API server is our embedded Kubernetes (in this process or started separately).

        Its pods are processes of this machine that get no service-account token, so a pod that must
        reach the API (cluster mode's scheduler) is given the kubeconfig instead. Any other server,
        the upstream control plane on the loopback included, projects tokens: asked once, by /version.
        """
        if self.embedded is not None:
            return True
        if self._embedded_server is None:
            self._embedded_server = _api_server_is_local(self) and version_is_embedded(self.api_client)
        return self._embedded_server

    def api_server_is_local(self) -> bool:
        """An API server on the loopback runs its pods on this machine, where their IPs are reachable."""
        return self.embedded is not None or _api_server_is_local(self)

    def close(self) -> None:
        """Close the client and stop an embedded Kubernetes this connection started; idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self.api_client.close()
        finally:
            if self.embedded is not None:
                self.embedded.stop()


def _api_server_is_local(connection: KubeConnection) -> bool:
    host = urlsplit(connection.api_client.configuration.host).hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")


def version_is_embedded(api_client: kubernetes.client.ApiClient) -> bool:
    """The embedded API server reports ``vX.Y.Z-embedded`` as its gitVersion (embedded/discovery.py)."""
    version = kubernetes.client.VersionApi(api_client).get_code()
    return str(version.git_version or "").endswith(EMBEDDED_VERSION_SUFFIX)


# ---------------------------------------------------------------------------- k8s://

def _parse_server(master: str, item: str) -> str:
    item = item.strip()
    if not item:
        raise _bad_master(master, "an API server between the commas is empty")
    if "://" not in item:
        item = "https://" + item  # Spark's rule: no scheme means https
    parts = urlsplit(item)
    if parts.scheme not in ("http", "https"):
        raise _bad_master(master, f"the API server {item!r} must use http or https")
    if not parts.hostname:
        raise _bad_master(master, f"the API server {item!r} has no host")
    try:
        port = parts.port
    except ValueError:
        raise _bad_master(master, f"the API server {item!r} has an invalid port") from None
    if parts.query or parts.fragment or parts.username or parts.password:
        raise _bad_master(master, f"the API server {item!r} may not carry credentials, a query or a fragment")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    netloc = f"{host}:{port}" if port is not None else host
    return f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}"


def parse_k8s_master(master: str) -> list[str]:
    """API server URLs of a ``k8s://`` master; an empty list means kubeconfig / in-cluster."""
    if not isinstance(master, str) or not master.startswith("k8s://"):
        raise _bad_master(str(master), "it does not start with 'k8s://'")
    rest = master[len("k8s://"):].strip()
    if not rest:
        return []
    return [_parse_server(master, item) for item in rest.split(",")]


class KubernetesClusterManager:
    """``k8s://`` masters: a real (or any external) Kubernetes API server."""

    name = "kubernetes"

    def can_create(self, master: str) -> bool:
        return master.startswith("k8s://")

    def connect(self, master: str, settings: Settings) -> KubeConnection:
        servers = parse_k8s_master(master)
        api_client = create_api_client(servers, settings)
        kubeconfig = None if servers else settings.authenticate.kubeconfig or os.environ.get("KUBECONFIG")
        return KubeConnection(api_client=api_client, master=master, scheduler_host=settings.scheduler.host,
                              kubeconfig=kubeconfig)

    def __repr__(self) -> str:
        return "KubernetesClusterManager()"


# ---------------------------------------------------------------------------- embedded://

def _to_bool(master: str, name: str, value: str) -> bool:
    lowered = value.lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise _bad_master(master, f"option {name}={value!r} must be true or false")


def parse_embedded_master(master: str) -> dict[str, Any]:
    """``EmbeddedKubernetes`` keyword arguments from an ``embedded://?...`` master's query."""
    if not master.startswith("embedded://"):
        raise _bad_master(master, "it does not start with 'embedded://'")
    parts = urlsplit(master)
    if parts.netloc or parts.path.strip("/"):
        raise _bad_master(master, "embedded:// takes no host or path, only ?options")
    options: dict[str, Any] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        kind = _EMBEDDED_OPTIONS.get(name)
        if kind is None:
            raise _bad_master(master, f"unknown option {name!r}; known options are {', '.join(_EMBEDDED_OPTIONS)}")
        if kind == "bool":
            options[name] = _to_bool(master, name, value)
        elif kind is int:
            if not re.fullmatch(r"\d+", value):
                raise _bad_master(master, f"option {name}={value!r} must be a whole number")
            options[name] = int(value)
        else:
            options[name] = value
    if options.get("kubelet", "process") not in ("process", "simulated"):
        raise _bad_master(master, f"option kubelet={options['kubelet']!r} must be process or simulated")
    return options


# ---------------------------------------------------------------------------- registry

def registered_managers() -> list[ClusterManager]:
    """One instance of every manager registered under the entry-point group."""
    managers: list[ClusterManager] = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            managers.append(ep.load()())
        except Exception:  # a broken third-party plugin must not hide the others
            logger.exception("Could not load cluster manager %s from %s", ep.name, ep.value)
    if not managers:  # running from a source tree that was never installed
        managers = [_load(reference)() for reference in BUILT_IN_MANAGERS.values()]
    return managers


def _load(reference: str) -> Any:
    """The object an entry-point style ``module:attribute`` reference names."""
    module, _, attribute = reference.partition(":")
    return getattr(import_module(module), attribute)


def resolve_manager(master: str) -> ClusterManager:
    """The one registered manager that accepts ``master``; ValueError quoting it otherwise."""
    if not isinstance(master, str) or not master.strip():
        raise _bad_master(str(master), "it is empty")
    managers = registered_managers()
    accepting = [m for m in managers if m.can_create(master)]
    names = ", ".join(getattr(m, "name", type(m).__name__) for m in managers)
    if not accepting:
        raise _bad_master(master, f"no registered cluster manager ({names}) accepts it")
    if len(accepting) > 1:
        raise _bad_master(master, "several cluster managers accept it: "
                          + ", ".join(getattr(m, "name", type(m).__name__) for m in accepting))
    manager = accepting[0]
    if master.startswith("k8s://"):
        parse_k8s_master(master)  # malformed k8s:// masters fail here, before any connection
    elif master.startswith("embedded://"):
        parse_embedded_master(master)
    return manager
