"""Every request of the embedded API server: authenticate, classify, maybe fail on purpose, dispatch.

Each request flows: bearer-token check (401) -> API Priority and Fairness response headers ->
fault injection (429/503) -> :func:`~.routes.parse_path` -> a verb -> JSON bytes. Every failure
is a ``StatusError`` answered as a ``Status`` object with its code, as kube-apiserver does.
Non-resource paths (discovery, OpenAPI, health, access reviews) are answered here too; resource
verbs come from the mixins :class:`~.resource_verbs.ResourceVerbs` and
:class:`~.streaming.Streaming`.
"""

from __future__ import annotations

import hmac
import logging
import time
from typing import Any

import tornado.iostream
import tornado.web

from ...status import StatusError, method_not_allowed, unauthorized
from ...store.entries import dumps
from .. import authz, discovery, openapi
from ..watches import WatchStream
from .flow_control import FLOW_SCHEMA_HEADER, PRIORITY_LEVEL_HEADER, flow_of
from .request_parsing import JSON, RequestParsing, query_bool
from .resource_verbs import ResourceVerbs
from .routes import PUBLIC_PATHS, Route, is_resource_path, not_found_path, parse_path
from .streaming import Streaming

logger = logging.getLogger(__name__)


class ApiHandler(ResourceVerbs, Streaming, RequestParsing, tornado.web.RequestHandler):
    """Every request: authenticate, maybe inject a fault, dispatch on path and verb."""

    SUPPORTED_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")

    def initialize(self, server: Any) -> None:
        # the ApiServer (..apiserver) that serves this handler; not imported: it imports this module
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
        self.finish(dumps(error.to_status()))

    def _send(self, code: int, body: bytes | dict) -> None:
        self.set_status(code)
        self.finish(body if isinstance(body, bytes) else dumps(body))

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
        if token is None or self.request.path in PUBLIC_PATHS:
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
            if self.request.path not in PUBLIC_PATHS and self.server.faults is not None:
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
                raise not_found_path(path)
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
        elif path in PUBLIC_PATHS:
            self.set_header("Content-Type", "text/plain; charset=utf-8")
            self._send(200, b"ok")
        elif path == "/":
            self._send(200, {"paths": sorted(["/api", "/api/v1", "/apis", "/version", "/healthz", "/livez",
                                              "/readyz", "/openapi/v2", "/openapi/v3"])})
        else:
            raise not_found_path(path)

    def _send_openapi_v2(self) -> None:
        """kubectl 1.27 reads ``/openapi/v2`` only as protobuf (to learn that fieldValidation is supported)."""
        if "protobuf" in self.request.headers.get("Accept", ""):
            self.set_header("Content-Type", openapi.V2_PROTOBUF_MEDIA_TYPE)
            self._send(200, openapi.v2_protobuf_document())
        else:
            self._send(200, openapi.v2_json_document())

    async def _resource(self, route: Route, method: str) -> None:
        if self.identity.rules is not None:
            watch = route.watch_path or query_bool(self.get_query_argument("watch", None))
            verb = "get" if route.sub == "log" else authz.request_verb(method, has_name=route.name is not None, watch=watch)
            authz.check(self.identity, verb, route.info.name, route.sub or "", route.namespace, name=route.name,
                        api_group=route.info.group)
        if route.name is None:
            if method == "GET":
                if route.watch_path or query_bool(self.get_query_argument("watch", None)):
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
