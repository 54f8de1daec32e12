"""Service-account tokens for the pods of a node agent, projected the way a kubelet projects them.

Data flow: for each pod the process kubelet calls :meth:`TokenProjector.prepare` before its
containers start. Every container gets ``KUBERNETES_SERVICE_HOST``/``_PORT`` (the API server of
the kubeconfig). A pod whose ``automountServiceAccountToken`` is not false and that has the
``kube-api-access-*`` projected volume (added by ServiceAccount admission) or a
``serviceAccountName`` gets a token from the TokenRequest API (``serviceaccounts/<sa>/token``:
audiences and ``expirationSeconds`` from the projection, at least 600 s, bound to the pod by name
and uid); ``token``, ``ca.crt`` (configmap ``kube-root-ca.crt``, else the kubeconfig's CA) and
``namespace`` are written into ``<pod dir>/serviceaccount`` and bind-mounted at
``/var/run/secrets/kubernetes.io/serviceaccount`` in the container's own mount namespace
(:mod:`.mounts`; without root: no mount, logged once). One thread renews each token once 80% of
its lifetime has passed, replacing the file atomically. An API server without TokenRequest (the
embedded one) gets no tokens, logged once. Tokens are never logged.
"""

from __future__ import annotations

import datetime
import heapq
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..process.sandbox import ContainerSetup
from dask_k8s_backend.kube.errors import KubernetesApiError
from . import mounts

logger = logging.getLogger(__name__)

MOUNT_PATH = Path("/var/run/secrets/kubernetes.io/serviceaccount")
DEFAULT_EXPIRATION = 3607  # what ServiceAccount admission puts in the projection
MIN_EXPIRATION = 600
REFRESH_AT = 0.8


@dataclass(frozen=True)
class TokenProjection:
    """What a pod asks for: which service account, for which audiences, for how long."""

    service_account: str
    audiences: tuple[str, ...]
    expiration: int


def token_projection(pod: dict[str, Any]) -> TokenProjection | None:
    """The token the pod should see at :data:`MOUNT_PATH`, or None (automount off, no service account)."""
    spec = pod.get("spec") or {}
    if spec.get("automountServiceAccountToken") is False:
        return None
    account = spec.get("serviceAccountName") or spec.get("serviceAccount")
    for volume in spec.get("volumes") or []:
        if not str(volume.get("name", "")).startswith("kube-api-access-"):
            continue
        for source in (volume.get("projected") or {}).get("sources") or []:
            token = source.get("serviceAccountToken")
            if token is not None:
                audience = token.get("audience")
                return TokenProjection(account or "default", (audience,) if audience else (),
                                       max(MIN_EXPIRATION, int(token.get("expirationSeconds") or DEFAULT_EXPIRATION)))
    if account:
        return TokenProjection(account, (), DEFAULT_EXPIRATION)
    return None


def token_request(pod: dict[str, Any], projection: TokenProjection) -> dict[str, Any]:
    meta = pod["metadata"]
    return {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"audiences": list(projection.audiences), "expirationSeconds": projection.expiration,
                     "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": meta["name"], "uid": meta["uid"]}}}


def refresh_time(issued: float, expires: float) -> float:
    """When to renew: after 80% of the token's lifetime."""
    return issued + REFRESH_AT * max(0.0, expires - issued)


