"""Kubernetes client factory: one configured ``kubernetes.client.ApiClient`` per connection.

Data flow: :func:`create_api_client` builds a ``Configuration`` from (in order) the kubeconfig or
in-cluster service account when no server is given, then the explicit ``k8s-backend.authenticate``
settings on top (token or token file, CA, client certificate, trust-certificates). It then installs
:class:`ResilientRESTClient` as the ApiClient's REST layer, so every request made through any API
class gets, in one place and never at call sites:

- a client-side token-bucket rate limit (``api.qps`` / ``api.burst``), like client-go's flowcontrol;
  with ``api.rate-limit: auto`` it stops once an answer carries API Priority and Fairness headers:
  that server queues or rejects (429, retried below) by its own load, so a fixed client-side rate
  would only slow a scale-up (1000 pod creations at 100/s take 8 s) without protecting anything;
- default connect/read timeouts (``api.connection-timeout`` / ``api.request-timeout``);
- retries with exponential backoff (``api.max-retries``) on connection errors, 429 (honouring
  Retry-After) and 5xx — only where a retry cannot repeat a side effect: every GET/HEAD, and other
  methods only when the request was never sent (connection refused) or the server said 429/503;
- failover across several API servers when one refuses connections.

Secrets (tokens, key files' contents) never appear in logs, reprs or error messages.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import urllib3
from kubernetes import client as k8s
from kubernetes.client.rest import RESTClientObject, RESTResponse
from kubernetes.config.incluster_config import InClusterConfigLoader

from ..config import Settings
from .errors import ApiUnreachable

logger = logging.getLogger(__name__)

#: Request threads of one ``KubePodApi`` (its pod creations and deletions run this many at a time).
API_THREADS = 16
#: Connections held by long-lived streams (watches) beside those threads.
STREAM_CONNECTIONS = 4
#: Connections kept per API server: one per request thread and stream, so a busy backend never opens
#: a connection the pool must then discard ("Connection pool is full, discarding connection").
CONNECTION_POOL_SIZE = API_THREADS + STREAM_CONNECTIONS

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
MAX_BACKOFF = 5.0
MAX_RETRY_AFTER = 30.0
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
#: Response headers a kube-apiserver doing API Priority and Fairness sets on the requests it classified.
FLOW_CONTROL_HEADERS = ("X-Kubernetes-PF-PriorityLevel-UID", "X-Kubernetes-PF-FlowSchema-UID")


class TokenBucket:
    """Client-side rate limit: ``burst`` requests at once, then ``qps`` per second.

    Callers reserve a token and sleep for the time it takes to refill (a token count below zero
    is the queue of callers already waiting), so concurrent threads are served in order.
    """

    def __init__(self, qps: float, burst: int, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.qps, self.burst = float(qps), max(1, int(burst))
        self._clock, self._sleep = clock, sleep
        self._tokens = float(self.burst)
        self._last = clock()
        self._lock = threading.Lock()

    def reserve(self) -> float:
        """Take one token; return how long the caller must wait before using it."""
        with self._lock:
            now = self._clock()
            self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.qps)
            self._last = now
            self._tokens -= 1.0
            return 0.0 if self._tokens >= 0 else -self._tokens / self.qps

    def acquire(self) -> None:
        wait = self.reserve()
        if wait > 0:
            self._sleep(wait)


class ResilientRESTClient(RESTClientObject):
    """The official REST layer plus rate limit, timeouts, retries and failover (see module doc)."""

    def __init__(self, configuration: k8s.Configuration, servers: list[str], *, max_retries: int,
                 connect_timeout: float, read_timeout: float, limiter: TokenBucket,
                 sleep: Callable[[float], None] = time.sleep, limit_always: bool = True) -> None:
        # urllib3 must not retry on its own: this class decides what is safe to repeat.
        configuration.retries = urllib3.Retry(total=None, connect=0, read=0, status=0, other=0, redirect=5)
        configuration.client_go_retries = False
        super().__init__(configuration)
        self.servers = [s.rstrip("/") for s in servers]
        self._active = 0
        self._lock = threading.Lock()
        self.max_retries = max_retries
        self.default_timeout = (connect_timeout, read_timeout)
        self.limiter = limiter
        self.limit_always = limit_always
        self.server_flow_control = False  # set once an answer shows API Priority and Fairness
        self._sleep = sleep

    def __repr__(self) -> str:
        return f"ResilientRESTClient(servers={self.servers!r}, max_retries={self.max_retries})"

    @property
    def active_server(self) -> str:
        return self.servers[self._active]

    def request(self, method: str, url: str, headers: Any = None, body: Any = None, post_params: Any = None,
                _request_timeout: Any = None) -> RESTResponse:
        path = self._path_of(url)
        timeout = _request_timeout if _request_timeout is not None else self._timeout_for(path)
        attempt = 0
        while True:
            self._throttle()
            server = self.active_server
            try:
                response = super().request(method, server + path, headers=headers, body=body,
                                           post_params=post_params, _request_timeout=timeout)
            except urllib3.exceptions.HTTPError as exc:
                attempt += 1
                self._on_connection_error(exc, method, path, server, attempt)
                continue
            self._note_flow_control(response, server)
            delay = self._status_retry_delay(method, response, attempt)
            if delay is None:
                return response
            attempt += 1
            _discard(response)
            logger.info("API server %s answered %s to %s %s; retry %d/%d in %.2fs",
                        server, response.status, method, path.split("?")[0], attempt, self.max_retries, delay)
            self._sleep(delay)

    def _throttle(self) -> None:
        """The client-side rate limit, unless ``auto`` and the server does its own flow control."""
        if self.limit_always or not self.server_flow_control:
            self.limiter.acquire()

    def _note_flow_control(self, response: Any, server: str) -> None:
        """Remember that the server does API Priority and Fairness (its answers carry the PF headers)."""
        if self.server_flow_control or self.limit_always:
            return
        headers = getattr(response, "headers", None) or {}
        if any(headers.get(name) for name in FLOW_CONTROL_HEADERS):
            self.server_flow_control = True
            logger.info("API server %s does API Priority and Fairness: the client-side rate limit (api.qps=%g, "
                        "api.burst=%d) no longer applies (api.rate-limit: always keeps it)", server,
                        self.limiter.qps, self.limiter.burst)

    def _path_of(self, url: str) -> str:
        """The request's path and query: the ApiClient always prefixes ``configuration.host``."""
        host = self.configuration.host.rstrip("/")
        if url.startswith(host):
            return url[len(host):]
        parts = urlsplit(url)
        return parts.path + (f"?{parts.query}" if parts.query else "")

    def _timeout_for(self, path: str) -> tuple[float, float | None]:
        """Default timeouts; a watch stream may stay silent for long, so it gets no read timeout."""
        connect, read = self.default_timeout
        query = path.partition("?")[2].lower()
        streaming = any(flag in query.split("&") for flag in ("watch=true", "watch=1", "follow=true"))
        return (connect, None) if streaming else (connect, read)

    def _on_connection_error(self, exc: urllib3.exceptions.HTTPError, method: str, path: str,
                             server: str, attempt: int) -> None:
        """Fail over and back off when retrying is safe; raise ApiUnreachable otherwise."""
        reason = getattr(exc, "reason", None) or exc
        never_sent = isinstance(reason, (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError))
        tls = isinstance(reason, urllib3.exceptions.SSLError)
        retryable = not tls and (never_sent or method.upper() in SAFE_METHODS)
        if retryable and attempt <= self.max_retries:
            if never_sent or isinstance(reason, urllib3.exceptions.ProtocolError):
                self._fail_over(server)
            delay = self._backoff(attempt)
            logger.info("Connection to API server %s failed (%s); retry %d/%d on %s in %.2fs", server,
                        type(reason).__name__, attempt, self.max_retries, self.active_server, delay)
            self._sleep(delay)
            return
        raise _unreachable(reason, method, path, self.servers, tls) from exc

    def _fail_over(self, failed: str) -> None:
        with self._lock:
            if len(self.servers) > 1 and self.servers[self._active] == failed:
                self._active = (self._active + 1) % len(self.servers)
                self.server_flow_control = False  # the next server shows its own headers first
                logger.warning("API server %s is unreachable; failing over to %s", failed, self.active_server)

    def _status_retry_delay(self, method: str, response: RESTResponse, attempt: int) -> float | None:
        """Seconds to wait before retrying this answer, or None to hand it to the caller."""
        status = response.status
        if attempt >= self.max_retries or not (status == 429 or 500 <= status <= 599):
            return None
        if status not in (429, 503) and method.upper() not in SAFE_METHODS:
            return None  # a POST that reached the server may have taken effect
        retry_after = _retry_after(response)
        if retry_after is not None:
            return min(retry_after, MAX_RETRY_AFTER)
        return self._backoff(attempt + 1)

    @staticmethod
    def _backoff(attempt: int) -> float:
        return min(MAX_BACKOFF, 0.05 * 2 ** (attempt - 1))


