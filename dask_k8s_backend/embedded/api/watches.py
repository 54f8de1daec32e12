"""One watch stream of the embedded API server: from store events to newline-delimited JSON.

A :class:`WatchStream` subscribes to the store (atomically getting the backlog to replay: the
current objects when the watch asks for initial events, which upstream defaults for
resourceVersion ""/"0", else the recorded events after its version), then
receives each later event in the writer's thread, where it only appends to a deque and, at most
once per batch, wakes the event loop. On the loop, :meth:`WatchStream.next_chunk` filters events
(resource, namespace, label and field selectors; an object that starts or stops matching becomes
ADDED/DELETED, as in kube-apiserver) and renders them as ``{"type":..,"object":..}\\n`` lines from
the objects' cached JSON bytes. Bookmarks carry only the last resourceVersion seen; the one that
ends the initial events (``sendInitialEvents=true&allowWatchBookmarks=true``) also carries the
annotation ``k8s.io/initial-events-end: "true"``, right after the last initial ADDED, as upstream's
cacher sends it (apiserver pkg/storage/cacher cache_watcher.go processInterval).
"""

from __future__ import annotations

import asyncio
import collections
import json
from typing import Callable

from ..store.listoptions import ListOptions
from ..store.entries import Entry, WatchEvent
from ..store.object_store import ObjectStore
from ..store.resource_table import resource_info
from ..store.selectors import Selector
from .tables import table_for

INITIAL_EVENTS_END = "k8s.io/initial-events-end"
_END_OF_INITIAL_EVENTS = "initial-events-end"  # type of the marker event queued after the initial ADDED events


class WatchStream:
    """Filtered events of one watch request, consumed on the event loop."""

    def __init__(self, store: ObjectStore, loop: asyncio.AbstractEventLoop, *, resource: str,
                 namespace: str | None, labels: Selector, fields: Selector) -> None:
        self.resource = resource
        self.kind = resource_info(resource).kind
        self._store = store
        self._loop = loop
        self._namespace = namespace
        self._labels, self._fields = labels, fields
        self._pending: collections.deque[WatchEvent] = collections.deque()
        self._wakeup = asyncio.Event()
        self._wake_scheduled = False
        self._unsubscribe: Callable[[], None] | None = None
        self.closed = False
        self.last_rv = 0
        self.as_table = False  # kubectl get -w: each object as a one-row meta.k8s.io/v1 Table

    def start(self, options: ListOptions) -> None:
        """Subscribe as ``options`` ask; raises the store's 410 Gone when their resourceVersion is too old.

        With initial events: every current object, then (when asked) the end-of-initial-events
        BOOKMARK at the version they show. Without: a watch from ""/"0" starts now, one from a
        version replays the history after it.
        """
        resource_version = options.resource_version
        if options.initial_events() or resource_version in ("", "0"):
            backlog, at, self._unsubscribe = self._store.subscribe_now(self.resource, self._on_event,
                                                                       initial=options.initial_events())
            if options.initial_events_bookmark():
                backlog.append(WatchEvent(_END_OF_INITIAL_EVENTS, self.resource, None, None, at))  # type: ignore[arg-type]
            self.last_rv = at
        else:
            backlog, self._unsubscribe = self._store.subscribe(self.resource, resource_version, self._on_event)
            self.last_rv = max(int(self._store.resource_version), int(resource_version))
        self._pending.extendleft(reversed(backlog))
        if backlog:
            self._wakeup.set()

    def close(self) -> None:
        """Stop the stream (idempotent, loop thread); the handler's wait returns at once."""
        self.closed = True
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self._wakeup.set()

    def _on_event(self, event: WatchEvent) -> None:
        # writer's thread, under the store lock: queue, and wake the loop once per batch
        self._pending.append(event)
        if not self._wake_scheduled:
            self._wake_scheduled = True
            try:
                self._loop.call_soon_threadsafe(self._wake)
            except RuntimeError:  # loop closed: the server is stopping
                pass

    def _wake(self) -> None:
        self._wake_scheduled = False
        self._wakeup.set()

    async def wait(self, timeout: float) -> None:
        """Until events arrive, the stream is closed, or ``timeout`` seconds pass."""
        if self._pending or self.closed:
            return
        self._wakeup.clear()
        if self._pending:
            return
        try:
            await asyncio.wait_for(self._wakeup.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    def next_chunk(self) -> bytes:
        """The lines of every queued event this watch should see (may be empty)."""
        lines = []
        while self._pending:
            event = self._pending.popleft()
            self.last_rv = max(self.last_rv, event.rv)
            line = self.bookmark(initial_events_end=True) if event.type == _END_OF_INITIAL_EVENTS else self._render(event)
            if line is not None:
                lines.append(line)
        return b"".join(lines)

    def _matches(self, obj: dict) -> bool:
        if self._namespace is None and self._labels.empty and self._fields.empty:
            return True
        if self._namespace is not None and obj["metadata"].get("namespace") != self._namespace:
            return False
        return self._labels(obj) and self._fields(obj)

    def _render(self, event: WatchEvent) -> bytes | None:
        if event.resource != self.resource:
            return None
        seen = self._as_seen(event)
        if seen is None:
            return None
        type_, entry = seen
        body = entry.json()
        if self.as_table:
            obj = entry.obj
            body = json.dumps(table_for(resource_info(self.resource), [obj], obj["metadata"]["resourceVersion"], None),
                              separators=(",", ":")).encode()
        return b'{"type":"' + type_.encode() + b'","object":' + body + b"}\n"

    def _as_seen(self, event: WatchEvent) -> tuple[str, Entry] | None:
        """The event as this watch's selectors see it, or None when they hide it.

        An object that starts matching is ADDED; one that stops matching is DELETED with the
        version that last matched, stamped with the event's resourceVersion (upstream's
        cache_watcher convertToWatchEvent).
        """
        now = self._matches(event.entry.view)
        if event.type != "MODIFIED":
            return (event.type, event.entry) if now else None
        before = event.old is not None and self._matches(event.old.view)
        if now:
            return ("MODIFIED" if before else "ADDED"), event.entry
        if before:
            return "DELETED", _at_version(event.old, event.rv)  # type: ignore[arg-type]
        return None

    def bookmark(self, *, initial_events_end: bool = False) -> bytes:
        """A BOOKMARK line with the last resourceVersion this watch has seen (marking the initial events' end)."""
        meta: dict = {"resourceVersion": str(self.last_rv)}
        if initial_events_end:
            meta["annotations"] = {INITIAL_EVENTS_END: "true"}
        obj = {"kind": self.kind, "apiVersion": "v1", "metadata": meta}
        return json.dumps({"type": "BOOKMARK", "object": obj}, separators=(",", ":")).encode() + b"\n"


def _at_version(entry: Entry, rv: int) -> Entry:
    """A copy of ``entry`` carrying resourceVersion ``rv``."""
    obj = entry.copy()
    obj["metadata"]["resourceVersion"] = str(rv)
    return Entry(obj)


def error_line(status: dict) -> bytes:
    """An ERROR watch event carrying a Status (e.g. 410 Expired)."""
    return json.dumps({"type": "ERROR", "object": status}, separators=(",", ":")).encode() + b"\n"
