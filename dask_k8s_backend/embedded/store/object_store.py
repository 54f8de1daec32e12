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
stored. Deletion follows kube-apiserver: finalizers and graceful pod termination keep the object
(with ``deletionTimestamp``) until they are done; removals cascade to dependents through
``ownerReferences`` (background, foreground, orphan) and namespaces delete their content.
Every failure is a :class:`~dask_k8s_backend.embedded.status.StatusError`.
"""

from __future__ import annotations

import base64
import collections
import itertools
import json
import logging
import random
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from ..podstatus import rfc3339
from .listoptions import decode_continue, encode_continue
from dask_k8s_backend.kube.resources import pod_qos_class
from ..status import StatusError, already_exists, bad_request, conflict, gone, not_found
from .selectors import FIELDS, Selector, parse_field_selector, parse_label_selector
from .validation import apply_defaults, check_status_update, check_update, validate

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResourceInfo:
    """What discovery says about one resource (core/v1 unless ``group_version`` names another group)."""

    name: str
    kind: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    has_status: bool = False
    group_version: str = "v1"

    @property
    def group(self) -> str:
        """The API group ("" for core), as RBAC rules and SubjectAccessReviews name it."""
        return self.group_version.rpartition("/")[0]


RESOURCES: dict[str, ResourceInfo] = {
    r.name: r
    for r in (
        ResourceInfo("pods", "Pod", True, ("po",), True),
        ResourceInfo("nodes", "Node", False, ("no",), True),
        ResourceInfo("namespaces", "Namespace", False, ("ns",), True),
        ResourceInfo("events", "Event", True, ("ev",)),
        ResourceInfo("services", "Service", True, ("svc",), True),
        ResourceInfo("secrets", "Secret", True),
        ResourceInfo("configmaps", "ConfigMap", True, ("cm",)),
        ResourceInfo("serviceaccounts", "ServiceAccount", True, ("sa",)),
        ResourceInfo("endpoints", "Endpoints", True, ("ep",)),
        ResourceInfo("persistentvolumeclaims", "PersistentVolumeClaim", True, ("pvc",), True),
        ResourceInfo("resourcequotas", "ResourceQuota", True, ("quota",), True),
        ResourceInfo("limitranges", "LimitRange", True, ("limits",)),
        ResourceInfo("leases", "Lease", True, (), False, "coordination.k8s.io/v1"),
    )
}

INITIAL_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
_PROTECTED_NAMESPACES = ("default", "kube-system", "kube-public")
_NAME_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
_FINISHED_PHASES = ("Succeeded", "Failed")
FOREGROUND = "foregroundDeletion"
ORPHAN = "orphan"

Key = tuple[str | None, str]  # (namespace, name)

# The status an object starts with whatever the client sent (upstream's PrepareForCreate of each
# registry strategy, pkg/registry/core/*/strategy.go); nodes keep theirs, as upstream lets them.
_STATUS_AT_CREATE: dict[str, str] = {
    "pods": '{"phase": "Pending"}',
    "namespaces": '{"phase": "Active"}',
    "services": '{"loadBalancer": {}}',
    "persistentvolumeclaims": '{"phase": "Pending"}',
    "resourcequotas": "{}",
}


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


class Entry:
    """One stored version of an object; never mutated after it is committed.

    Like etcd, the store keeps objects serialized: once a version is committed and its
    subscribers have seen it, :meth:`freeze` keeps only its JSON bytes (what LIST and WATCH
    send anyway) and a small view (metadata plus the fields selectors read), and drops the
    parsed dict, which costs six times the bytes. That is what keeps 10,000 busy pods small.
    ``obj`` of a frozen entry is parsed on each call: hot paths read :attr:`meta` or
    :attr:`view`, which never parse.
    """

    __slots__ = ("_obj", "_json", "_view")

    def __init__(self, obj: dict) -> None:
        self._obj: dict | None = obj
        self._json: bytes | None = None
        self._view: dict | None = None

    @property
    def obj(self) -> dict:
        """The object (read-only; parsed anew on each call once frozen)."""
        obj = self._obj
        return obj if obj is not None else json.loads(self._json)  # type: ignore[arg-type]

    @property
    def view(self) -> dict:
        """Enough of the object for label and field selectors (read-only)."""
        obj = self._obj
        return obj if obj is not None else self._view  # type: ignore[return-value]

    @property
    def meta(self) -> dict:
        """The object's metadata (read-only)."""
        return self.view["metadata"]

    def json(self) -> bytes:
        """The object's JSON bytes, serialized once (racing threads compute the same bytes)."""
        data = self._json
        if data is None:
            data = self._json = _dumps(self._obj)
        return data

    def copy(self) -> dict:
        return json.loads(self.json())

    def freeze(self, resource: str) -> None:
        """Keep the bytes and a selector view, drop the dict."""
        obj = self._obj
        if obj is None:
            return
        self.json()
        view: dict = {"metadata": obj.get("metadata") or {}}
        for parts in _FIELD_PATHS.get(resource, ()):
            value: Any = obj
            for part in parts:
                value = value.get(part) if isinstance(value, dict) else None
            if value is not None:
                node = view
                for part in parts[:-1]:
                    node = node.setdefault(part, {})
                node[parts[-1]] = value
        self._view = view
        self._obj = None


