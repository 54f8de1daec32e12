"""The HTTP layer of the embedded Kubernetes: kube-apiserver's REST API over the ObjectStore.

:class:`ApiServer` binds 127.0.0.1 (port 0 = a free port) in the caller's thread, then runs a
tornado HTTP/1.1 server (TLS with the embedded CA's certificate by default) on its own event loop
in a daemon thread. Each request flows: bearer-token check (401) -> API Priority and Fairness
response headers -> fault injection (429/503) ->
:func:`parse_path` -> a verb method that calls the store -> JSON bytes (objects and lists are
written from the store's cached per-version JSON). Every failure is a ``StatusError`` answered
as a ``Status`` object with its code, as kube-apiserver does, so the official client and kubectl
work unchanged. Watches (:mod:`.watches`) and ``pods/log?follow`` stream chunked responses.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import random
import re
import socket
import ssl
import threading
import time
import uuid
import weakref
from dataclasses import dataclass
from typing import Any, Mapping

import tornado.httpserver
import tornado.iostream
import tornado.netutil
import tornado.web
import yaml

from ..status import (StatusError, bad_request, conflict, method_not_allowed, unauthorized, unsupported_dry_run,
                     unsupported_media_type)
from ..store.listoptions import parse_list_options, too_large_resource_version
from ..store.entries import dumps as _dumps
from ..store.object_store import ObjectStore
from ..store.resource_table import RESOURCES, ResourceInfo
from ..store.selectors import parse_field_selector, parse_label_selector
from . import authz, discovery, openapi, podlogs, protobuf
from .faults import FaultInjector
from .patch import PATCH_TYPES, apply_patch
from .tables import table_for
from .tls import Credentials
from .watches import WatchStream, error_line

logger = logging.getLogger(__name__)

JSON = "application/json"
_RETURNS_OBJECT_ON_DELETE = ("pods", "services", "namespaces", "nodes")
_PUBLIC_PATHS = ("/healthz", "/livez", "/readyz")
_YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml")
#: kube-apiserver's APF response headers: the FlowSchema and PriorityLevelConfiguration a request was classified to.
FLOW_SCHEMA_HEADER = "X-Kubernetes-PF-FlowSchema-UID"
PRIORITY_LEVEL_HEADER = "X-Kubernetes-PF-PriorityLevel-UID"
FLOWS = ("exempt", "global-default")
_OPTIONS_KIND = {"POST": "CreateOptions", "PUT": "UpdateOptions", "PATCH": "PatchOptions", "DELETE": "DeleteOptions"}


def _media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


@dataclass(frozen=True)
class Route:
    """What a resource URL names: ``GET /api/v1/namespaces/ns/pods/p/log`` -> pods, ns, p, log."""

    info: ResourceInfo
    namespace: str | None
    name: str | None = None
    sub: str | None = None
    watch_path: bool = False


def _not_found_path(path: str) -> StatusError:
    """Upstream's answer for a path it does not serve (the same words and empty details, whatever the path)."""
    logger.debug("No such API path: %s", path)
    return StatusError(404, "NotFound", "the server could not find the requested resource", {})


GROUP_PATHS = {f"/apis/{info.group_version}/": info.group_version for info in RESOURCES.values() if info.group}


def is_resource_path(path: str) -> bool:
    """``/api/v1/...`` or ``/apis/<group>/<version>/...`` of a group whose resources are served."""
    return path.startswith("/api/v1/") or any(path.startswith(prefix) for prefix in GROUP_PATHS)


def parse_path(path: str) -> Route:
    """A ``/api/v1/...`` (or served group's) path as a :class:`Route`; 404 for paths kube-apiserver would not serve."""
    group_version = next((gv for prefix, gv in GROUP_PATHS.items() if path.startswith(prefix)), "v1")
    parts = [p for p in path.split("/") if p][2 if group_version == "v1" else 3:]
    served = {name: info for name, info in RESOURCES.items() if info.group_version == group_version}
    watch = bool(parts) and parts[0] == "watch"
    if watch:
        parts = parts[1:]
    if not parts:
        raise _not_found_path(path)
    if parts[0] == "namespaces" and len(parts) >= 3 and parts[2] in served:
        namespace, rest = parts[1], parts[2:]
        if not served[rest[0]].namespaced:
            raise _not_found_path(path)
    else:
        namespace, rest = None, parts
    if rest[0] not in served or len(rest) > 3:
        raise _not_found_path(path)
    info = served[rest[0]]
    name = rest[1] if len(rest) > 1 else None
    sub = rest[2] if len(rest) > 2 else None
    if name and info.namespaced and namespace is None:
        raise _not_found_path(path)
    if sub not in (None, "status", "log", "binding", "finalize") or (sub == "log" and info.name != "pods"):
        raise _not_found_path(path)
    return Route(info, namespace, name, sub, watch)


