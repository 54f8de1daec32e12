"""Typed Kubernetes API errors, and the one function that produces them.

Data flow: the official client raises ``kubernetes.client.ApiException`` (an HTTP answer) or a
urllib3 error (no answer); :func:`translate` turns either into a :class:`KubernetesApiError`
subclass carrying the server's ``Status`` (code, reason, message) plus a sentence saying what to
do next. The rest of the code catches ``NotFound``/``Conflict``/``Gone``/..., never status codes.
Messages never contain tokens: only the server's Status message and our own text are used.
"""

from __future__ import annotations

import json
import logging
from typing import Any

logger = logging.getLogger(__name__)


class KubernetesApiError(Exception):
    """A failed Kubernetes API call: the server's Status plus advice."""

    code: int = 0
    reason: str = ""

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        reason: str | None = None,
        status: dict[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if reason is not None:
            self.reason = reason
        self.status: dict[str, Any] = status or {}
        self.retry_after = retry_after


class NotFound(KubernetesApiError):
    """404: the object (or its namespace) does not exist."""

    code, reason = 404, "NotFound"


class Conflict(KubernetesApiError):
    """409: the object changed since it was read (stale resourceVersion), or the name is taken."""

    code, reason = 409, "Conflict"


class AlreadyExists(Conflict):
    """409 AlreadyExists: an object of that name exists already."""

    code, reason = 409, "AlreadyExists"


class Gone(KubernetesApiError):
    """410: the resourceVersion is too old (compacted); list again and watch from the new one."""

    code, reason = 410, "Expired"


class Unauthorized(KubernetesApiError):
    """401: the credentials were refused (a bad or expired token, a wrong client certificate)."""

    code, reason = 401, "Unauthorized"


class Forbidden(KubernetesApiError):
    """403: the identity may not do this (RBAC), or admission refused it (e.g. an exceeded quota)."""

    code, reason = 403, "Forbidden"


class TooManyRequests(KubernetesApiError):
    """429: the API server asks to slow down; ``retry_after`` holds its Retry-After, if any."""

    code, reason = 429, "TooManyRequests"


class ServerError(KubernetesApiError):
    """5xx: the API server failed to answer the request."""

    code, reason = 500, "InternalError"


class ApiUnreachable(KubernetesApiError):
    """No answer at all: connection refused or reset, DNS, TLS verification or a timeout."""

    code, reason = 0, "Unreachable"


_BY_CODE: dict[int, type[KubernetesApiError]] = {
    401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict, 410: Gone, 429: TooManyRequests,
}


def _status_of(exc: Any) -> dict[str, Any]:
    """The Status object in an ApiException's body, or {} when the body is not one."""
    body = getattr(exc, "body", None)
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if not body:
        return {}
    try:
        status = json.loads(body)
    except ValueError:
        return {}
    return status if isinstance(status, dict) else {}


def _retry_after(headers: Any) -> float | None:
    value = headers.get("Retry-After") if headers else None
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _advice(cls: type[KubernetesApiError], status: dict[str, Any], action: str) -> str:
    """What the user should do about this kind of failure."""
    if cls is Unauthorized:
        return ("The API server rejected our credentials: check k8s-backend.authenticate.oauth-token / "
                "oauth-token-file or the kubeconfig user (the token may have expired).")
    if cls is Forbidden and "exceeded quota" in str(status.get("message", "")):
        return ("The namespace's ResourceQuota has no room for this pod: wait for capacity to free, ask for fewer "
                "or smaller workers, or have the quota raised.")
    if cls is Forbidden:
        details = status.get("details") or {}
        kind = details.get("kind") or "the resource"
        return (f"Our service account or user may not {action} ({kind}); a Role bound to it must grant "
                "that verb on that resource in that namespace (see deploy/ for RBAC manifests).")
    if cls is TooManyRequests:
        return "The API server is throttling us; lower k8s-backend.api.qps or retry later."
    if cls is ServerError:
        return "The API server failed; it is retried automatically, check the API server if it persists."
    if cls is Gone:
        return "The resourceVersion is too old; list again and watch from the new one."
    return ""


def _from_api_exception(exc: Any, action: str) -> KubernetesApiError:
    code = int(getattr(exc, "status", 0) or 0)
    status = _status_of(exc)
    reason = status.get("reason") or getattr(exc, "reason", None) or ""
    cls = _BY_CODE.get(code) or (ServerError if code >= 500 else KubernetesApiError)
    if code == 409 and reason == "AlreadyExists":
        cls = AlreadyExists
    server_message = status.get("message") or str(reason or "no message")
    text = f"Kubernetes API error while trying to {action}: {code} {reason}: {server_message}."
    advice = _advice(cls, status, action)
    if advice:
        text = f"{text} {advice}"
    return cls(text, code=code, reason=str(reason) or None, status=status,
               retry_after=_retry_after(getattr(exc, "headers", None)))


def _from_connection_error(exc: BaseException, action: str) -> ApiUnreachable:
    pool = getattr(exc, "pool", None)
    url = f"{pool.scheme}://{pool.host}:{pool.port}" if getattr(pool, "host", None) else None
    where = f"the API server at {url}" if url else "the API server"
    text = (f"Could not reach {where} while trying to {action} ({type(exc).__name__}: {_short(exc)}). "
            "Check the master URL, that the API server is running and that this machine can reach it.")
    return ApiUnreachable(text, status={})


def _short(exc: BaseException) -> str:
    """A connection error's text without urllib3's long nested repr."""
    reason = getattr(exc, "reason", None)
    return str(reason if reason is not None else exc)[:300]


def translate(exc: BaseException, action: str = "call the Kubernetes API") -> BaseException:
    """Turn an ApiException or urllib3 error into a :class:`KubernetesApiError`.

    ``action`` completes "while trying to ..." (e.g. "create pod dask-exec-1 in namespace
    default"). Exceptions that are neither are returned unchanged so callers can re-raise them.
    """
    if isinstance(exc, KubernetesApiError):
        return exc
    from kubernetes.client.exceptions import ApiException
    import urllib3.exceptions as u3

    if isinstance(exc, ApiException):
        if not getattr(exc, "status", None):
            return _from_connection_error(exc, action)
        return _from_api_exception(exc, action)
    if isinstance(exc, (u3.HTTPError, ConnectionError, TimeoutError)):
        return _from_connection_error(exc, action)
    return exc