_FIELD_PATHS: dict[str, tuple[tuple[str, ...], ...]] = {
    resource: tuple(tuple(path.split(".")) for path in sorted(paths)) for resource, paths in FIELDS.items()}


class WatchEvent:
    """A committed change: ``old`` is the previous version (None for ADDED)."""

    __slots__ = ("type", "resource", "entry", "old", "rv")

    def __init__(self, type_: str, resource: str, entry: Entry, old: Entry | None, rv: int) -> None:
        self.type = type_
        self.resource = resource
        self.entry = entry
        self.old = old
        self.rv = rv


def resource_info(resource: str) -> ResourceInfo:
    """The resource's description; 404 NotFound for resources the embedded server does not serve."""
    info = RESOURCES.get(resource)
    if info is None:
        raise StatusError(404, "NotFound", f"the server could not find the requested resource ({resource})")
    return info


def key_string(key: Key) -> str:
    """The key's place in list order, as etcd's ``<namespace>/<name>`` (cluster-scoped: ``<name>``)."""
    return key[1] if key[0] is None else f"{key[0]}/{key[1]}"


def _entry_key(entry: Entry) -> Key:
    meta = entry.meta
    return (meta.get("namespace"), meta["name"])


# upstream's messages (apiserver pkg/storage/etcd3/errors.go)
_LIST_EXPIRED = "The resourceVersion for the provided list is too old."
_CONTINUE_EXPIRED = ("The provided continue parameter is too old to display a consistent list result. You can start "
                     "a new list without the continue parameter, or use the continue token in this response to "
                     "retrieve the remainder of the results. Continuing with the provided token results in an "
                     "inconsistent list - objects that were created, modified, or deleted between the time the "
                     "first chunk was returned and now may show up in the list.")