def _bool(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "yes")


def _int(value: str | None, name: str) -> int | None:
    if value in (None, ""):
        return None
    try:
        return int(value)  # type: ignore[arg-type]
    except ValueError:
        raise bad_request(f"query parameter {name}={value!r} must be an integer") from None


def flow_of(identity: authz.Identity, path: str) -> str:
    """The upstream default FlowSchema (and priority level of the same name) of a request.

    system:masters (our admin token) and health probes are ``exempt``; other users fall to
    ``global-default`` (upstream's catch-all for authenticated users that no narrower schema matches).
    """
    if identity.rules is None or path in _PUBLIC_PATHS:
        return "exempt"
    return "global-default"


def status_success(info: ResourceInfo, obj: dict) -> dict:
    meta = obj.get("metadata") or {}
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
            "details": {"name": meta.get("name"), "kind": info.name, "uid": meta.get("uid")}}


class ApiHandler(tornado.web.RequestHandler):
    """Every request: authenticate, maybe inject a fault, dispatch on path and verb."""

    SUPPORTED_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")

    def initialize(self, server: "ApiServer") -> None:
        self.server = server
        self.identity = authz.ADMIN
        self._stream: WatchStream | None = None
        self._client_gone = False

    def set_default_headers(self) -> None:
        self.clear_header("Server")
        self.set_header("Content-Type", JSON)
        self.set_header("Cache-Control", "no-cache, private")

    def prepare(self) -> None:
        # answers go out at once: without this, header and body segments wait on delayed ACKs
        stream = getattr(self.request.connection, "stream", None)
        if stream is not None:
            stream.set_nodelay(True)

    def check_xsrf_cookie(self) -> None:  # an API, not a browser form
        pass

    def on_connection_close(self) -> None:
        self._client_gone = True
        if self._stream is not None:
            self._stream.close()

    # --------------------------------------------------------------- plumbing

    def _send_status(self, error: StatusError) -> None:
        if self._finished:
            return
        self.set_status(error.code)
        for key, value in error.headers.items():
            self.set_header(key, value)
        self.set_header("Content-Type", JSON)
        self.finish(_dumps(error.to_status()))

    def _send(self, code: int, body: bytes | dict) -> None:
        self.set_status(code)
        self.finish(body if isinstance(body, bytes) else _dumps(body))

    def _body(self) -> Any:
        if not self.request.body:
            raise bad_request("the request body is empty; send a JSON object")
        media_type = _media_type(self.request.headers.get("Content-Type", ""))
        if self.request.method != "PATCH":  # a patch's media type is its patch type: _patch checked it
            if media_type == protobuf.MEDIA_TYPE:
                return protobuf.decode(self.request.body)  # kubectl create's core/v1 kinds; other kinds: 415
            if media_type not in ("", JSON, *_YAML_TYPES):
                raise StatusError(415, "UnsupportedMediaType",
                                  "the body of the request was in an unknown format - accepted media types include: "
                                  f"application/json, application/yaml; got {media_type!r}")
        try:
            if media_type in _YAML_TYPES:
                return yaml.safe_load(self.request.body)
            return json.loads(self.request.body)
        except (ValueError, UnicodeDecodeError, yaml.YAMLError) as e:
            raise bad_request(f"couldn't get version/kind; json parse error: {e}") from None

    def _classify(self) -> None:
        """Tell the client which flow this request was classified to, as kube-apiserver's APF filter does.

        Upstream sets the headers on every authenticated request; clients (controller-runtime, Flux,
        ours with ``api.rate-limit: auto``) read them as "this server does its own flow control" and
        drop their fixed client-side rate. Here the event loop serves requests one at a time in
        arrival order, so a burst queues and never overloads the server into failing.
        """
        flow = flow_of(self.identity, self.request.path)
        self.set_header(FLOW_SCHEMA_HEADER, self.server.flow_schema_uids[flow])
        self.set_header(PRIORITY_LEVEL_HEADER, self.server.priority_level_uids[flow])

    def _authenticate(self) -> None:
        token = self.server.token
        if token is None or self.request.path in _PUBLIC_PATHS:
            return
        header = self.request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            raise unauthorized()
        if hmac.compare_digest(header[7:].strip().encode(), token.encode()):
            return
        identity = self.server.identities.authenticate(header[7:].strip()) if self.server.identities else None
        if identity is None:
            raise unauthorized()
        self.identity = identity  # a restricted user (embedded/authz.py)

    async def _handle(self) -> None:
        started = time.perf_counter()
        try:
            self._authenticate()
            self._classify()
            if self.request.path not in _PUBLIC_PATHS and self.server.faults is not None:
                injected = self.server.faults.request_failure()
                if injected is not None:
                    raise injected
            await self._dispatch()
        except StatusError as e:
            self._send_status(e)
        except tornado.iostream.StreamClosedError:
            pass
        except Exception:
            logger.exception("Embedded API server failed on %s %s", self.request.method, self.request.path)
            self._send_status(StatusError(500, "InternalError", "an error on the server has prevented the request "
                                                                "from succeeding; see the embedded server's log"))
        finally:
            logger.debug("%s %s -> %s in %.1f ms", self.request.method, self.request.uri, self.get_status(),
                         (time.perf_counter() - started) * 1000)

    get = post = put = patch = delete = _handle  # type: ignore[assignment]

    async def _dispatch(self) -> None:
        path = self.request.path.rstrip("/") or "/"
        method = self.request.method
        if is_resource_path(path):
            await self._resource(parse_path(path), method)
            return
        if path.startswith("/apis/authorization.k8s.io/v1/") and method == "POST":
            review = self._body()  # kubectl's `auth can-i` sends protobuf: _body decodes it
            resource = path.rsplit("/", 1)[-1]
            if resource == authz.SUBJECT_REVIEW_RESOURCE:  # about another user: its own rules
                self._send(201, authz.subject_access_review(self.identity, self.server.identities, review))
                return
            if resource == authz.REVIEW_RESOURCE:  # validated as upstream does, then the caller's rules (admin: all)
                self._send(201, authz.access_review(self.identity, review if isinstance(review, dict) else {}))
                return
            if resource == authz.RULES_REVIEW_RESOURCE and self.identity.rules is not None:
                self._send(201, authz.rules_review(self.identity, review if isinstance(review, dict) else {}))
                return
            self._send(201, discovery.access_review(review if isinstance(review, dict) else {}))  # the admin's rules
            return
        if path == discovery.SELF_SUBJECT_REVIEW_PATH and method == "POST":  # kubectl auth whoami
            self._send(201, discovery.self_subject_review(self.identity.name, list(self.identity.groups)))
            return
        if method != "GET":
            if path.startswith(("/api/", "/apis/")):  # an API path we do not serve: upstream answers 404
                raise _not_found_path(path)
            raise method_not_allowed(f"the server does not allow this method on the requested resource ({path})")
        self._non_resource(path)

    def _non_resource(self, path: str) -> None:
        server_address = f"127.0.0.1:{self.server.port}"
        documents: dict[str, Any] = {
            "/version": discovery.KUBE_VERSION, "/api": discovery.api_versions(server_address),
            "/api/v1": discovery.core_v1_resources(), "/apis": discovery.api_groups(),
            "/apis/authorization.k8s.io/v1": discovery.authz_resources(),
            f"/apis/{discovery.AUTHN_GROUP}/v1": discovery.authn_resources(),
            **discovery.served_group_documents(),
        }
        if path in documents:
            self._send(200, documents[path])
        elif path == "/openapi/v3":
            self._send(200, openapi.root_document())
        elif path == "/openapi/v3/api/v1":
            self._send(200, openapi.core_v1_document())
        elif path == "/openapi/v2":
            self._send_openapi_v2()
        elif path in _PUBLIC_PATHS:
            self.set_header("Content-Type", "text/plain; charset=utf-8")
            self._send(200, b"ok")
        elif path == "/":
            self._send(200, {"paths": sorted(["/api", "/api/v1", "/apis", "/version", "/healthz", "/livez",
                                              "/readyz", "/openapi/v2", "/openapi/v3"])})
        else:
            raise _not_found_path(path)

    def _send_openapi_v2(self) -> None:
        """kubectl 1.27 reads ``/openapi/v2`` only as protobuf (to learn that fieldValidation is supported)."""
        if "protobuf" in self.request.headers.get("Accept", ""):
            self.set_header("Content-Type", openapi.V2_PROTOBUF_MEDIA_TYPE)
            self._send(200, openapi.v2_protobuf_document())
        else:
            self._send(200, openapi.v2_json_document())

    # -------------------------------------------------------------- resources

    async def _resource(self, route: Route, method: str) -> None:
        if self.identity.rules is not None:
            watch = route.watch_path or _bool(self.get_query_argument("watch", None))
            verb = "get" if route.sub == "log" else authz.request_verb(method, has_name=route.name is not None, watch=watch)
            authz.check(self.identity, verb, route.info.name, route.sub or "", route.namespace, name=route.name,
                        api_group=route.info.group)
        if route.name is None:
            if method == "GET":
                if route.watch_path or _bool(self.get_query_argument("watch", None)):
                    await self._watch(route)
                else:
                    self._list(route)
            elif method == "POST":
                self._create(route)
            elif method == "DELETE":
                self._delete_collection(route)
            else:
                raise method_not_allowed(f"{method} is not supported on the collection {route.info.name}")
        elif route.sub == "log":
            await self._pod_log(route)
        elif route.sub == "binding" and method == "POST":
            self._bind(route)
        elif method == "GET":
            self._get(route)
        elif method == "PUT":
            self._replace(route)
        elif method == "PATCH":
            self._patch(route)
        elif method == "DELETE" and route.sub is None:
            self._delete(route)
        else:
            raise method_not_allowed(f"{method} is not supported on {route.info.name}/{route.sub or ''}")

    def _dry_run(self, options: dict | None = None) -> bool:
        """Whether the write is ``dryRun=All`` (query, or a DeleteOptions body); 422 for any other value.

        kube-apiserver validates the request options before reading the object, so a bad value
        fails the request whatever its body.
        """
        values = self.get_query_arguments("dryRun")
        if options is not None and options.get("dryRun") is not None:
            body_values = options["dryRun"]
            values = [str(v) for v in body_values] if isinstance(body_values, list) else [str(body_values)]
        if any(v != "All" for v in values):
            raise unsupported_dry_run(_OPTIONS_KIND.get(self.request.method, "CreateOptions"), values)
        return bool(values)

    def _wants_table(self) -> bool:
        return "as=Table" in self.request.headers.get("Accept", "")

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
                + b'","metadata":' + _dumps(meta))
        self._send(200, head + b',"items":[' + b",".join(e.json() for e in entries) + b"]}")

    def _check_body(self, route: Route, body: Any) -> dict:
        if not isinstance(body, dict):
            raise bad_request(f"the request body must be a JSON object describing a {route.info.kind}")
        if body.get("kind") not in (None, "", route.info.kind):
            raise bad_request(f"the kind of the object ({body.get('kind')}) does not match the resource "
                              f"{route.info.name} (kind {route.info.kind}) of the request")
        if body.get("apiVersion") not in (None, "", route.info.group_version):
            raise bad_request(f"the API version in the data ({body.get('apiVersion')}) does not match the expected "
                              f"API version ({route.info.group_version})")
        unknown = openapi.unknown_fields(route.info.name, body)
        if unknown:
            mode = (self.get_query_argument("fieldValidation", "") or "Warn").lower()
            if mode == "strict":
                raise bad_request("strict decoding error: " + ", ".join(f'unknown field "{f}"' for f in unknown))
            if mode == "warn":
                for field in unknown:
                    self.add_header("Warning", f'299 - "unknown field \\"{field}\\""')
        return body

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
        self._send(201, _dumps(created))

    def _replace(self, route: Route) -> None:
        dry_run = self._dry_run()
        body = self._check_body(route, self._body())
        updated = self.server.store.replace(route.info.name, route.namespace, route.name,  # type: ignore[arg-type]
                                            body, status_only=route.sub == "status", dry_run=dry_run)
        self._send(200, _dumps(updated))

    def _patch(self, route: Route) -> None:
        content_type = self.request.headers.get("Content-Type", "")
        if _media_type(content_type) not in PATCH_TYPES:  # before looking the object up, as kube-apiserver does
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
            self._send(200, _dumps(updated))
            return
        raise conflict(route.info.name, route.name or "", "too many concurrent writers; try again")

    def _delete_options(self) -> dict:
        options: dict[str, Any] = {}
        if self.request.body:
            body = self._body()
            if isinstance(body, dict):
                options = body
        grace = _int(self.get_query_argument("gracePeriodSeconds", None), "gracePeriodSeconds")
        if grace is not None:
            options["gracePeriodSeconds"] = grace
        policy = self.get_query_argument("propagationPolicy", None)
        if policy:
            options["propagationPolicy"] = policy
        options["dryRun"] = self._dry_run(options)
        if options.get("orphanDependents") is True and not options.get("propagationPolicy"):
            options["propagationPolicy"] = "Orphan"
        policy = options.get("propagationPolicy")
        if policy not in (None, "Orphan", "Background", "Foreground"):
            raise StatusError(422, "Invalid", f'propagationPolicy: Unsupported value: "{policy}": supported values: '
                                              '"Foreground", "Background", "Orphan"')
        return options

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
            self._send(200, _dumps(deleted))
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

    # ------------------------------------------------------------------ watch

    async def _watch(self, route: Route) -> None:
        args = self.get_query_argument
        labels = parse_label_selector(args("labelSelector", None))
        fields = parse_field_selector(args("fieldSelector", None), route.info.name)
        options = parse_list_options(lambda name: args(name, None), watch=True)
        timeout = _int(args("timeoutSeconds", None), "timeoutSeconds") or self.server.watch_timeout()
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
        previous = _bool(args("previous", None))
        path = podlogs.resolve_log(pod, container, previous, self.server.kubelets)
        data, offset = podlogs.read_tail(path, _int(args("tailLines", None), "tailLines"),
                                         _int(args("limitBytes", None), "limitBytes"))
        self.set_header("Content-Type", "text/plain")
        if not _bool(args("follow", None)) or previous:
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