def _write_atomic(path: Path, data: str, mode: int = 0o644) -> None:
    partial = path.with_name(f".{path.name}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(data)
    os.replace(partial, path)


def _expiry(answer: dict[str, Any], now: float, requested: int) -> float:
    stamp = (answer.get("status") or {}).get("expirationTimestamp")
    if not stamp:
        return now + requested
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


class TokenProjector:
    """The node agent's :class:`~dask_k8s_backend.embedded.node.process.sandbox.PodSandbox` (see the module docstring)."""

    def __init__(self, http: Any, lookup: Callable[[str, str, str], dict[str, Any] | None], *,
                 clock: Callable[[], float] = time.time, mount: bool | None = None) -> None:
        self.http = http
        self.lookup = lookup
        self.clock = clock
        self.mount = mounts.mount_namespaces_supported() if mount is None else mount
        self.served = True  # False once the API server answered that it has no TokenRequest
        self._warned: set[str] = set()
        self._pods: dict[str, tuple[dict[str, Any], TokenProjection, Path]] = {}
        self._heap: list[tuple[float, str]] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def __repr__(self) -> str:
        return f"TokenProjector({self.http!r}, pods={len(self._pods)}, mount={self.mount})"

    # ------------------------------------------------------------------ PodSandbox
    def prepare(self, pod: dict[str, Any], pod_dir: Path) -> ContainerSetup:
        host, port = self.http.host_port
        env = {"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": str(port),
               "KUBERNETES_SERVICE_PORT_HTTPS": str(port)}
        projection = token_projection(pod)
        if projection is None or not self.served:
            return ContainerSetup(env)
        directory = pod_dir / "serviceaccount"
        directory.mkdir(parents=True, exist_ok=True)
        if not self._issue(pod, projection, directory):
            return ContainerSetup(env)
        self._write_static(pod, directory)
        self._track(pod, projection, directory)
        if not self.mount or not mounts.ensure_target(MOUNT_PATH):
            self._warn_once("mount", "not root (or no mount namespaces): pods see their service-account token in "
                                     "their own directory only, not at %s", MOUNT_PATH)
            return ContainerSetup(env)
        return ContainerSetup(env, mounts.bind_preexec(directory, MOUNT_PATH))

    def release(self, uid: str) -> None:
        with self._cond:
            self._pods.pop(uid, None)

    # ------------------------------------------------------------------ tokens
    def _issue(self, pod: dict[str, Any], projection: TokenProjection, directory: Path) -> bool:
        """Request a token and write it; False when the server has no TokenRequest (then none is projected)."""
        meta = pod["metadata"]
        namespace = meta.get("namespace") or "default"
        path = f"/api/v1/namespaces/{namespace}/serviceaccounts/{projection.service_account}/token"
        now = self.clock()
        try:
            answer = self.http.request("POST", path, body=token_request(pod, projection),
                                       action=f"request a token of service account {namespace}/"
                                              f"{projection.service_account} for pod {meta['name']}")
        except KubernetesApiError as e:
            if e.code not in (404, 405):
                raise
            if self._account_exists(namespace, projection.service_account):
                self.served = False
                self._warn_once("served", "this API server serves no TokenRequest (%s): pods get no "
                                          "service-account token", e.code)
            else:
                logger.warning("pod %s/%s gets no token: service account %s does not exist", namespace, meta["name"],
                               projection.service_account)
            return False
        _write_atomic(directory / "token", answer["status"]["token"], 0o600)
        expires = _expiry(answer, now, projection.expiration)
        with self._cond:
            heapq.heappush(self._heap, (refresh_time(now, expires), meta["uid"]))
            self._cond.notify()
        return True

    def _account_exists(self, namespace: str, name: str) -> bool:
        try:
            return self.http.request("GET", f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}") is not None
        except KubernetesApiError:
            return False

    def _write_static(self, pod: dict[str, Any], directory: Path) -> None:
        namespace = (pod.get("metadata") or {}).get("namespace") or "default"
        _write_atomic(directory / "namespace", namespace)
        root_ca = self.lookup("configmaps", namespace, "kube-root-ca.crt")
        ca = ((root_ca or {}).get("data") or {}).get("ca.crt")
        if ca is None and self.http.ca_file:
            ca = Path(self.http.ca_file).read_text()
        if ca is not None:
            _write_atomic(directory / "ca.crt", ca)

    def _track(self, pod: dict[str, Any], projection: TokenProjection, directory: Path) -> None:
        with self._cond:
            self._pods[pod["metadata"]["uid"]] = (pod, projection, directory)
            if self._thread is None and not self._stopped:
                self._thread = threading.Thread(target=self._refresh_loop, name="token-refresh", daemon=True)
                self._thread.start()

    def _refresh_loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopped and (not self._heap or self._heap[0][0] > self.clock()):
                    self._cond.wait(None if not self._heap else max(0.0, self._heap[0][0] - self.clock()))
                if self._stopped:
                    return
                _, uid = heapq.heappop(self._heap)
                tracked = self._pods.get(uid)
            if tracked is not None:
                self._refresh(uid, *tracked)

    def _refresh(self, uid: str, pod: dict[str, Any], projection: TokenProjection, directory: Path) -> None:
        try:
            self._issue(pod, projection, directory)
        except Exception as e:  # try again soon; the old token stays valid until it expires
            logger.warning("renewing the token of pod %s/%s failed: %s", pod["metadata"].get("namespace"),
                           pod["metadata"].get("name"), e)
            with self._cond:
                heapq.heappush(self._heap, (self.clock() + 10.0, uid))

    @property
    def next_refresh(self) -> float | None:
        """When the next token renewal is due (the injected clock's time), None when none is."""
        with self._cond:
            return self._heap[0][0] if self._heap else None

    def poke(self) -> None:
        """Make the refresher look at the clock again (after an injected clock moved)."""
        with self._cond:
            self._cond.notify_all()

    def _warn_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message, *args)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