class ObjectStore:
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

    def list_entries(self, resource: str, namespace: str | None = None, *, label_selector: str | None = None,
                     field_selector: str | None = None, limit: int | None = None, continue_token: str | None = None,
                     resource_version: int | None = None) -> tuple[list[Entry], str, str | None, int | None]:
        """Like :meth:`list` but read-only entries, plus the remaining item count when paginated.

        Every page of a list comes from one snapshot, as kube-apiserver serves them: the first at
        ``resource_version`` (None: now), later ones at the version their continue token carries.
        An older version is rebuilt from the current objects and the event history after it
        (objects created, changed or deleted since show as they were), so no page copies the
        store. A version the history no longer covers is 410 Expired; for a continue token the
        answer carries a fresh token that continues at the latest version, as upstream's does.
        Items are in etcd key order (``namespace/name``).
        """
        info = resource_info(resource)
        labels = parse_label_selector(label_selector)
        fields = parse_field_selector(field_selector, resource)
        prefix = f"{namespace}/" if namespace is not None and info.namespaced else ""
        at, start = resource_version, prefix
        if continue_token:
            at, relative = decode_continue(continue_token)
            at, start = (None if at < 0 else at), prefix + relative
        with self._lock:
            at = self._rv if at is None else min(at, self._rv)  # the API server answers 504 for a future version
            changed = self._versions_at(resource, at, start[len(prefix):] if continue_token else None)
            items = self._snapshot_items(resource, changed, prefix, start)
        return _page(items, labels, fields, limit or 0, at, prefix)

    def _versions_at(self, resource: str, rv: int, continue_start: str | None) -> dict[Key, Entry | None]:
        """The version at ``rv`` of each ``resource`` object changed since (None: it did not exist then)."""
        if rv < self._history_floor:
            if continue_start is not None:
                raise gone(_CONTINUE_EXPIRED, encode_continue(-1, continue_start))
            raise gone(_LIST_EXPIRED)
        before: dict[Key, Entry | None] = {}
        for event in self._history_after(rv):
            if event.resource == resource:
                before.setdefault(_entry_key(event.entry), event.old)
        return before

    def _snapshot_items(self, resource: str, changed: dict[Key, Entry | None], prefix: str, start: str
                        ) -> list[tuple[str, Entry]]:
        """``(key string, entry)`` of the snapshot's objects under ``prefix`` from ``start`` on, in key order."""
        objects = self._objects[resource]
        keys: Iterable[Key] = objects.keys() | changed.keys() if changed else objects.keys()
        items = []
        for key in keys:
            text = key_string(key)
            if text < start or not text.startswith(prefix):
                continue
            entry = changed[key] if key in changed else objects[key]
            if entry is not None:
                items.append((text, entry))
        items.sort(key=lambda item: item[0])
        return items

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
        obj = _copy(obj)
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
        new = _copy(obj)
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
                _prepare_status_update(info, old_status, new)
            else:
                _keep_system_metadata(meta, old.meta)
                if info.has_status:
                    new["status"] = old.copy().get("status", {})
                new["kind"], new["apiVersion"] = info.kind, info.group_version
                apply_defaults(resource, new)
                validate(resource, info.kind, new)
                old_obj = old.obj
                check_update(resource, info.kind, old_obj, new)
                _bump_generation(info, old_obj, new)
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
                _prepare_status_update(info, old_status, new)
            else:
                new = work
                new["metadata"] = new.get("metadata") or {}
                _keep_system_metadata(new["metadata"], old.meta)
            return self._update(info, key, old, new, dry_run).copy()

    def delete(self, resource: str, namespace: str | None, name: str, *, grace_period_seconds: int | None = None,
               propagation_policy: str | None = None, dry_run: bool = False) -> dict:
        """DELETE; ``dry_run``: the object as deletion would leave it (marked or as it was), unchanged in the store."""
        info = resource_info(resource)
        with self._lock:
            key = self._key(info, namespace, name)
            entry = self._objects[resource].get(key)
            if entry is None:
                raise not_found(resource, name)
            if resource == "namespaces":
                return self._delete_namespace(key, entry, dry_run)
            if dry_run:
                return self._preview_delete(info, entry, grace_period_seconds, propagation_policy)
            return self._delete(info, key, entry, grace_period_seconds, propagation_policy).copy()

    def delete_collection(self, resource: str, namespace: str | None = None, *, label_selector: str | None = None,
                          field_selector: str | None = None, grace_period_seconds: int | None = None,
                          propagation_policy: str | None = None, dry_run: bool = False) -> list[dict]:
        """DELETE on a collection: every matching object, each as :meth:`delete` would."""
        with self._lock:
            entries, _, _, _ = self.list_entries(resource, namespace, label_selector=label_selector,
                                                 field_selector=field_selector)
            deleted = []
            for entry in entries:
                meta = entry.meta
                try:
                    deleted.append(self.delete(resource, meta.get("namespace"), meta["name"],
                                               grace_period_seconds=grace_period_seconds,
                                               propagation_policy=propagation_policy, dry_run=dry_run))
                except StatusError as e:
                    if e.code != 404:
                        raise
            return deleted

    def finalize_deletion(self, resource: str, namespace: str | None, name: str) -> None:
        info = resource_info(resource)
        with self._lock:
            key = self._key(info, namespace, name)
            self._awaiting_kubelet.discard(key)
            entry = self._objects[resource].get(key)
            if entry is None:
                return
            if not entry.meta.get("finalizers"):
                self._remove_object(info, key, entry)

    def record_event(self, namespace: str, involved: dict, reason: str, message: str,
                     type: str = "Normal", source: str = "kubelet") -> None:
        meta = involved.get("metadata") or {}
        now = rfc3339(self._clock())
        dedup = (namespace, meta.get("uid"), meta.get("name"), reason, message, type, source)
        with self._lock:
            try:
                key = self._event_keys.get(dedup)
                if key is not None and key in self._objects["events"]:
                    def bump(event: dict) -> None:
                        event["count"] = int(event.get("count") or 1) + 1
                        event["lastTimestamp"] = now
                    self.mutate("events", key[0], key[1], bump)
                    return
                event = {
                    "metadata": {"name": f"{meta.get('name', 'object')}.{self._event_suffix()}"},
                    "involvedObject": {"kind": involved.get("kind", "Pod"), "apiVersion": involved.get("apiVersion", "v1"),
                                       "namespace": meta.get("namespace", namespace), "name": meta.get("name"),
                                       "uid": meta.get("uid"), "resourceVersion": meta.get("resourceVersion")},
                    "reason": reason, "message": message, "type": type,
                    "source": {"component": source}, "reportingComponent": source,
                    "firstTimestamp": now, "lastTimestamp": now, "count": 1,
                }
                created = self.create("events", namespace, event)
            except StatusError as e:
                logger.debug("Event %s about %s was not recorded: %s", reason, meta.get("name"), e.message)
                return
            key = (namespace, created["metadata"]["name"])
            self._event_keys[dedup] = key
            self._event_order.append((dedup, key))
            self._trim_events()

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

    def _namespace_for(self, info: ResourceInfo, namespace: str | None, meta: dict) -> str | None:
        if not info.namespaced:
            meta.pop("namespace", None)
            return None
        body_ns = meta.get("namespace")
        if namespace is None:
            namespace = body_ns or "default"
        elif body_ns not in (None, "", namespace):
            raise bad_request("the namespace of the provided object does not match the namespace sent on the "
                              "request")
        meta["namespace"] = namespace
        ns_entry = self._objects["namespaces"].get((None, namespace))
        if ns_entry is None:
            raise not_found("namespaces", namespace)
        if ns_entry.meta.get("deletionTimestamp"):
            raise StatusError(403, "Forbidden", f"unable to create new content in namespace {namespace} because "
                                                "it is being terminated",
                              {"name": namespace, "kind": "namespaces",
                               "causes": [{"reason": "NamespaceTerminating", "field": "metadata.namespace",
                                           "message": f"namespace {namespace} is being terminated"}]})
        return namespace

    def _generate_name(self, resource: str, namespace: str | None, prefix: str) -> str:
        prefix = prefix[:58]
        for _ in range(100):
            name = prefix + "".join(self._random.choice(_NAME_SUFFIX_ALPHABET) for _ in range(5))
            if (namespace, name) not in self._objects[resource]:
                return name
        raise StatusError(500, "AlreadyExists", f"could not generate a unique name from generateName {prefix!r}")

    def _prepare_new(self, info: ResourceInfo, obj: dict, meta: dict, dry_run: bool = False) -> None:
        obj["kind"], obj["apiVersion"] = info.kind, info.group_version
        drop_empty_meta_fields(meta)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = rfc3339(self._clock())
        for field in ("deletionTimestamp", "deletionGracePeriodSeconds", "resourceVersion"):
            meta.pop(field, None)
        meta.pop("generation", None)
        qos = pod_qos_class(obj) if info.name == "pods" else None  # read before the client's status goes, as upstream
        if info.name in _STATUS_AT_CREATE:  # upstream strategies' PrepareForCreate: a client's status is dropped
            obj["status"] = json.loads(_STATUS_AT_CREATE[info.name])
        if qos is not None:
            # kube-apiserver's pod PrepareForCreate: generation 1 and the QoS class, fixed for the pod's life
            meta["generation"] = 1
            obj["status"]["qosClass"] = qos
        if info.name == "services" and obj["spec"].get("type") != "ExternalName":
            if not obj["spec"].get("clusterIP"):
                n = self._next_service_ip
                self._next_service_ip += 0 if dry_run else 1  # a dry run shows the next address, keeps it free
                obj["spec"]["clusterIP"] = f"10.96.{n // 250}.{n % 250 + 1}"
            obj["spec"].setdefault("clusterIPs", [obj["spec"]["clusterIP"]])
        if info.name == "secrets" and obj.get("stringData"):
            data = obj.setdefault("data", {})
            for k, v in obj.pop("stringData").items():
                data[k] = base64.b64encode(str(v).encode()).decode()

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

    def _plan_delete(self, info: ResourceInfo, entry: Entry, grace: int | None,
                     propagation: str | None) -> tuple[str, int]:
        """The first step of deleting ``entry``, decided without changing anything (real and dry-run deletes).

        One of ``("foreground", 0)``, ``("keep", 0)`` (already being deleted), ``("mark", 0)``
        (finalizers wait), ``("graceful", grace)`` (a kubelet stops the pod) or ``("remove", 0)``.
        """
        meta = entry.meta
        if (propagation or "").lower() == "foreground" and self._dependents.get(meta["uid"]):
            return "foreground", 0
        if meta.get("finalizers"):
            return ("keep", 0) if meta.get("deletionTimestamp") else ("mark", 0)
        if info.name == "pods" and self._needs_graceful_stop(entry.view, grace):
            if grace is None:
                grace = int(entry.obj["spec"].get("terminationGracePeriodSeconds", 30))
            current = meta.get("deletionGracePeriodSeconds")
            if meta.get("deletionTimestamp") and current is not None and current <= grace:
                return "keep", 0
            return "graceful", grace
        return "remove", 0

    def _delete(self, info: ResourceInfo, key: Key, entry: Entry, grace: int | None,
                propagation: str | None) -> Entry:
        if (propagation or "").lower() == ORPHAN:
            self._orphan_dependents(entry.meta["uid"])
        step, grace = self._plan_delete(info, entry, grace, propagation)
        if step == "foreground":
            return self._delete_foreground(info, key, entry)
        if step == "keep":
            return entry
        if step == "graceful":
            self._awaiting_kubelet.add(key)
        if step in ("mark", "graceful"):
            return self._mark_deleting(info, key, entry, grace)
        return self._remove_object(info, key, entry)

    def _preview_delete(self, info: ResourceInfo, entry: Entry, grace: int | None, propagation: str | None) -> dict:
        """dryRun=All: what deleting ``entry`` would answer; no cascade, orphaning or commit happens."""
        step, grace = self._plan_delete(info, entry, grace, propagation)
        if step in ("keep", "remove"):
            return entry.copy()
        return self._marked(entry, grace, FOREGROUND if step == "foreground" else None)

    @staticmethod
    def _needs_graceful_stop(pod: dict, grace: int | None) -> bool:
        if grace == 0 or not (pod.get("spec") or {}).get("nodeName"):
            return False
        return (pod.get("status") or {}).get("phase") not in _FINISHED_PHASES

    def _marked(self, entry: Entry, grace: int, finalizer: str | None = None) -> dict:
        """A copy of ``entry`` marked for deletion in ``grace`` seconds (uncommitted)."""
        new = entry.copy()
        meta = new["metadata"]
        if not meta.get("deletionTimestamp") and meta.get("generation", 0) > 0:
            meta["generation"] += 1  # upstream rest.BeforeDelete: the first deletionTimestamp is a new generation
        meta["deletionTimestamp"] = rfc3339(self._clock() + grace)
        meta["deletionGracePeriodSeconds"] = grace
        if finalizer and finalizer not in meta.setdefault("finalizers", []):
            meta["finalizers"].append(finalizer)
        return new

    def _mark_deleting(self, info: ResourceInfo, key: Key, entry: Entry, grace: int,
                       finalizer: str | None = None) -> Entry:
        return self._commit("MODIFIED", info, key, entry, self._marked(entry, grace, finalizer))

    def _delete_foreground(self, info: ResourceInfo, key: Key, entry: Entry) -> Entry:
        entry = self._mark_deleting(info, key, entry, 0, FOREGROUND)
        for resource, dep_key in sorted(self._dependents.get(entry.meta["uid"], ()),
                                        key=lambda d: (d[0], d[1][0] or "", d[1][1])):
            dep = self._objects[resource].get(dep_key)
            if dep is not None:
                self._delete(RESOURCES[resource], dep_key, dep, None, "Foreground")
        return self._finish_foreground(info, key) or entry

    def _finish_foreground(self, info: ResourceInfo, key: Key) -> Entry | None:
        entry = self._objects[info.name].get(key)
        if entry is None or self._dependents.get(entry.meta["uid"]):
            return entry
        new = entry.copy()
        new["metadata"]["finalizers"] = [f for f in new["metadata"].get("finalizers", []) if f != FOREGROUND]
        if not new["metadata"]["finalizers"]:
            del new["metadata"]["finalizers"]
        if info.name == "pods" and self._needs_graceful_stop(new, None):
            self._awaiting_kubelet.add(key)
        return self._update(info, key, entry, new)

    def _orphan_dependents(self, uid: str) -> None:
        for resource, dep_key in list(self._dependents.get(uid, ())):
            dep = self._objects[resource].get(dep_key)
            if dep is None:
                continue
            new = dep.copy()
            new["metadata"]["ownerReferences"] = [r for r in new["metadata"]["ownerReferences"] if r.get("uid") != uid]
            if not new["metadata"]["ownerReferences"]:
                del new["metadata"]["ownerReferences"]
            self._commit("MODIFIED", RESOURCES[resource], dep_key, dep, new)

    def _remove_object(self, info: ResourceInfo, key: Key, entry: Entry) -> Entry:
        self._awaiting_kubelet.discard(key)
        deleted = self._commit("DELETED", info, key, entry, entry.obj)
        self._collect_garbage(entry.meta)
        self._after_removal(key)
        return deleted

    def _collect_garbage(self, owner_meta: dict) -> None:
        """Background cascade: dependents of a removed owner go, unless another of their owners still exists
        (then only the reference to the removed one is dropped, as upstream's garbage collector does);
        owners waiting in foreground advance."""
        uid = owner_meta["uid"]
        for resource, dep_key in sorted(self._dependents.get(uid, ()), key=lambda d: (d[0], d[1][0] or "", d[1][1])):
            dep = self._objects[resource].get(dep_key)
            if dep is None or dep.meta.get("deletionTimestamp"):
                continue
            others = [r for r in dep.meta.get("ownerReferences") or [] if r.get("uid") != uid]
            if any(self._owner_exists(r, dep_key[0]) for r in others):
                new = dep.copy()
                new["metadata"]["ownerReferences"] = [r for r in new["metadata"]["ownerReferences"] if r.get("uid") != uid]
                self._commit("MODIFIED", RESOURCES[resource], dep_key, dep, new)
            else:
                self._delete(RESOURCES[resource], dep_key, dep, None, None)
        for ref in owner_meta.get("ownerReferences") or []:
            self._advance_foreground_owner(ref)

    def _owner_exists(self, ref: dict, namespace: str | None) -> bool:
        """Whether the object an ownerReference names (kind, apiVersion, name, uid) is stored and not going."""
        for resource, info in RESOURCES.items():
            if info.kind == ref.get("kind") and info.group_version == ref.get("apiVersion"):
                entry = self._objects[resource].get((namespace if info.namespaced else None, ref.get("name", "")))
                return entry is not None and entry.meta.get("uid") == ref.get("uid")
        return False

    def _advance_foreground_owner(self, ref: dict) -> None:
        for resource, info in RESOURCES.items():
            if info.kind != ref.get("kind"):
                continue
            for key, entry in list(self._objects[resource].items()):
                meta = entry.meta
                if meta.get("uid") == ref.get("uid") and FOREGROUND in (meta.get("finalizers") or []):
                    self._finish_foreground(info, key)

    def _after_removal(self, key: Key) -> None:
        namespace = key[0]
        if namespace is None:
            return
        ns = self._objects["namespaces"].get((None, namespace))
        if ns is not None and ns.meta.get("deletionTimestamp") and self._namespace_empty(namespace):
            self._remove_object(RESOURCES["namespaces"], (None, namespace), ns)

    def _namespace_empty(self, namespace: str) -> bool:
        return not any(k[0] == namespace for resource, info in RESOURCES.items() if info.namespaced
                       for k in self._objects[resource])

    def _delete_namespace(self, key: Key, entry: Entry, dry_run: bool = False) -> dict:
        name = key[1]
        if name in _PROTECTED_NAMESPACES:
            raise StatusError(403, "Forbidden", f'namespaces "{name}" is forbidden: this namespace may not be '
                                                "deleted", {"name": name, "kind": "namespaces"})
        if entry.meta.get("deletionTimestamp"):
            return entry.copy()
        new = self._marked(entry, 0)
        new["status"]["phase"] = "Terminating"
        if dry_run:
            return new
        return self._terminate_namespace(key, entry, new).copy()

    def _terminate_namespace(self, key: Key, entry: Entry, new: dict) -> Entry:
        """Commit the Terminating namespace, delete its content, remove it once empty."""
        name = key[1]
        marked = self._commit("MODIFIED", RESOURCES["namespaces"], key, entry, new)
        for resource, info in RESOURCES.items():
            if info.namespaced:
                for dep_key, dep in list(self._objects[resource].items()):
                    if dep_key[0] == name and not dep.meta.get("deletionTimestamp"):
                        self._delete(info, dep_key, dep, None, None)
        if self._namespace_empty(name) and key in self._objects["namespaces"]:
            return self._remove_object(RESOURCES["namespaces"], key, self._objects["namespaces"][key])
        return marked

    def _event_suffix(self) -> str:
        # like kube's "<name>.<hex nanoseconds>": names sort in recording order
        self._last_event_ns = max(self._last_event_ns + 1, int(self._clock() * 1e9))
        return f"{self._last_event_ns:x}"

    def _trim_events(self) -> None:
        while len(self._event_order) > self._max_events:
            dedup, key = self._event_order.popleft()
            if self._event_keys.get(dedup) == key:
                del self._event_keys[dedup]
            entry = self._objects["events"].get(key)
            if entry is not None:
                self._remove_object(RESOURCES["events"], key, entry)


