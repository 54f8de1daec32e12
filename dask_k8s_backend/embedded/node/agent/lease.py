"""The node heartbeat: a Lease in ``kube-node-lease`` renewed on a timer, as the kubelet's lease controller does.

Data flow: :meth:`NodeLease.start` creates ``kube-node-lease/<node>`` (holderIdentity = the node,
``leaseDurationSeconds``, ``renewTime``, owned by the Node so it goes when the Node goes) or takes
over one left by an earlier run, then one thread merge-patches ``spec.renewTime`` every
``duration / 4`` seconds (plus up to 4% jitter, as the kubelet's ``JitterUntil``). The node
lifecycle controller reads the renew time: a Lease not renewed within
``node-monitor-grace-period`` makes the node NotReady/Unknown. After each renewal
``on_renewed`` runs (the transport checks there that the Node still reads Ready, see
``ApiTransport.keep_node_ready``). An API server that serves no Leases (404/405) gets no
heartbeat: logged once, nothing else fails.
"""

from __future__ import annotations

import datetime
import logging
import random
import threading
from typing import Any, Callable

from dask_k8s_backend.kube.errors import KubernetesApiError

logger = logging.getLogger(__name__)

NAMESPACE = "kube-node-lease"
LEASES = f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases"


def micro_time(now: datetime.datetime) -> str:
    """RFC 3339 with microseconds, the MicroTime format of ``renewTime``."""
    return now.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_object(node: dict[str, Any], duration: int, now: datetime.datetime) -> dict[str, Any]:
    meta = node["metadata"]
    return {
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": meta["name"], "namespace": NAMESPACE,
                     "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": meta["name"], "uid": meta["uid"]}]},
        "spec": {"holderIdentity": meta["name"], "leaseDurationSeconds": duration, "renewTime": micro_time(now)},
    }


class NodeLease:
    """Creates and renews one node's Lease (see the module docstring)."""

    def __init__(self, http: Any, *, duration: int = 40,
                 now: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.timezone.utc),
                 on_renewed: Callable[[], None] | None = None) -> None:
        self.http = http
        self.on_renewed = on_renewed
        self.duration = duration
        self.interval = duration / 4.0
        self.now = now
        self.name: str | None = None
        self.renewals = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, node: dict[str, Any]) -> bool:
        """Create (or take over) the Lease and start renewing it; False when the server serves no Leases."""
        self.name = node["metadata"]["name"]
        lease = lease_object(node, self.duration, self.now())
        try:
            try:
                self.http.request("POST", LEASES, body=lease, action=f"create the Lease of node {self.name}")
            except KubernetesApiError as e:
                if e.code != 409:
                    raise
                self.http.request("PUT", f"{LEASES}/{self.name}", body=self._take_over(lease),
                                  action=f"take over the Lease of node {self.name}")
        except KubernetesApiError as e:
            if e.code not in (404, 405):
                raise
            logger.warning("node %s: this API server serves no coordination.k8s.io Leases; no heartbeat "
                           "besides the node status", self.name)
            return False
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"node-{self.name}-lease", daemon=True)
        self._thread.start()
        return True

    def _take_over(self, lease: dict[str, Any]) -> dict[str, Any]:
        existing = self.http.request("GET", f"{LEASES}/{self.name}")
        lease["metadata"]["resourceVersion"] = existing["metadata"]["resourceVersion"]
        return lease

    def _run(self) -> None:
        while not self._stop.wait(self.interval * random.uniform(1.0, 1.04)):
            self.beat()

    def beat(self) -> None:
        """Renew the Lease, then run ``on_renewed`` (its failure is logged: the next beat tries again)."""
        self.renew()
        if self.on_renewed is None:
            return
        try:
            self.on_renewed()
        except Exception as e:
            logger.warning("node %s: checking the node after the Lease renewal failed: %s", self.name, e)

    def renew(self) -> None:
        try:
            self.http.request("PATCH", f"{LEASES}/{self.name}", body={"spec": {"renewTime": micro_time(self.now())}},
                              content_type="application/merge-patch+json", action=f"renew the Lease of node {self.name}")
            self.renewals += 1
        except Exception as e:  # the next renewal tries again; the grace period covers a few misses
            logger.warning("node %s: renewing the Lease failed: %s", self.name, e)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
