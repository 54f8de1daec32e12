"""Rules of error translation: every API failure becomes one typed error that says what to do."""

from __future__ import annotations

import json

import pytest
import urllib3
from kubernetes.client.exceptions import ApiException

from dask_k8s_backend.kube import errors


def _api_exception(code: int, reason: str, message: str = "m", headers: dict | None = None,
                   details: dict | None = None) -> ApiException:
    exc = ApiException(status=code, reason=reason)
    exc.body = json.dumps({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
                           "reason": reason, "message": message, "details": details or {}})
    exc.headers = headers or {}
    return exc


@pytest.mark.parametrize("code, reason, cls", [
    (404, "NotFound", errors.NotFound), (409, "AlreadyExists", errors.AlreadyExists),
    (409, "Conflict", errors.Conflict), (410, "Expired", errors.Gone), (401, "Unauthorized", errors.Unauthorized),
    (403, "Forbidden", errors.Forbidden), (429, "TooManyRequests", errors.TooManyRequests),
    (500, "InternalError", errors.ServerError), (503, "ServiceUnavailable", errors.ServerError),
    (422, "Invalid", errors.KubernetesApiError),
])
def test_each_status_code_maps_to_its_error_type(code, reason, cls):
    error = errors.translate(_api_exception(code, reason, "server says no"), "create pod p")
    assert type(error) is cls
    assert (error.code, error.reason, error.status["message"]) == (code, reason, "server says no")
    assert "while trying to create pod p" in str(error) and "server says no" in str(error)


def test_already_exists_is_a_conflict():
    assert isinstance(errors.translate(_api_exception(409, "AlreadyExists"), "x"), errors.Conflict)


def test_too_many_requests_carries_retry_after():
    error = errors.translate(_api_exception(429, "TooManyRequests", headers={"Retry-After": "7"}), "list pods")
    assert error.retry_after == 7.0


def test_forbidden_names_the_action_and_the_role_to_grant():
    message = 'pods is forbidden: User "system:serviceaccount:default:dask" cannot create resource "pods" in the namespace "prod"'
    error = errors.translate(_api_exception(403, "Forbidden", message, details={"kind": "pods"}),
                             "create pod dask-exec-1 in namespace prod")
    text = str(error)
    assert "create pod dask-exec-1 in namespace prod" in text and "Role" in text and message in text


def test_connection_refused_becomes_api_unreachable_naming_the_server():
    pool = urllib3.HTTPConnectionPool("10.0.0.9", 6443)
    exc = urllib3.exceptions.MaxRetryError(pool, "/api/v1/pods",
                                           urllib3.exceptions.NewConnectionError(None, "Connection refused"))
    error = errors.translate(exc, "list pods")
    assert isinstance(error, errors.ApiUnreachable)
    assert "10.0.0.9:6443" in str(error) and "master URL" in str(error)


def test_other_exceptions_are_returned_unchanged():
    exc = KeyError("x")
    assert errors.translate(exc, "x") is exc
    typed = errors.NotFound("gone")
    assert errors.translate(typed, "x") is typed


def test_errors_accept_the_message_first_like_the_fakes_build_them():
    error = errors.TooManyRequests("slow down", retry_after=3)
    assert (error.code, error.retry_after, str(error)) == (429, 3, "slow down")