def _matches(obj: dict, labels: Selector, fields: Selector) -> bool:
    return labels(obj) and fields(obj)


def _page(items: list[tuple[str, Entry]], labels: Selector, fields: Selector, limit: int, rv: int, prefix: str
          ) -> tuple[list[Entry], str, str | None, int | None]:
    """The matching entries of one page, its continue token and remaining count, as upstream builds them.

    Upstream (apiserver pkg/storage/cacher GetList, continue.go PrepareContinueToken): a token
    whenever objects follow the page's last one, matching or not; ``remainingItemCount`` only
    without selectors (a count of objects that might not match would be wrong).
    """
    selected: list[Entry] = []
    for index, (key, entry) in enumerate(items):
        if not _matches(entry.view, labels, fields):
            continue
        selected.append(entry)
        if limit > 0 and len(selected) == limit:
            if index == len(items) - 1:
                break
            token = encode_continue(rv, key[len(prefix):] + "\x00")
            remaining = len(items) - limit if labels.empty and fields.empty else None
            return selected, str(rv), token, remaining
    return selected, str(rv), None, None


def _copy(obj: Any) -> dict:
    if not isinstance(obj, dict):
        raise bad_request(f"the object must be a JSON object, got {type(obj).__name__}")
    try:
        return json.loads(_dumps(obj))
    except (TypeError, ValueError) as e:
        raise bad_request(f"the object is not valid JSON: {e}") from None


