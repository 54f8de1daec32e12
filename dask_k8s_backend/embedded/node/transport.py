"""Everything a kubelet does to the API, as one interface: the seam between the pod runtime and an API server.

Data flow: :class:`~.agent.KubeletBase` (and through it the process and simulated runtimes)
never touches an object store or an HTTP client. It registers its Node, opens the ordered stream
of the pods bound to it, writes pod status, finishes graceful deletions, records events, reads
Secrets/ConfigMaps for env and deletes its Node through a :class:`Transport`. Two exist:
:class:`~.store_transport.StoreTransport` (the embedded Kubernetes, in process, over the
``ObjectStore``) and ``dask_k8s_backend.embedded.node.agent.api_transport.ApiTransport`` (HTTP to any API
server). The runtime is one implementation; only the transport differs.

Stream contract (:meth:`Transport.watch_pods`): the pods bound to the node that exist now are
returned as the backlog, then every later change is handed to ``sink(event_type, item)`` in the
server's order, from one thread at a time. ``item.obj`` is the pod (parsed on first use, so the
store path parses in the kubelet's dispatcher, not under the store's lock). A transport that has
to re-list (a watch expired) reports a pod that vanished meanwhile as ``DELETED`` and every other
pod as ``MODIFIED``: the kubelet's handlers are idempotent.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, Callable, Protocol

Pod = dict[str, Any]
Key = tuple[str, str]  # (namespace, name)
StatusBuilder = Callable[[Pod], dict[str, Any]]


class PodItem(Protocol):
    """One pod of the stream; ``obj`` may parse lazily."""

    @property
    def obj(self) -> Pod: ...


@dataclass(frozen=True)
class LoadedPod:
    """A pod that is already parsed (the HTTP transport's stream items)."""

    obj: Pod


PodSink = Callable[[str, PodItem], None]


class Transport(abc.ABC):
    """What a node agent needs from the API server; errors other than "gone" are the transport's to log."""

    @abc.abstractmethod
    def register_node(self, node: dict[str, Any]) -> None:
        """Create the Node, or take over an existing one of that name (labels, taints, status overwritten)."""

    @abc.abstractmethod
    def watch_pods(self, node_name: str, sink: PodSink) -> list[tuple[str, PodItem]]:
        """Start streaming this node's pods: returns the backlog, later changes go to ``sink`` in order."""

    @abc.abstractmethod
    def stop_watching(self) -> None:
        """Stop the stream; no ``sink`` call starts after this returns. Idempotent."""

    @abc.abstractmethod
    def write_status(self, key: Key, uid: str, build: StatusBuilder) -> Pod | None:
        """Set the pod's status to ``build(current pod)``; the new pod, or None when it is gone or replaced."""

    @abc.abstractmethod
    def finish_deletion(self, key: Key, uid: str) -> None:
        """The pod's containers are stopped: let the server remove it (other finalizers still wait)."""

    @abc.abstractmethod
    def record_event(self, pod: Pod, reason: str, message: str, type_: str = "Normal") -> None:
        """Record a core/v1 Event about the pod, best effort (never raises)."""

    @abc.abstractmethod
    def lookup(self, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
        """A Secret or ConfigMap (``resource`` is ``secrets`` or ``configmaps``), None when it does not exist."""

    @abc.abstractmethod
    def get_pod(self, key: Key) -> Pod | None:
        """The latest pod this transport knows under ``key`` (for the log endpoint), None if unknown."""

    @abc.abstractmethod
    def delete_node(self, name: str) -> None:
        """Remove the Node (the agent is leaving); a Node already gone is fine."""

    def close(self) -> None:
        """Release connections and threads; the default has none."""