def _discard(response: RESTResponse) -> None:
    try:
        response.read()
    finally:
        response.response.release_conn()


def _retry_after(response: RESTResponse) -> float | None:
    value = response.headers.get("Retry-After") if response.headers else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except (TypeError, ValueError):
        return None


def _unreachable(reason: BaseException, method: str, path: str, servers: list[str], tls: bool) -> ApiUnreachable:
    where = ", ".join(servers)
    action = f"{method} {path.split('?')[0]}"
    if tls:
        text = (f"TLS verification of the API server {where} failed during {action}: {reason}. Set "
                "k8s-backend.authenticate.ca-cert-file to the CA that signed the server's certificate "
                "(or trust-certificates: true, insecure).")
    elif isinstance(reason, urllib3.exceptions.ReadTimeoutError):
        text = (f"The API server {where} did not answer {action} in time ({type(reason).__name__}). Raise "
                "k8s-backend.api.request-timeout, or check the API server's load and the master URL.")
    else:
        text = (f"Could not reach the API server {where} during {action} ({type(reason).__name__}: {reason}). "
                "Check the master URL, that the API server is running and that this machine can reach it.")
    return ApiUnreachable(text)


# ---------------------------------------------------------------------------- configuration sources

def _in_cluster(environ: Any = os.environ) -> bool:
    return bool(environ.get("KUBERNETES_SERVICE_HOST")) and (SERVICE_ACCOUNT_DIR / "token").exists()


