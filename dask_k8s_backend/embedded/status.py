"""Kubernetes ``Status`` errors raised by the embedded object store and served by its API server.

Every failure inside the embedded Kubernetes is a :class:`StatusError`; the API server turns it
into the JSON ``Status`` object a real kube-apiserver sends (kind, apiVersion, status, message,
reason, details, code), so real clients (the official Python client, kubectl) react to it as
they would to a real cluster.
"""

from __future__ import annotations

from typing import Any


class StatusError(Exception):
    """An API failure carrying the fields of a Kubernetes ``metav1.Status``."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details or {}
        self.headers = headers or {}

    def to_status(self) -> dict[str, Any]:
        """The JSON body a kube-apiserver would answer with."""
        status: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            status["details"] = self.details
        return status

    def __repr__(self) -> str:
        return f"StatusError({self.code}, {self.reason!r}, {self.message!r})"


def _group_kind(resource: str) -> dict[str, str]:
    return {"kind": resource}


def not_found(resource: str, name: str) -> StatusError:
    return StatusError(404, "NotFound", f'{resource} "{name}" not found', {"name": name, **_group_kind(resource)})


def already_exists(resource: str, name: str) -> StatusError:
    return StatusError(409, "AlreadyExists", f'{resource} "{name}" already exists', {"name": name, **_group_kind(resource)})


def conflict(resource: str, name: str, message: str) -> StatusError:
    return StatusError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {resource} "{name}": {message}',
        {"name": name, **_group_kind(resource)},
    )


def invalid(kind: str, name: str, causes: list[tuple[str, str]]) -> StatusError:
    """422 Invalid; ``causes`` are (field, message) pairs, e.g. ("metadata.name", "Invalid value: ...")."""
    text = "; ".join(f"{field}: {msg}" for field, msg in causes)
    return StatusError(
        422,
        "Invalid",
        f'{kind} "{name}" is invalid: {text}',
        {
            "name": name,
            "kind": kind,
            "causes": [{"reason": "FieldValueInvalid", "message": msg, "field": field} for field, msg in causes],
        },
    )


def gone(message: str) -> StatusError:
    return StatusError(410, "Expired", message)


def bad_request(message: str) -> StatusError:
    return StatusError(400, "BadRequest", message)


def unsupported_media_type(content_type: str) -> StatusError:
    if content_type.split(";", 1)[0].strip().lower() == "application/apply-patch+yaml":
        return StatusError(415, "UnsupportedMediaType",
                           "server-side apply (application/apply-patch+yaml) is not served by the embedded API "
                           "server: it does not track managedFields. Use client-side `kubectl apply` (the "
                           "default) or a merge/strategic-merge patch.")
    return StatusError(415, "UnsupportedMediaType", f"the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json; got {content_type!r}")


def method_not_allowed(message: str) -> StatusError:
    return StatusError(405, "MethodNotAllowed", message)


def unauthorized() -> StatusError:
    return StatusError(401, "Unauthorized", "Unauthorized")


def forbidden(user: str, verb: str, resource: str, namespace: str | None, subresource: str = "") -> StatusError:
    res = f"{resource}/{subresource}" if subresource else resource
    scope = f' in the namespace "{namespace}"' if namespace else " at the cluster scope"
    return StatusError(
        403,
        "Forbidden",
        f'{res} is forbidden: User "{user}" cannot {verb} resource "{res}" in API group ""{scope}',
        {"kind": resource},
    )


def too_many_requests(retry_after: int) -> StatusError:
    return StatusError(
        429,
        "TooManyRequests",
        "the server has received too many requests and has asked us to try again later",
        {"retryAfterSeconds": retry_after},
        headers={"Retry-After": str(retry_after)},
    )


def service_unavailable(message: str = "the server is currently unable to handle the request") -> StatusError:
    return StatusError(503, "ServiceUnavailable", message)


def unsupported_dry_run(options_kind: str, values: list[str]) -> StatusError:
    """kube-apiserver's answer to a ``dryRun`` other than ``All``: 422 Invalid on the request's options kind.

    ``options_kind`` is CreateOptions, UpdateOptions, PatchOptions or DeleteOptions; the message
    quotes the values as Go's ``%#v`` of a ``[]string`` does.
    """
    shown = "[]string{" + ", ".join(f'"{v}"' for v in values) + "}"
    detail = f'Unsupported value: {shown}: supported values: "All"'
    return StatusError(
        422,
        "Invalid",
        f'{options_kind}.meta.k8s.io "" is invalid: dryRun: {detail}',
        {"group": "meta.k8s.io", "kind": options_kind,
         "causes": [{"reason": "FieldValueNotSupported", "message": detail, "field": "dryRun"}]},
    )
