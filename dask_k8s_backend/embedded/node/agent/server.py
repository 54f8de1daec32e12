"""The kubelet's HTTPS endpoint: what kube-apiserver proxies ``kubectl logs`` / ``pods/log`` to.

Data flow: the API server reads the node's ``daemonEndpoints.kubeletEndpoint.Port`` and an address,
then forwards ``GET /containerLogs/{namespace}/{pod}/{container}?follow&previous&timestamps&
sinceSeconds&sinceTime&tailLines&limitBytes`` here over TLS (without a
``--kubelet-certificate-authority`` it does not verify our certificate, so a certificate made at
start by :func:`~dask_k8s_backend.embedded.api.tls.make_credentials` serves). The handler finds the pod
in the transport's cache, the file through the runtime (``container_log_path``) and reads it with
:mod:`dask_k8s_backend.embedded.api.podlogs`, exactly as the embedded API server serves ``pods/log``;
a follow re-reads the file until the container stops or the client leaves. ``/healthz`` answers
``ok``. Errors are plain text with the kubelet's status code; the API server wraps them in a Status.
Served by tornado on its own event loop in one daemon thread, bound to 127.0.0.1. Like kwok's
server it does not authenticate callers (a real kubelet checks the API server's client
certificate and asks SubjectAccessReview): anyone on this machine may read the pods' logs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import tornado.httpserver
import tornado.iostream
import tornado.netutil
import tornado.web

from dask_k8s_backend.embedded.api import podlogs
from dask_k8s_backend.embedded.status import StatusError
from dask_k8s_backend.embedded.api.tls import Credentials, make_credentials

logger = logging.getLogger(__name__)

POLL_INTERVAL = 0.1


class _Base(tornado.web.RequestHandler):
    def initialize(self, server: "KubeletServer") -> None:
        self.server = server
        self.gone = False

    def on_connection_close(self) -> None:
        self.gone = True

    def fail(self, code: int, message: str) -> None:
        self.set_status(code)
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(message)


class HealthHandler(_Base):
    def get(self) -> None:
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish("ok")


class ContainerLogsHandler(_Base):
    """``GET /containerLogs/{namespace}/{pod}/{container}``."""

    async def get(self, namespace: str, name: str, container: str) -> None:
        kubelet = self.server.kubelet
        pod = kubelet.transport.get_pod((namespace, name))
        if pod is None:
            self.fail(404, f'pod "{name}" does not exist')
            return
        try:
            options = podlogs.parse_log_options(lambda k: self.get_query_argument(k, None), time.time())
            path = podlogs.resolve_log(pod, container, options.previous, {kubelet.node_name: kubelet})
        except StatusError as e:
            self.fail(e.code, e.message)
            return
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        data, offset = podlogs.read_tail(path, options.tail_lines, options.limit_bytes)
        if not podlogs.written_since(path, options.since):
            data = b""
        sent = self._write(data, path, options)
        if options.follow and not options.previous:
            await self.flush()
            await self._follow((namespace, name), container, path, offset, options, sent)
        if not self.gone:
            self.finish()

    def _write(self, data: bytes, path: Path, options: podlogs.LogOptions) -> int:
        if options.timestamps and data:
            data = podlogs.stamp_lines(data, os.stat(path).st_mtime)
        self.write(data)
        return len(data)

    async def _follow(self, key: tuple[str, str], container: str, path: Path, offset: int,
                      options: podlogs.LogOptions, sent: int) -> None:
        transport = self.server.kubelet.transport
        while not self.gone and not self.server.stopping:
            if options.limit_bytes is not None and sent >= options.limit_bytes:
                return
            data, offset = podlogs.read_from(path, offset)
            if data:
                if options.limit_bytes is not None:
                    data = data[:options.limit_bytes - sent]
                sent += self._write(data, path, options)
                try:
                    await self.flush()
                except tornado.iostream.StreamClosedError:
                    return
                continue
            pod = transport.get_pod(key)
            if pod is None or not podlogs.container_running(pod, container):
                data, offset = podlogs.read_from(path, offset)
                self._write(data, path, options)
                return
            await asyncio.sleep(POLL_INTERVAL)


class KubeletServer:
    """The kubelet endpoint of one node agent, on 127.0.0.1 over TLS (see the module docstring)."""

    def __init__(self, kubelet: Any, *, port: int = 0, cert_dir: str | Path) -> None:
        self.kubelet = kubelet
        self.stopping = False
        self._requested_port = port
        self._cert_dir = Path(cert_dir)
        self.credentials: Credentials | None = None
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._http: tornado.httpserver.HTTPServer | None = None
        self._ready = threading.Event()

    def __repr__(self) -> str:
        return f"KubeletServer(https://127.0.0.1:{self.port})"

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Make the certificate, bind (errors surface here), then serve from a daemon thread."""
        self.credentials = make_credentials(self._cert_dir)
        sockets = tornado.netutil.bind_sockets(self._requested_port, "127.0.0.1", family=socket.AF_INET)
        self.port = sockets[0].getsockname()[1]
        self._thread = threading.Thread(target=self._run, args=(sockets,), name=f"kubelet-server-{self.port}",
                                        daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("The kubelet server's event loop did not start within 10 s.")
        logger.info("kubelet endpoint of node %s listening on %s", self.kubelet.node_name, self.url)

    def _app(self) -> tornado.web.Application:
        args = {"server": self}
        return tornado.web.Application([
            (r"/healthz", HealthHandler, args),
            (r"/containerLogs/([^/]+)/([^/]+)/([^/]+)", ContainerLogsHandler, args),
        ], compress_response=False, log_function=lambda h: logger.debug("%s %s -> %d", h.request.method,
                                                                         h.request.uri, h.get_status()))

    def _run(self, sockets: list[socket.socket]) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        assert self.credentials is not None
        context.load_cert_chain(str(self.credentials.cert_file), str(self.credentials.key_file))
        self._http = tornado.httpserver.HTTPServer(self._app(), ssl_options=context)
        self._http.add_sockets(sockets)
        loop.call_soon(self._ready.set)
        try:
            loop.run_forever()
        finally:
            loop.close()

    def stop(self) -> None:
        """Close the listener and open log streams, end the thread; idempotent."""
        if self._thread is None or self._loop is None:
            return
        self.stopping = True
        loop = self._loop

        async def shutdown() -> None:
            if self._http is not None:
                self._http.stop()
                try:
                    await asyncio.wait_for(self._http.close_all_connections(), 5)
                except asyncio.TimeoutError:
                    logger.warning("some connections to the kubelet endpoint did not close within 5 s")
            loop.stop()

        asyncio.run_coroutine_threadsafe(shutdown(), loop)
        self._thread.join(10)
        self._thread = None
