"""What the API server's refusal of a pod request means: retry later, wait for quota, or the pod's fault.

Why a module of its own: the allocator must tell apart a refusal that waiting cures (throttling with
``Retry-After``, server trouble, a lost connection, a full ResourceQuota) from one that needs the user
to fix the worker settings, and that reading depends on HTTP status codes and on the shape of the
client's exceptions (``.code``, ``.status``, ``.headers``, ``.retry_after``). Kept here, that
knowledge stays out of the pure rules (:mod:`~dask_k8s_backend.backend.allocation.rules`) and the
slow-start policy (:mod:`~dask_k8s_backend.backend.allocation.pacing`), which see only the answers.
"""

from __future__ import annotations

TRANSIENT_CODES = {429, 500, 502, 503, 504}


def status_code(exc: BaseException) -> int | None:
    """The HTTP status of a refusal, from any of the clients' exception shapes; None when there is none."""
    code = getattr(exc, "code", None)
    if code is None:
        code = getattr(exc, "status", None)
        code = getattr(code, "code", code.get("code") if isinstance(code, dict) else code)
    return code if isinstance(code, int) else None


def retry_after(exc: BaseException) -> float | None:
    """Seconds the server asked us to wait (a 429's ``Retry-After``), or None."""
    value = getattr(exc, "retry_after", None)
    if value is None:
        headers = getattr(exc, "headers", None) or {}
        value = headers.get("Retry-After") if isinstance(headers, dict) else None
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def is_quota_exceeded(exc: BaseException) -> bool:
    """A 403 from the ResourceQuota admission: the namespace is full, the pod is fine."""
    return status_code(exc) == 403 and "exceeded quota" in str(exc)


def is_quota_status_unknown(exc: BaseException) -> bool:
    """A 403 from upstream's ResourceQuota admission for a quota whose status the quota controller has not
    filled yet (just created): nothing is wrong with the pod, and the answer changes within moments."""
    return status_code(exc) == 403 and "status unknown for quota" in str(exc)


def is_transient(exc: BaseException) -> bool:
    """Errors worth retrying later (throttling, server trouble, connection loss, a full quota, a quota not yet
    counted), not the pod's fault."""
    code = status_code(exc)
    if not code:
        return True  # unreachable API server (ApiUnreachable has code 0), timeouts
    if is_quota_exceeded(exc) or is_quota_status_unknown(exc):
        return True  # retried when capacity frees or the quota controller has counted; the message says which
    return code in TRANSIENT_CODES


def is_already_exists(exc: BaseException) -> bool:
    """A 409 AlreadyExists: a retried request whose first attempt created the pod (not a failure)."""
    return status_code(exc) == 409 and getattr(exc, "reason", "AlreadyExists") == "AlreadyExists"