def _base_configuration(servers: list[str] | None, settings: Settings) -> tuple[k8s.Configuration, list[str]]:
    """Configuration from kubeconfig/in-cluster (no servers) or a bare one for explicit servers."""
    cfg = k8s.Configuration()
    auth = settings.authenticate
    if servers:
        if auth.kubeconfig:  # explicit servers, credentials (token, CA, client cert) from the named kubeconfig
            from kubernetes import config as kube_config

            kube_config.load_kube_config(config_file=auth.kubeconfig, context=auth.context, client_configuration=cfg,
                                         persist_config=False)
        cfg.host = servers[0].rstrip("/")
        return cfg, list(servers)
    kubeconfig = auth.kubeconfig or os.environ.get("KUBECONFIG")
    if not kubeconfig and _in_cluster():
        InClusterConfigLoader(token_filename=str(SERVICE_ACCOUNT_DIR / "token"),
                              cert_filename=str(SERVICE_ACCOUNT_DIR / "ca.crt")).load_and_set(cfg)
        logger.info("Using the in-cluster service account to reach %s", cfg.host)
        return cfg, [cfg.host]
    kubeconfig = kubeconfig or str(Path.home() / ".kube" / "config")
    paths = [p for p in kubeconfig.split(os.pathsep) if p]
    if not any(Path(p).exists() for p in paths):
        raise ValueError(f"master 'k8s://' needs a kubeconfig, but {kubeconfig!r} does not exist and this "
                         "is not a pod with a service account. Set k8s-backend.authenticate.kubeconfig or "
                         "KUBECONFIG, or give the API server: master='k8s://https://host:port'.")
    from kubernetes import config as kube_config

    kube_config.load_kube_config(config_file=paths[0], context=auth.context, client_configuration=cfg,
                                 persist_config=False)
    logger.info("Using kubeconfig %s (context %s) to reach %s", paths[0], auth.context or "current", cfg.host)
    return cfg, [cfg.host]


def _token_file_hook(path: str) -> Callable[[k8s.Configuration], None]:
    """Re-read a token file when it changes (projected service-account tokens rotate)."""
    state = {"mtime": None}

    def refresh(cfg: k8s.Configuration) -> None:
        try:
            mtime = os.stat(path).st_mtime
        except OSError as e:
            raise ValueError(f"k8s-backend.authenticate.oauth-token-file: cannot read {path!r} ({e.strerror}).") from None
        if mtime != state["mtime"]:
            state["mtime"] = mtime
            cfg.api_key["authorization"] = Path(path).read_text(encoding="utf-8").strip()
            cfg.api_key_prefix["authorization"] = "Bearer"

    return refresh


