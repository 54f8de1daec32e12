"""Deleting objects as kube-apiserver does (a mixin of :class:`ObjectStore`).

Finalizers and graceful pod termination keep an object (with ``deletionTimestamp``) until they
are done; removals cascade to dependents through ``ownerReferences`` (background, foreground,
orphan) and namespaces delete their content. This is the one part of the store with a life
cycle of its own (an object can be "being deleted" across many writes), so it lives apart from
create, replace and the versioned commit it builds on.
"""

from __future__ import annotations

from ..podstatus import rfc3339
from ..status import StatusError, not_found
from .entries import Entry
from .resource_table import RESOURCES, Key, ResourceInfo, resource_info

_PROTECTED_NAMESPACES = ("default", "kube-system", "kube-public")
_FINISHED_PHASES = ("Succeeded", "Failed")
FOREGROUND = "foregroundDeletion"
ORPHAN = "orphan"


class Deletion:
    """DELETE, finalizers and garbage collection of :class:`~.object_store.ObjectStore` (uses its commit and state)."""

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
