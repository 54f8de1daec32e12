"""The embedded Kubernetes' API server: kube-apiserver's REST API over the ObjectStore, on 127.0.0.1.

:class:`ApiServer` binds 127.0.0.1 (port 0 = a free port) in the caller's thread, then runs a
tornado HTTP/1.1 server (TLS with the embedded CA's certificate by default) on its own event loop
in a daemon thread, and can pause, drop watches and stop. Each request is served by
:class:`~.rest.handler.ApiHandler` (:mod:`.rest`: routing, request parsing, the verbs, watches
and log streams), so the official client and kubectl work unchanged. This module is the server's
life cycle and its threads, sockets and TLS, and keeps clients' TLS disconnects out of warnings.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import socket
import ssl
import threading
import uuid
import weakref
from typing import Any, Mapping

import tornado.httpserver
import tornado.netutil
import tornado.web

from ..store.object_store import ObjectStore
from .faults import FaultInjector
from .rest.flow_control import FLOWS
from .rest.handler import ApiHandler
from .tls import Credentials
from .watches import WatchStream

logger = logging.getLogger(__name__)


# Server threads whose connection-level TLS errors are a client going away (see _ClientTlsNoise).
_SERVER_THREADS: "weakref.WeakSet[threading.Thread]" = weakref.WeakSet()
_TLS_READ_ERROR = re.compile(r"^error on read: \[SSL[:\]]")
_TLS_HANDSHAKE_ERROR = "SSL Error on %s %s: %s"  # tornado's SSLIOStream handshake failure message


class _ClientTlsNoise(logging.Filter):
    """Moves TLS errors of single client connections of our servers from tornado's WARNING to our DEBUG.

    A client that closes its side first makes tornado log ``error on read: [SSL: ...]``: when the
    official client stops a watch (``response.shutdown()``, SHUT_RD on its socket), its OpenSSL
    reads the EOF as a truncated record and answers with a ``decode_error`` alert on the still-open
    write side (``TLSV1_ALERT_DECODE_ERROR`` here); a client dropped mid-handshake gives
    ``SSL Error on ...``. Each closes one connection and says nothing about the server. Records
    from other threads (other tornado servers) and every other tornado warning pass unchanged.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if threading.current_thread() not in _SERVER_THREADS:
            return True
        if record.msg != _TLS_HANDSHAKE_ERROR and not _TLS_READ_ERROR.match(record.getMessage()):
            return True
        logger.debug("A client connection ended with a TLS error (the client went away): %s", record.getMessage())
        return False


_CLIENT_TLS_NOISE = _ClientTlsNoise()


def _quiet_client_tls_errors() -> None:
    """Route the current (server) thread's client TLS errors to DEBUG; idempotent."""
    _SERVER_THREADS.add(threading.current_thread())
    tornado_logger = logging.getLogger("tornado.general")
    if _CLIENT_TLS_NOISE not in tornado_logger.filters:
        tornado_logger.addFilter(_CLIENT_TLS_NOISE)


def _log_request(handler: tornado.web.RequestHandler) -> None:
    # 4xx answers are normal API traffic (NotFound, Conflict): keep them out of warnings
    logger.debug("%s %s -> %d", handler.request.method, handler.request.path, handler.get_status())


