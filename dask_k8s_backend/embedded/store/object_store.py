"""The embedded Kubernetes object store: every object, its versions, and the change stream.

One lock guards everything. A write (create, replace, mutate, delete, finalize_deletion)
defaults and validates the object, gives it the next global integer ``resourceVersion``,
stores it as an immutable :class:`Entry` (its JSON bytes are cached on first use, so LIST and
WATCH serve pre-serialized bytes), appends a :class:`WatchEvent` to a bounded history, and then
calls the listeners in resourceVersion order, still under the lock:

* public listeners (``add_listener``: scheduler, kubelets) get ``(type, private copy)``;
* raw subscribers (``subscribe``: the API server's watch hub) get the :class:`WatchEvent`
  itself, which they must treat as read-only.

Callers of the public methods always get private copies, so nothing outside can change what is
stored. Every failure is a :class:`~dask_k8s_backend.embedded.status.StatusError`.

This module holds the state, reads, watch subscriptions and the versioned commit every write
goes through. The rest of :class:`ObjectStore` comes from mixins that share this state and lock:
:mod:`.paginated_lists` (LIST at a version, page by page), :mod:`.write_preparation` (what a
write does to an object before it is stored), :mod:`.deletion` (finalizers, graceful deletion,
cascades, namespaces) and :mod:`.event_recorder` (Events). What is served is
:mod:`.resource_table`; how a version is held is :mod:`.entries`.
"""

from __future__ import annotations

import collections
import itertools
import logging
import random
import threading
import time
from typing import Any, Callable

from ..status import already_exists, bad_request, conflict, gone, not_found
from .deletion import Deletion
from .entries import Entry, WatchEvent
from .event_recorder import EventRecorder
from .paginated_lists import PaginatedLists
from .resource_table import INITIAL_NAMESPACES, RESOURCES, Key, ResourceInfo, key_string, resource_info
from .validation import apply_defaults, check_update, validate
from .write_preparation import (WritePreparation, bump_generation, copy_object, drop_empty_meta_fields,
                                keep_system_metadata, prepare_status_update)

logger = logging.getLogger(__name__)