def _existing(path: Path) -> str | None:
    return str(path) if path.is_file() else None


def _apply_authentication(cfg: k8s.Configuration, settings: Settings, explicit_servers: bool) -> None:
    auth = settings.authenticate
    if explicit_servers and not (auth.oauth_token or auth.oauth_token_file or auth.client_cert_file) and _in_cluster():
        # In a pod with an explicit master (as Spark's cluster mode): use the mounted service account.
        auth = replace(auth, oauth_token_file=str(SERVICE_ACCOUNT_DIR / "token"),
                       ca_cert_file=auth.ca_cert_file or _existing(SERVICE_ACCOUNT_DIR / "ca.crt"))
    if auth.oauth_token:
        cfg.api_key = {"authorization": auth.oauth_token}
        cfg.api_key_prefix = {"authorization": "Bearer"}
        cfg.refresh_api_key_hook = None
    elif auth.oauth_token_file:
        hook = _token_file_hook(auth.oauth_token_file)
        hook(cfg)  # a missing file fails now, not at the first request
        cfg.refresh_api_key_hook = hook
    for key, value, attr in (("ca-cert-file", auth.ca_cert_file, "ssl_ca_cert"),
                             ("client-cert-file", auth.client_cert_file, "cert_file"),
                             ("client-key-file", auth.client_key_file, "key_file")):
        if value:
            if not Path(value).is_file():
                raise ValueError(f"k8s-backend.authenticate.{key}: file {value!r} does not exist.")
            setattr(cfg, attr, value)
    if auth.trust_certificates:
        cfg.verify_ssl = False
        message = ("k8s-backend.authenticate.trust-certificates is true: the API server's TLS certificate "
                   "is not verified (insecure; use ca-cert-file instead).")
        warnings.warn(message, UserWarning, stacklevel=3)  # only here: a logger too would print it twice
        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)


def create_api_client(servers: list[str] | None, settings: Settings, *,
                      clock: Callable[[], float] = time.monotonic,
                      sleep: Callable[[float], None] = time.sleep) -> k8s.ApiClient:
    """An ApiClient for these API servers (or the kubeconfig / in-cluster account when empty).

    ``clock`` and ``sleep`` drive the rate limit and backoff; tests pass fakes.
    """
    explicit = bool(servers)
    cfg, servers = _base_configuration(servers, settings)
    _apply_authentication(cfg, settings, explicit_servers=explicit)
    cfg.connection_pool_maxsize = max(cfg.connection_pool_maxsize or 0, CONNECTION_POOL_SIZE)
    exposed = [s for s in servers if s.startswith("http://") and urlsplit(s).hostname not in _LOOPBACK]
    if exposed and (cfg.api_key or cfg.refresh_api_key_hook):
        logger.warning("Sending a bearer token over plain http to %s; use https", ", ".join(exposed))
    api = k8s.ApiClient(configuration=cfg)
    api.rest_client.close()
    api.rest_client = ResilientRESTClient(
        cfg, servers, max_retries=settings.api.max_retries, connect_timeout=settings.api.connection_timeout,
        read_timeout=settings.api.request_timeout,
        limiter=TokenBucket(settings.api.qps, settings.api.burst, clock=clock, sleep=sleep), sleep=sleep,
        limit_always=settings.api.rate_limit == "always",
    )
    api.user_agent = "dask-k8s-backend"
    return api


def kubeconfig_for(url: str, token: str | None = None, ca_file: str | None = None,
                   name: str = "dask-k8s-backend") -> dict[str, Any]:
    """A one-context kubeconfig (as a dict; dump it with yaml) for this server and credentials."""
    cluster: dict[str, Any] = {"server": url}
    if ca_file:
        cluster["certificate-authority"] = ca_file
    user = {"token": token} if token else {}
    return {
        "apiVersion": "v1", "kind": "Config", "current-context": name,
        "clusters": [{"name": name, "cluster": cluster}],
        "users": [{"name": name, "user": user}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
    }
