"""What a request asks for beyond its path: body, dryRun, DeleteOptions, fieldValidation, Table output.

Upstream validates a request's options before it reads or writes the object, with its own
messages (415, 422, 400 strict decoding); kept together here so every verb parses them the same
way. :class:`RequestParsing` is a mixin of :class:`~.handler.ApiHandler` (tornado's request and
query arguments).
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from ...status import StatusError, bad_request, unsupported_dry_run
from .. import openapi, protobuf
from .routes import Route

JSON = "application/json"
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml")
_OPTIONS_KIND = {"POST": "CreateOptions", "PUT": "UpdateOptions", "PATCH": "PatchOptions", "DELETE": "DeleteOptions"}


def media_type_of(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def query_bool(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "yes")


def query_int(value: str | None, name: str) -> int | None:
    if value in (None, ""):
        return None
    try:
        return int(value)  # type: ignore[arg-type]
    except ValueError:
        raise bad_request(f"query parameter {name}={value!r} must be an integer") from None


class RequestParsing:
    """Reads the body and the request options of :class:`~.handler.ApiHandler`'s current request."""

    def _body(self) -> Any:
        if not self.request.body:
            raise bad_request("the request body is empty; send a JSON object")
        media_type = media_type_of(self.request.headers.get("Content-Type", ""))
        if self.request.method != "PATCH":  # a patch's media type is its patch type: _patch checked it
            if media_type == protobuf.MEDIA_TYPE:
                return protobuf.decode(self.request.body)  # kubectl create's core/v1 kinds; other kinds: 415
            if media_type not in ("", JSON, *YAML_TYPES):
                raise StatusError(415, "UnsupportedMediaType",
                                  "the body of the request was in an unknown format - accepted media types include: "
                                  f"application/json, application/yaml; got {media_type!r}")
        try:
            if media_type in YAML_TYPES:
                return yaml.safe_load(self.request.body)
            return json.loads(self.request.body)
        except (ValueError, UnicodeDecodeError, yaml.YAMLError) as e:
            raise bad_request(f"couldn't get version/kind; json parse error: {e}") from None

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

    def _delete_options(self) -> dict:
        options: dict[str, Any] = {}
        if self.request.body:
            body = self._body()
            if isinstance(body, dict):
                options = body
        grace = query_int(self.get_query_argument("gracePeriodSeconds", None), "gracePeriodSeconds")
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