class ApiServer:
    """kube-apiserver's REST API for ``store`` on 127.0.0.1, served from a background thread."""

    def __init__(self, store: ObjectStore, *, port: int = 0, credentials: Credentials | None = None,
                 kubelets: Mapping[str, Any] | None = None, faults: FaultInjector | None = None,
                 bookmark_interval: float = 5.0, log_poll_interval: float = 0.1,
                 identities: Any = None, admission: Any = None, min_request_timeout: float = 1800.0) -> None:
        if not min_request_timeout > 0:
            raise ValueError(f"ApiServer: min_request_timeout must be > 0 seconds, got {min_request_timeout!r}.")
        self.store = store
        self.min_request_timeout = min_request_timeout
        self.identities = identities  # embedded/authz.py Identities: restricted users besides the admin token
        self.admission = admission    # embedded/admission.py Admission for pod creations
        self.kubelets: Mapping[str, Any] = kubelets if kubelets is not None else {}
        self.faults = faults
        self.bookmark_interval = bookmark_interval
        self.log_poll_interval = log_poll_interval
        self.watches: set[WatchStream] = set()
        # one uid per flow for this server's life, as upstream's FlowSchema / PriorityLevelConfiguration objects
        self.flow_schema_uids = {flow: str(uuid.uuid4()) for flow in FLOWS}
        self.priority_level_uids = {flow: str(uuid.uuid4()) for flow in FLOWS}
        self.stopping = False
        self._credentials = credentials
        self._requested_port = port
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._http: tornado.httpserver.HTTPServer | None = None
        self._sockets: list[socket.socket] = []
        self._ready = threading.Event()

    def __repr__(self) -> str:
        return f"ApiServer(url={self.url!r}, watches={len(self.watches)})"

    @property
    def token(self) -> str | None:
        return self._credentials.token if self._credentials else None

    def watch_timeout(self) -> float:
        """How long a watch without ``timeoutSeconds`` lasts: random in [min, 2*min) of min_request_timeout.

        kube-apiserver ends such watches the same way, so clients must expect a clean end of the
        stream and re-watch from their last resourceVersion; the spread keeps many watchers from
        reconnecting at once.
        """
        return self.min_request_timeout * (1.0 + random.random())

    @property
    def url(self) -> str:
        scheme = "https" if self._credentials else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def _ssl_context(self) -> ssl.SSLContext | None:
        if self._credentials is None:
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(self._credentials.cert_file), str(self._credentials.key_file))
        return context

    def _bind(self, port: int) -> list[socket.socket]:
        return tornado.netutil.bind_sockets(port, "127.0.0.1", family=socket.AF_INET)

    def start(self) -> None:
        """Bind (errors surface here, in the caller's thread), then serve from a daemon thread."""
        self._sockets = self._bind(self._requested_port)
        self.port = self._sockets[0].getsockname()[1]
        self._thread = threading.Thread(target=self._run, name=f"embedded-apiserver-{self.port}", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("The embedded API server's event loop did not start within 10 s.")
        if self.faults is not None:
            self.faults.attach(self)
        logger.info("Embedded API server listening on %s", self.url)

    def _make_http_server(self) -> tornado.httpserver.HTTPServer:
        app = tornado.web.Application([(r"/.*", ApiHandler, {"server": self})], compress_response=False,
                                      log_function=_log_request)
        return tornado.httpserver.HTTPServer(app, ssl_options=self._ssl_context(), idle_connection_timeout=3600,
                                             max_body_size=64 * 1024 * 1024)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        _quiet_client_tls_errors()
        try:
            self._http = self._make_http_server()
            self._http.add_sockets(self._sockets)
            loop.call_soon(self._ready.set)
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def _call(self, coro_fn: Any, timeout: float = 10.0) -> Any:
        """Run ``coro_fn()`` on the server's loop and wait for its result."""
        loop = self._loop
        if loop is None or loop.is_closed() or not loop.is_running():
            return None
        return asyncio.run_coroutine_threadsafe(coro_fn(), loop).result(timeout)

    def drop_watches(self) -> int:
        """Close every open watch stream (their responses end); returns how many there were."""
        async def drop() -> int:
            streams = list(self.watches)
            for stream in streams:
                stream.close()
            return len(streams)
        return self._call(drop) or 0

    def pause(self, seconds: float) -> None:
        """Refuse connections for ``seconds`` (open connections are closed), then listen on the same port."""
        async def stop_listening() -> None:
            http = self._http
            self._http = None
            if http is not None:
                http.stop()
                for stream in list(self.watches):
                    stream.close()
                await asyncio.wait_for(http.close_all_connections(), 5)
            self._loop.call_later(seconds, self._listen_again)  # type: ignore[union-attr]
        self._call(stop_listening)

    def _listen_again(self) -> None:
        if self.stopping:
            return
        try:
            self._sockets = self._bind(self.port)
        except OSError as e:
            logger.error("The embedded API server could not listen again on port %d: %s", self.port, e)
            return
        self._http = self._make_http_server()
        self._http.add_sockets(self._sockets)
        logger.info("Embedded API server listening again on %s", self.url)

    def stop(self) -> None:
        """Close streams, connections and the listening socket, then end the thread; idempotent."""
        if self._thread is None:
            return
        self.stopping = True
        if self.faults is not None:
            self.faults.attach(None)

        async def shutdown() -> None:
            for stream in list(self.watches):
                stream.close()
            http = self._http
            self._http = None
            if http is not None:
                http.stop()
                try:
                    await asyncio.wait_for(http.close_all_connections(), 5)
                except asyncio.TimeoutError:
                    logger.warning("Some connections to the embedded API server did not close within 5 s")
            handlers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            if handlers:
                await asyncio.wait(handlers, timeout=2)

        try:
            self._call(shutdown)
        finally:
            loop = self._loop
            if loop is not None and not loop.is_closed():
                loop.call_soon_threadsafe(loop.stop)
            self._thread.join(10)
            for sock in self._sockets:
                sock.close()
            self._thread = None
            logger.info("Embedded API server on port %d stopped", self.port)
