"""Bounded waits for "the control plane is usable": /readyz, Ready nodes, the default ServiceAccount.

Why stdlib HTTP rather than the kubernetes client: these are a handful of GETs made before
anything else works, with the admin client certificate, and every wait must also notice a
component that died (``check``), so that start fails with that component's log instead of a
timeout. :class:`AdminApi` does the GETs; :func:`wait_until` is the one polling loop.
"""

from __future__ import annotations

import json
import logging
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from .pki import CertPair

logger = logging.getLogger(__name__)

NOT_READY_TAINT = "node.kubernetes.io/not-ready"


class StartTimeout(RuntimeError):
    """The control plane did not reach a state in time; the message says which and what was seen."""


class AdminApi:
    """GETs against the API server as the admin (client certificate, server verified by our CA)."""

    def __init__(self, url: str, *, ca: CertPair, admin: CertPair) -> None:
        self.url = url.rstrip("/")
        self.context = ssl.create_default_context(cafile=str(ca.cert))
        self.context.load_cert_chain(str(admin.cert), str(admin.key))

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        """Status and body; connection errors become status 0 so callers can keep polling."""
        try:
            with urllib.request.urlopen(self.url + path, context=self.context, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
        except (urllib.error.URLError, OSError) as e:
            return 0, str(e).encode()

    def get_json(self, path: str) -> dict[str, Any] | None:
        """The decoded object, or None when it is not (yet) there."""
        status, body = self.get(path)
        return json.loads(body) if status == 200 else None


def wait_until(what: str, probe: Callable[[], tuple[bool, str]], *, timeout: float,
               check: Callable[[], None], interval: float = 0.5) -> None:
    """Poll ``probe`` (done?, what was seen) until done; ``check`` raises if a component died."""
    deadline = time.monotonic() + timeout
    seen = "nothing yet"
    while True:
        check()
        done, seen = probe()
        if done:
            logger.info("%s: done", what)
            return
        if time.monotonic() >= deadline:
            raise StartTimeout(f"Timed out after {timeout:.0f} s waiting for {what}; last seen: {seen}.")
        time.sleep(interval)


def apiserver_ready(api: AdminApi) -> tuple[bool, str]:
    status, body = api.get("/readyz")
    return status == 200, f"/readyz -> {status} {body[-300:].decode(errors='replace')}"


def _node_ready(node: dict[str, Any]) -> bool:
    """Ready=True and the not-ready taint gone, i.e. the node lifecycle controller agrees and pods can land."""
    conditions = {c.get("type"): c.get("status") for c in node.get("status", {}).get("conditions", [])}
    taints = {t.get("key") for t in node.get("spec", {}).get("taints") or []}
    return conditions.get("Ready") == "True" and NOT_READY_TAINT not in taints


def nodes_ready(api: AdminApi, names: list[str]) -> tuple[bool, str]:
    listing = api.get_json("/api/v1/nodes")
    if listing is None:
        return False, "cannot list nodes"
    ready = {n["metadata"]["name"] for n in listing.get("items", []) if _node_ready(n)}
    missing = [n for n in names if n not in ready]
    return not missing, f"not Ready (or still tainted {NOT_READY_TAINT}): {missing}"


def default_service_account(api: AdminApi) -> tuple[bool, str]:
    """The serviceaccount controller's `default` SA and the root CA publisher's configmap in `default`."""
    sa = api.get_json("/api/v1/namespaces/default/serviceaccounts/default")
    ca = api.get_json("/api/v1/namespaces/default/configmaps/kube-root-ca.crt")
    return sa is not None and ca is not None, f"serviceaccount default: {sa is not None}, kube-root-ca.crt: {ca is not None}"


def etcd_healthy(url: str) -> tuple[bool, str]:
    """etcd's own /health (plain http on the loopback) says the member serves requests."""
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
            body = response.read()
    except (urllib.error.URLError, OSError) as e:
        return False, str(e)
    return json.loads(body).get("health") == "true", body.decode(errors="replace")
