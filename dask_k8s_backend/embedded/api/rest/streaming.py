"""The two answers that stay open: a WATCH (chunked events, bookmarks, timeout) and ``pods/log?follow``.

Apart from the one-shot verbs because they await on the event loop for as long as the client
stays: they end on the watch's timeout, the client closing, the pod's container stopping or the
server stopping. :class:`Streaming` is a mixin of :class:`~.handler.ApiHandler`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ...status import StatusError
from ...store.listoptions import parse_list_options
from ...store.selectors import parse_field_selector, parse_label_selector
from .. import podlogs
from ..watches import WatchStream, error_line
from .request_parsing import JSON, query_bool, query_int
from .routes import Route


class Streaming:
    """``_watch`` and ``_pod_log`` of :class:`~.handler.ApiHandler` (uses its server, flush and client-gone flag)."""

    async def _watch(self, route: Route) -> None:
        args = self.get_query_argument
        labels = parse_label_selector(args("labelSelector", None))
        fields = parse_field_selector(args("fieldSelector", None), route.info.name)
        options = parse_list_options(lambda name: args(name, None), watch=True)
        timeout = query_int(args("timeoutSeconds", None), "timeoutSeconds") or self.server.watch_timeout()
        bookmarks = options.allow_watch_bookmarks
        stream = WatchStream(self.server.store, asyncio.get_running_loop(), resource=route.info.name,
                             namespace=route.namespace, labels=labels, fields=fields)
        stream.as_table = self._wants_table()
        self.set_status(200)
        self.set_header("Content-Type", JSON)
        try:
            stream.start(options)
        except StatusError as e:
            if e.code != 410:
                raise
            # Flush before finishing: finish() alone would add a Content-Length to a chunked response.
            self.write(error_line(e.to_status()))
            await self.flush()
            self.finish()
            return
        self._stream = stream
        self.server.watches.add(stream)
        try:
            await self._pump(stream, timeout, bookmarks)
        finally:
            self.server.watches.discard(stream)
            stream.close()
        if not self._client_gone and not self._finished:
            self.finish()

    async def _pump(self, stream: WatchStream, timeout: float, bookmarks: bool) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        interval = self.server.bookmark_interval
        next_bookmark = loop.time() + interval
        await self.flush()
        while not stream.closed and not self._client_gone:
            now = loop.time()
            if now >= deadline:
                break
            wake_at = min(deadline, next_bookmark) if bookmarks else deadline
            await stream.wait(max(0.0, wake_at - now))
            chunk = stream.next_chunk()
            if bookmarks and loop.time() >= next_bookmark:
                chunk += stream.bookmark()
                next_bookmark = loop.time() + interval
            if chunk:
                self.write(chunk)
                await self.flush()
        if bookmarks and not stream.closed and not self._client_gone:
            chunk = stream.next_chunk() + stream.bookmark()  # resume point before the timeout ends the stream
            self.write(chunk)

    # -------------------------------------------------------------------- log

    async def _pod_log(self, route: Route) -> None:
        args = self.get_query_argument
        store = self.server.store
        pod = store.get("pods", route.namespace, route.name)  # type: ignore[arg-type]
        container = podlogs.choose_container(pod, args("container", None))
        previous = query_bool(args("previous", None))
        path = podlogs.resolve_log(pod, container, previous, self.server.kubelets)
        data, offset = podlogs.read_tail(path, query_int(args("tailLines", None), "tailLines"),
                                         query_int(args("limitBytes", None), "limitBytes"))
        self.set_header("Content-Type", "text/plain")
        if not query_bool(args("follow", None)) or previous:
            self._send(200, data)
            return
        self.set_status(200)
        self.write(data)
        await self.flush()
        await self._follow(route, container, path, offset)
        if not self._client_gone and not self._finished:
            self.finish()

    async def _follow(self, route: Route, container: str, path: Any, offset: int) -> None:
        store = self.server.store
        while not self._client_gone and not self.server.stopping:
            data, offset = podlogs.read_from(path, offset)
            if data:
                self.write(data)
                await self.flush()
                continue
            try:
                pod = store.get("pods", route.namespace, route.name)  # type: ignore[arg-type]
            except StatusError:
                return
            if not podlogs.container_running(pod, container):
                data, offset = podlogs.read_from(path, offset)
                if data:
                    self.write(data)
                return
            await asyncio.sleep(self.server.log_poll_interval)