def _keep_system_metadata(meta: dict, old_meta: dict) -> None:
    """Fields clients cannot change through an update."""
    for field in ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "namespace",
                  "name", "generateName", "generation"):
        if field in old_meta:
            meta[field] = old_meta[field]
        else:
            meta.pop(field, None)


def _bump_generation(info: ResourceInfo, old: dict, new: dict) -> None:
    """A pod's spec change is a new generation (upstream pod strategy updatePodGeneration)."""
    if info.name == "pods" and new["metadata"].get("generation") and new.get("spec") != old.get("spec"):
        new["metadata"]["generation"] += 1


# ObjectMeta's omitempty maps and lists: upstream stores and returns no ``annotations: {}``
_OMITTED_WHEN_EMPTY = ("labels", "annotations", "ownerReferences", "finalizers")


def drop_empty_meta_fields(meta: dict) -> None:
    """Drop empty labels, annotations, ownerReferences and finalizers, as Go's omitempty does upstream.

    A client that sends ``annotations: {}`` (``kubectl diff``'s dry-run patch of an object
    created without annotations) otherwise sees a change upstream does not show.
    """
    for field in _OMITTED_WHEN_EMPTY:
        if field in meta and meta[field] in ({}, [], None):
            del meta[field]


def _prepare_status_update(info: ResourceInfo, old_status: dict, new: dict) -> None:
    """A status write keeps what kube-apiserver's pod status strategy keeps: the immutable qosClass.

    A status without ``qosClass`` gets the stored one back (upstream backfills it for kubelets that
    drop it, pkg/registry/core/pod/strategy.go podStatusStrategy.PrepareForUpdate); a different
    value is 422 Invalid (ValidatePodStatusUpdate).
    """
    if info.name != "pods":
        return
    stored = old_status.get("qosClass")
    if not new["status"].get("qosClass") and stored:
        new["status"]["qosClass"] = stored
    check_status_update(info.name, info.kind, old_status, new)


def _parse_rv(resource_version: str) -> int:
    try:
        return int(resource_version or 0)
    except (TypeError, ValueError):
        raise bad_request(f"resourceVersion {resource_version!r} is not a valid resource version; use the "
                          "metadata.resourceVersion of a list or object") from None


def iter_events(events: Iterable[WatchEvent], resource: str) -> Iterable[WatchEvent]:
    """The events of one resource."""
    return (e for e in events if e.resource == resource)
