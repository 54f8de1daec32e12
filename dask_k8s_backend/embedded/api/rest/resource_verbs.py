"""GET, LIST, POST, PUT, PATCH, DELETE, deletecollection and pods/binding on the store, as kube-apiserver answers them.

Each verb is a few store calls and the answer upstream gives (objects and lists written from
the store's cached JSON, a Status for deletions of most resources, a Table when asked).
:class:`ResourceVerbs` is a mixin of :class:`~.handler.ApiHandler`; it uses the handler's
``server``, ``_send`` and :class:`~.request_parsing.RequestParsing`.
"""

from __future__ import annotations

from typing import Any

from ...status import StatusError, conflict, method_not_allowed, unsupported_media_type
from ...store.entries import dumps
from ...store.listoptions import parse_list_options, too_large_resource_version
from ...store.resource_table import ResourceInfo
from ..patch import PATCH_TYPES, apply_patch
from ..tables import table_for
from .request_parsing import media_type_of
from .routes import Route

_RETURNS_OBJECT_ON_DELETE = ("pods", "services", "namespaces", "nodes")


def status_success(info: ResourceInfo, obj: dict) -> dict:
    meta = obj.get("metadata") or {}
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
            "details": {"name": meta.get("name"), "kind": info.name, "uid": meta.get("uid")}}


