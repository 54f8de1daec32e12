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
        metadata: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details or {}
        self._empty_details_shown = details is not None  # upstream sends "details": {} on some answers
        self.headers = headers or {}
        self.metadata = metadata or {}  # the Status's ListMeta, e.g. a fresh ``continue`` on 410

    def to_status(self) -> dict[str, Any]:
        """The JSON body a kube-apiserver would answer with."""
        status: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": dict(self.metadata),
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
        }
        if self.details or self._empty_details_shown:
            status["details"] = self.details
        status["code"] = self.code  # after details, in metav1.Status's field order
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


# field.ErrorType of a cause, read from the start of its message (k8s.io/apimachinery/pkg/util/validation/field)
_CAUSE_TYPES = (("Required value", "FieldValueRequired"), ("Invalid value", "FieldValueInvalid"),
                ("Unsupported value", "FieldValueNotSupported"), ("Duplicate value", "FieldValueDuplicate"),
                ("Forbidden", "FieldValueForbidden"), ("Too long", "FieldValueTooLong"),
                ("Too many", "FieldValueTooMany"), ("Not found", "FieldValueNotFound"))


def _cause_type(message: str) -> str:
    return next((t for prefix, t in _CAUSE_TYPES if message.startswith(prefix)), "FieldValueInvalid")


def invalid(kind: str, name: str, causes: list[tuple[str, str]], group: str = "") -> StatusError:
    """422 Invalid; ``causes`` are (field, message) pairs, e.g. ("metadata.name", "Invalid value: ...").

    Shaped as upstream's ``apierrors.NewInvalid``: the message aggregates the field errors (one as
    is, several as ``[a, b]``, duplicates once), ``details`` has the group, kind, the name when
    there is one, and one typed cause per error.
    """
    errors = list(dict.fromkeys(f"{field}: {msg}" for field, msg in causes))
    text = errors[0] if len(errors) == 1 else "[" + ", ".join(errors) + "]"
    qualified = f"{kind}.{group}" if group else kind
    details: dict[str, Any] = {"name": name, "group": group, "kind": kind}
    details = {k: v for k, v in details.items() if v}
    details["causes"] = [{"reason": _cause_type(msg), "message": msg, "field": field} for field, msg in causes]
    return StatusError(422, "Invalid", f'{qualified} "{name}" is invalid: {text}', details)


def gone(message: str, continue_token: str | None = None) -> StatusError:
    """410 Expired; ``continue_token``: the Status's ``metadata.continue`` (an inconsistent continuation)."""
    return StatusError(410, "Expired", message, metadata={"continue": continue_token} if continue_token else None)


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


def forbidden(user: str, verb: str, resource: str, namespace: str | None, subresource: str = "",
              api_group: str = "", name: str | None = None) -> StatusError:
    """kube-apiserver's 403 for an authorization denial (responsewriters.forbiddenMessage + errors.NewForbidden).

    The object named first is the group-qualified resource without the subresource
    (``pods "x"``, ``subjectaccessreviews.authorization.k8s.io``); the sentence names the full one.
    """
    res = f"{resource}/{subresource}" if subresource else resource
    scope = f' in the namespace "{namespace}"' if namespace else " at the cluster scope"
    qualified = f"{resource}.{api_group}" if api_group else resource
    subject = f'{qualified} "{name}"' if name else qualified
    details = {**({"name": name} if name else {}), **({"group": api_group} if api_group else {}), "kind": resource}
    return StatusError(
        403,
        "Forbidden",
        f'{subject} is forbidden: User "{user}" cannot {verb} resource "{res}" in API group "{api_group}"{scope}',
        details,
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