class ObjectStore(PaginatedLists, WritePreparation, Deletion, EventRecorder):
    """Thread-safe in-memory Kubernetes objects with a global resourceVersion (docs/contracts.md)."""

    def __init__(self, *, history_size: int = 10_000, clock: Callable[[], float] = time.time,
                 max_events: int = 5_000) -> None:
        self._lock = threading.RLock()
        self._clock = clock
        self._rv = 0
        self._objects: dict[str, dict[Key, Entry]] = {name: {} for name in RESOURCES}
        self._history: collections.deque[WatchEvent] = collections.deque()
        self._history_size = history_size
        self._history_floor = 0  # every event with rv > floor is in the history
        self._listeners: list[Callable[[str, dict], None]] = []
        self._subscribers: list[Callable[[WatchEvent], None]] = []
        self._dependents: dict[str, set[tuple[str, Key]]] = collections.defaultdict(set)
        self._awaiting_kubelet: set[Key] = set()
        self._event_keys: dict[tuple, Key] = {}
        self._event_order: collections.deque[tuple[tuple, Key]] = collections.deque()
        self._max_events = max_events
        self._last_event_ns = 0
        self._next_service_ip = 1
        self._random = random.Random()
        for name in INITIAL_NAMESPACES:
            self.create("namespaces", None, {"metadata": {"name": name}})

    # ----------------------------------------------------------------- reads

    @property
    def resource_version(self) -> str:
        with self._lock:
            return str(self._rv)

    def get(self, resource: str, namespace: str | None, name: str) -> dict:
        return self.get_entry(resource, namespace, name).copy()

    def get_entry(self, resource: str, namespace: str | None, name: str) -> Entry:
        """The stored entry (read-only) for the API server; 404 NotFound when absent."""
        info = resource_info(resource)
        with self._lock:
            entry = self._objects[resource].get(self._key(info, namespace, name))
        if entry is None:
            raise not_found(resource, name)
        return entry

    def list(self, resource: str, namespace: str | None = None, *, label_selector: str | None = None,
             field_selector: str | None = None, limit: int | None = None, continue_token: str | None = None
             ) -> tuple[list[dict], str, str | None]:
        entries, rv, token, _ = self.list_entries(resource, namespace, label_selector=label_selector,
                                                  field_selector=field_selector, limit=limit,
                                                  continue_token=continue_token)
        return [e.copy() for e in entries], rv, token

    def events_since(self, resource_version: str) -> list[tuple[str, dict]]:
        with self._lock:
            events = self._history_after(_parse_rv(resource_version))
        return [(e.type, e.entry.copy()) for e in events]

    def subscribe(self, resource: str, resource_version: str | None, fn: Callable[[WatchEvent], None]
                  ) -> tuple[list[WatchEvent], Callable[[], None]]:
        """Atomically: the backlog a watch from ``resource_version`` must replay, and ``fn`` for the rest.

        ``""``/``"0"``/None: synthetic ADDED events for every current ``resource`` object; otherwise
        the recorded events after that version (all resources; 410 Gone when compacted away).
        ``fn`` is called under the store lock for every later event and must not block.
        """
        with self._lock:
            if resource_version in (None, "", "0"):
                backlog = [WatchEvent("ADDED", resource, e, None, int(e.meta["resourceVersion"]))
                           for e in self._objects[resource].values()]
                backlog.sort(key=lambda ev: ev.rv)
            else:
                backlog = self._history_after(_parse_rv(resource_version))
            self._subscribers.append(fn)
        return backlog, lambda: self._remove(self._subscribers, fn)

    def subscribe_now(self, resource: str, fn: Callable[[WatchEvent], None], *, initial: bool
                      ) -> tuple[list[WatchEvent], int, Callable[[], None]]:
        """Atomically: ADDED events for every current ``resource`` object in key order (when ``initial``),
        the resourceVersion that state is at, and ``fn`` (as in :meth:`subscribe`) for every later event.

        A watch's initial events (upstream's ``sendInitialEvents``): the version lets the watch mark
        where they end.
        """
        with self._lock:
            backlog = []
            if initial:
                objects = self._objects[resource]
                backlog = [WatchEvent("ADDED", resource, objects[key], None, int(objects[key].meta["resourceVersion"]))
                           for key in sorted(objects, key=key_string)]
            self._subscribers.append(fn)
            return backlog, self._rv, lambda: self._remove(self._subscribers, fn)

    def compact(self) -> int:
        """Forget the event history up to now, as etcd's compaction does; returns the compacted version.

        Lists and watches from an older resourceVersion (continue tokens included) answer 410 after
        this, which is how tests and chaos scenarios reach a client's relist path.
        """
        with self._lock:
            self._history.clear()
            self._history_floor = self._rv
            logger.info("Store history compacted at resourceVersion %d", self._rv)
            return self._rv

    def add_listener(self, fn: Callable[[str, dict], None]) -> Callable[[], None]:
        with self._lock:
            self._listeners.append(fn)
        return lambda: self._remove(self._listeners, fn)

    # ---------------------------------------------------------------- writes

    def create(self, resource: str, namespace: str | None, obj: dict, *, dry_run: bool = False) -> dict:
        """POST; ``dry_run``: every default and check, then the object that would be stored, unstored.

        A dry-run object has its uid, creationTimestamp and generated name but no resourceVersion,
        as kube-apiserver answers ``dryRun=All``; nothing is reserved (a generated name may be
        handed out again).
        """
        info = resource_info(resource)
        obj = copy_object(obj)
        meta = obj.get("metadata")
        if not isinstance(meta, dict):
            meta = obj["metadata"] = {}
        with self._lock:
            namespace = self._namespace_for(info, namespace, meta)
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = self._generate_name(resource, namespace, str(meta["generateName"]))
            apply_defaults(resource, obj)
            validate(resource, info.kind, obj)
            key = self._key(info, namespace, meta["name"])
            if key in self._objects[resource]:
                raise already_exists(resource, meta["name"])
            self._prepare_new(info, obj, meta, dry_run)
            if dry_run:
                return obj
            entry = self._commit("ADDED", info, key, None, obj)
            return entry.copy()

    def replace(self, resource: str, namespace: str | None, name: str, obj: dict, *,
                status_only: bool = False, dry_run: bool = False) -> dict:
        """PUT: 409 Conflict when ``metadata.resourceVersion`` is set and stale; status kept unless status_only.

        ``dry_run``: the same checks, and the object as it would be stored (with the current
        resourceVersion), but nothing is committed.
        """
        info = resource_info(resource)
        new = copy_object(obj)
        meta = new.get("metadata")
        if not isinstance(meta, dict):
            meta = new["metadata"] = {}
        with self._lock:
            key = self._key(info, namespace, name)
            old = self._objects[resource].get(key)
            if old is None:
                raise not_found(resource, name)
            if meta.get("name") not in (None, name):
                raise bad_request(f"the name of the object ({meta.get('name')}) does not match the name on the "
                                  f"URL ({name})")
            rv = meta.get("resourceVersion")
            if rv not in (None, "") and str(rv) != old.meta["resourceVersion"]:
                raise conflict(resource, name, "the object has been modified; please apply your changes to the "
                                               "latest version and try again")
            if status_only:
                merged = old.copy()
                old_status = merged.get("status") or {}
                merged["status"] = new.get("status") or {}
                new = merged
                prepare_status_update(info, old_status, new)
            else:
                keep_system_metadata(meta, old.meta)
                if info.has_status:
                    new["status"] = old.copy().get("status", {})
                new["kind"], new["apiVersion"] = info.kind, info.group_version
                apply_defaults(resource, new)
                validate(resource, info.kind, new)
                old_obj = old.obj
                check_update(resource, info.kind, old_obj, new)
                bump_generation(info, old_obj, new)
            return self._update(info, key, old, new, dry_run).copy()

    def mutate(self, resource: str, namespace: str | None, name: str, fn: Callable[[dict], None], *,
               status_only: bool = False, dry_run: bool = False) -> dict:
        info = resource_info(resource)
        with self._lock:
            key = self._key(info, namespace, name)
            old = self._objects[resource].get(key)
            if old is None:
                raise not_found(resource, name)
            work = old.copy()
            fn(work)
            if status_only:
                new = old.copy()
                old_status = new.get("status") or {}
                new["status"] = work.get("status") or {}
                prepare_status_update(info, old_status, new)
            else:
                new = work
                new["metadata"] = new.get("metadata") or {}
                keep_system_metadata(new["metadata"], old.meta)
            return self._update(info, key, old, new, dry_run).copy()

    # -------------------------------------------------------------- internals

    @staticmethod
    def _key(info: ResourceInfo, namespace: str | None, name: str) -> Key:
        return (namespace if info.namespaced else None, name)

    @staticmethod
    def _remove(items: list, fn: Any) -> None:
        try:
            items.remove(fn)
        except ValueError:
            pass

    def _update(self, info: ResourceInfo, key: Key, old: Entry, new: dict, dry_run: bool = False) -> Entry:
        """Commit ``new`` over ``old`` (no-op when unchanged); remove the object when its last finalizer went.

        Like upstream's registry (ShouldDeleteDuringUpdate), an update that empties the finalizers
        of an object being deleted is not stored: the object is removed as it was (one DELETED
        event, no MODIFIED first) and the caller gets ``new`` back. ``dry_run`` stops right before
        the commit and returns ``new`` as an uncommitted entry.
        """
        new_meta = new["metadata"]
        new_meta["resourceVersion"] = old.meta["resourceVersion"]
        drop_empty_meta_fields(new_meta)
        if new == old.obj:
            return old
        if dry_run:
            return Entry(new)
        if new_meta.get("deletionTimestamp") and not new_meta.get("finalizers") and key not in self._awaiting_kubelet:
            self._remove_object(info, key, old)
            return Entry(new)
        return self._commit("MODIFIED", info, key, old, new)

    def _commit(self, type_: str, info: ResourceInfo, key: Key, old: Entry | None, new: dict) -> Entry:
        self._rv += 1
        if type_ == "DELETED":
            new = dict(new, metadata=dict(new["metadata"]))
        new["metadata"]["resourceVersion"] = str(self._rv)
        entry = Entry(new)
        objects = self._objects[info.name]
        if type_ == "DELETED":
            objects.pop(key, None)
        else:
            objects[key] = entry
        self._index_owners(info.name, key, old, None if type_ == "DELETED" else entry)
        event = WatchEvent(type_, info.name, entry, old, self._rv)
        self._history.append(event)
        if len(self._history) > self._history_size:
            self._history_floor = self._history.popleft().rv
        for subscriber in list(self._subscribers):
            try:
                subscriber(event)
            except Exception:  # a broken subscriber must not break writers
                logger.exception("Store subscriber %r failed on a %s event", subscriber, type_)
        for listener in list(self._listeners):
            try:
                listener(type_, entry.copy())
            except Exception:
                logger.exception("Store listener %r failed on a %s event", listener, type_)
        if old is not None:
            old.freeze(info.name)
        entry.freeze(info.name)
        return entry

    def _index_owners(self, resource: str, key: Key, old: Entry | None, new: Entry | None) -> None:
        for entry, add in ((old, False), (new, True)):
            for ref in (entry.meta.get("ownerReferences") or []) if entry else ():
                uid = ref.get("uid")
                if not uid:
                    continue
                if add:
                    self._dependents[uid].add((resource, key))
                else:
                    self._dependents[uid].discard((resource, key))
                    if not self._dependents[uid]:
                        del self._dependents[uid]

    def _history_after(self, rv: int) -> list[WatchEvent]:
        if rv < self._history_floor:
            # upstream's watch cache words: the oldest version it can still start from, in brackets
            raise gone(f"too old resource version: {rv} ({self._history_floor})")
        if not self._history or rv >= self._history[-1].rv:
            return []
        first = self._history[0].rv
        return list(itertools.islice(self._history, max(0, rv + 1 - first), None))


def _parse_rv(resource_version: str) -> int:
    try:
        return int(resource_version or 0)
    except (TypeError, ValueError):
        raise bad_request(f"resourceVersion {resource_version!r} is not a valid resource version; use the "
                          "metadata.resourceVersion of a list or object") from None