class ResourceVerbs:
    """The per-verb handlers of one resource request (the route is parsed, the caller authorized)."""

    def _get(self, route: Route) -> None:
        entry = self.server.store.get_entry(route.info.name, route.namespace, route.name)  # type: ignore[arg-type]
        if self._wants_table():
            self._send(200, table_for(route.info, [entry.obj], entry.meta["resourceVersion"], None))
        else:
            self._send(200, entry.json())

    def _list(self, route: Route) -> None:
        args = self.get_query_argument
        options = parse_list_options(lambda name: args(name, None), watch=False)
        at, limit, least = options.list_plan()
        current = int(self.server.store.resource_version)
        if max(at or 0, least) > current:  # one process: nothing to wait for, answer at once
            raise too_large_resource_version(max(at or 0, least), current)
        entries, rv, token, remaining = self.server.store.list_entries(
            route.info.name, route.namespace, label_selector=args("labelSelector", None),
            field_selector=args("fieldSelector", None), limit=limit, continue_token=options.continue_token,
            resource_version=at)
        if self._wants_table():
            table = table_for(route.info, [e.obj for e in entries], rv, token)
            if remaining is not None:  # a Table keeps the list's metadata (upstream rest/table.go)
                table["metadata"]["remainingItemCount"] = remaining
            self._send(200, table)
            return
        meta: dict[str, Any] = {"resourceVersion": rv}
        if token:
            meta["continue"] = token
        if remaining is not None:
            meta["remainingItemCount"] = remaining
        head = (b'{"kind":"' + route.info.kind.encode() + b'List","apiVersion":"' + route.info.group_version.encode()
                + b'","metadata":' + dumps(meta))
        self._send(200, head + b',"items":[' + b",".join(e.json() for e in entries) + b"]}")

    def _create(self, route: Route) -> None:
        if route.info.namespaced and route.namespace is None:
            raise method_not_allowed(f"create {route.info.name} in a namespace: POST "
                                     f"/api/v1/namespaces/<namespace>/{route.info.name}")
        dry_run = self._dry_run()
        body = self._check_body(route, self._body())
        store, admission = self.server.store, self.server.admission if route.info.name == "pods" else None
        if admission is None:
            created = store.create(route.info.name, route.namespace, body, dry_run=dry_run)
        elif dry_run:  # LimitRange and ResourceQuota checked like a real creation; quota usage is not taken
            created = store.create("pods", route.namespace, admission.admit_pod(route.namespace, body), dry_run=True)
        else:
            created = admission.create_pod(route.namespace, body)  # type: ignore[arg-type]
        self._send(201, dumps(created))

    def _replace(self, route: Route) -> None:
        dry_run = self._dry_run()
        body = self._check_body(route, self._body())
        updated = self.server.store.replace(route.info.name, route.namespace, route.name,  # type: ignore[arg-type]
                                            body, status_only=route.sub == "status", dry_run=dry_run)
        self._send(200, dumps(updated))

    def _patch(self, route: Route) -> None:
        content_type = self.request.headers.get("Content-Type", "")
        if media_type_of(content_type) not in PATCH_TYPES:  # before looking the object up, as kube-apiserver does
            raise unsupported_media_type(content_type)
        dry_run = self._dry_run()
        body = self._body()
        store = self.server.store
        for _ in range(10):  # like kube-apiserver's GuaranteedUpdate: retry when a writer came between
            current = store.get(route.info.name, route.namespace, route.name)  # type: ignore[arg-type]
            patched = apply_patch(content_type, current, body)
            if not isinstance(patched.get("metadata"), dict):
                patched["metadata"] = {}
            asked_rv = patched["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]
            if not asked_rv:
                patched["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
            self._check_body(route, patched)
            try:
                updated = store.replace(route.info.name, route.namespace, route.name,  # type: ignore[arg-type]
                                        patched, status_only=route.sub == "status", dry_run=dry_run)
            except StatusError as e:
                if e.code == 409 and e.reason == "Conflict" and not asked_rv:
                    continue
                raise
            self._send(200, dumps(updated))
            return
        raise conflict(route.info.name, route.name or "", "too many concurrent writers; try again")

    def _delete(self, route: Route) -> None:
        options = self._delete_options()
        store = self.server.store
        pre = options.get("preconditions") or {}
        if pre:
            current = store.get(route.info.name, route.namespace, route.name)  # type: ignore[arg-type]
            for field in ("uid", "resourceVersion"):
                if pre.get(field) and pre[field] != current["metadata"].get(field):
                    raise conflict(route.info.name, route.name or "",
                                   f"Precondition failed: {field} in precondition: {pre[field]}, {field} in object "
                                   f"meta: {current['metadata'].get(field)}")
        deleted = store.delete(route.info.name, route.namespace, route.name,  # type: ignore[arg-type]
                               grace_period_seconds=options.get("gracePeriodSeconds"),
                               propagation_policy=options.get("propagationPolicy"), dry_run=options["dryRun"])
        if route.info.name in _RETURNS_OBJECT_ON_DELETE:
            self._send(200, dumps(deleted))
        else:
            self._send(200, status_success(route.info, deleted))

    def _delete_collection(self, route: Route) -> None:
        options = self._delete_options()
        args = self.get_query_argument
        deleted = self.server.store.delete_collection(
            route.info.name, route.namespace, label_selector=args("labelSelector", None),
            field_selector=args("fieldSelector", None), grace_period_seconds=options.get("gracePeriodSeconds"),
            propagation_policy=options.get("propagationPolicy"), dry_run=options["dryRun"])
        self._send(200, {"kind": f"{route.info.kind}List", "apiVersion": route.info.group_version,
                         "metadata": {"resourceVersion": self.server.store.resource_version}, "items": deleted})

    def _bind(self, route: Route) -> None:
        dry_run = self._dry_run()
        body = self._body()
        node = ((body or {}).get("target") or {}).get("name")
        if not node:
            raise StatusError(422, "Invalid", "Binding is invalid: target.name: Required value")

        def assign(pod: dict) -> None:
            current = pod["spec"].get("nodeName")
            if current:
                raise conflict("pods", route.name or "", f"pod {route.name} is already assigned to node \"{current}\"")
            pod["spec"]["nodeName"] = node

        self.server.store.mutate("pods", route.namespace, route.name, assign, dry_run=dry_run)  # type: ignore[arg-type]
        self._send(201, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201})
