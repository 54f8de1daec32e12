"""JSON over HTTP to one API server, from a kubeconfig: the node agent's only door to the API.

Data flow: :class:`ApiHttp` loads the kubeconfig into a ``kubernetes`` client configuration
(server, CA, token or client certificate) and sends raw JSON requests through its ApiClient, so
TLS and credentials are handled as for every other client of this project, but objects stay plain
dicts (no model round trip that would drop fields the client does not know). Every failure is
turned into a typed :mod:`dask_k8s_backend.kube.errors` exception here, once; callers catch
``NotFound``/``Conflict``/``Gone``. Requests that may be repeated (every GET, and the writes a
caller marks ``idempotent``: status patches, deletions with a UID precondition) are retried a few
times with backoff on 429, 5xx and connection errors, here and not at call sites.
:meth:`ApiHttp.stream` yields a watch's lines and can be cut from another thread
(:meth:`WatchStream.close`), so stopping never waits for a server timeout.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit

from kubernetes import client as k8s
from kubernetes import config as kube_config
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from dask_k8s_backend.kube.errors import ApiUnreachable, ServerError, TooManyRequests, translate

logger = logging.getLogger(__name__)

JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
REQUEST_TIMEOUT = (5.0, 30.0)  # connect, read (seconds)
RETRIES = 3
RETRYABLE = (TooManyRequests, ServerError, ApiUnreachable)


class WatchStream:
    """The lines of one watch response; :meth:`close` from any thread ends the iteration."""

    def __init__(self, response: Any) -> None:
        self._response = response
        self._closed = threading.Event()

    def __iter__(self) -> Iterator[str]:
        try:
            for line in iter_resp_lines(self._response):
                if self._closed.is_set():
                    return
                if line:
                    yield line
        except Exception:
            if not self._closed.is_set():
                raise

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        try:
            getattr(self._response, "shutdown", self._response.close)()
            self._response.release_conn()
        except Exception:  # already closed
            logger.debug("closing a watch stream failed", exc_info=True)


class ApiHttp:
    """Raw JSON requests to the API server a kubeconfig names (see the module docstring)."""

    def __init__(self, kubeconfig: str, *, context: str | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        cfg = k8s.Configuration()
        kube_config.load_kube_config(config_file=kubeconfig, context=context, client_configuration=cfg,
                                     persist_config=False)
        self.configuration = cfg
        self.client = k8s.ApiClient(configuration=cfg)
        self.client.user_agent = "dask-k8s-backend-node"
        self.sleep = sleep

    def __repr__(self) -> str:
        return f"ApiHttp({self.server})"

    @property
    def server(self) -> str:
        return self.configuration.host

    @property
    def host_port(self) -> tuple[str, int]:
        """The API server's host and port (for KUBERNETES_SERVICE_HOST/PORT in containers)."""
        parts = urlsplit(self.server)
        return parts.hostname or "127.0.0.1", parts.port or (443 if parts.scheme == "https" else 80)

    @property
    def ca_file(self) -> str | None:
        return self.configuration.ssl_ca_cert

    def request(self, method: str, path: str, *, query: dict[str, Any] | None = None, body: Any = None,
                content_type: str = JSON, action: str | None = None, idempotent: bool = False,
                timeout: tuple[float, float] = REQUEST_TIMEOUT) -> dict[str, Any]:
        """Send one request; the decoded JSON answer. Raises a typed KubernetesApiError.

        GETs and ``idempotent`` requests are retried on 429, 5xx and connection errors (see the module docstring).
        """
        action = action or f"{method} {path}"
        retries = RETRIES - 1 if idempotent or method == "GET" else 0
        for attempt in range(retries):
            try:
                return self._request_once(method, path, query, body, content_type, action, timeout)
            except RETRYABLE as e:
                delay = e.retry_after if e.retry_after is not None else 0.2 * 2 ** attempt
                logger.debug("%s %s failed (%s); retrying in %.1f s", method, path, e.reason, delay)
                self.sleep(min(delay, 5.0))
        return self._request_once(method, path, query, body, content_type, action, timeout)

    def _request_once(self, method: str, path: str, query: dict[str, Any] | None, body: Any, content_type: str,
                      action: str, timeout: tuple[float, float]) -> dict[str, Any]:
        try:
            response = self._send(method, path, query, body, content_type, timeout)
            data = response.read()
        except Exception as e:
            raise translate(e, action) from e
        self._check(response, data, action)
        return json.loads(data) if data else {}

    def stream(self, path: str, *, query: dict[str, Any] | None = None, read_timeout: float = 120.0) -> WatchStream:
        """Open a watch (``query`` should hold ``watch=true``); iterate the returned stream for its lines."""
        action = f"watch {path}"
        try:
            response = self._send("GET", path, query, None, JSON, (REQUEST_TIMEOUT[0], read_timeout))
        except Exception as e:
            raise translate(e, action) from e
        if not 200 <= response.status <= 299:
            self._check(response, response.read(), action)
        return WatchStream(response.response)

    def _send(self, method: str, path: str, query: dict[str, Any] | None, body: Any, content_type: str,
              timeout: tuple[float, float]) -> Any:
        headers = {"Accept": JSON}
        if body is not None:
            headers["Content-Type"] = content_type
        method, url, headers, body, _ = self.client.param_serialize(
            method, path, query_params=_query(query), header_params=headers, body=body, auth_settings=["BearerToken"])
        return self.client.call_api(method, url, header_params=headers, body=body, _request_timeout=timeout)

    @staticmethod
    def _check(response: Any, data: bytes, action: str) -> None:
        """Raise the typed error for a non-2xx answer (the server's Status kept)."""
        if 200 <= response.status <= 299:
            return
        try:
            ApiException.from_response(http_resp=response, body=data.decode("utf-8", "replace"), data=None)
        except ApiException as error:
            raise translate(error, action) from None

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:
            logger.debug("closing the API client failed", exc_info=True)


def _query(query: dict[str, Any] | None) -> list[tuple[str, str]]:
    out = []
    for key, value in (query or {}).items():
        if value is None or value == "":
            continue
        out.append((key, ("true" if value else "false") if isinstance(value, bool) else str(value)))
    return out
