"""Embedded RBAC (dask_k8s_backend.embedded.api.authz): rules, verbs, SelfSubjectAccessReview answers."""

from __future__ import annotations

import pytest

from dask_k8s_backend.embedded.api.authz import Identities, PolicyRule, access_review, authorize, check, request_verb
from dask_k8s_backend.embedded.status import StatusError

POD_READER = [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"], "namespaces": ["dask"]}]


def test_admin_token_is_unrestricted_and_restricted_tokens_get_their_rules():
    ids = Identities()
    token = ids.add_user("reader", POD_READER)
    admin, reader = ids.authenticate(ids.admin_token), ids.authenticate(token)
    assert authorize(admin, "deletecollection", "pods", namespace="anything")
    assert authorize(reader, "list", "pods", namespace="dask")
    assert not authorize(reader, "create", "pods", namespace="dask")
    assert not authorize(reader, "list", "pods", namespace="default")
    assert not authorize(reader, "get", "pods", "log", namespace="dask")  # a subresource needs its own rule
    assert ids.authenticate("not-a-token") is None and ids.authenticate(None) is None
    assert token not in repr(ids) and ids.admin_token not in repr(ids)


def test_wildcards_and_subresource_rules():
    ids = Identities()
    ids.add_user("ops", [{"resources": ["pods/*"], "verbs": ["*"]}, {"apiGroups": ["*"], "resources": ["*"], "verbs": ["list"]}])
    ops = ids.authenticate(ids.token_for("ops"))
    assert authorize(ops, "get", "pods", "log", namespace="x")
    assert not authorize(ops, "create", "pods", namespace="x")
    assert authorize(ops, "list", "deployments", namespace="x", api_group="apps")


def test_http_methods_map_to_rbac_verbs():
    assert request_verb("GET", has_name=True) == "get"
    assert request_verb("GET", has_name=False) == "list"
    assert request_verb("GET", has_name=False, watch=True) == "watch"
    assert request_verb("DELETE", has_name=False) == "deletecollection"
    assert request_verb("PATCH", has_name=True) == "patch"


def test_denial_is_kube_apiservers_403():
    ids = Identities()
    reader = ids.authenticate(ids.add_user("reader", POD_READER))
    with pytest.raises(StatusError) as info:
        check(reader, "create", "pods", namespace="dask")
    assert info.value.code == 403 and info.value.reason == "Forbidden"
    assert info.value.message == 'pods is forbidden: User "reader" cannot create resource "pods" in API group "" in the namespace "dask"'


def test_a_denial_names_the_group_qualified_resource_and_object_first_as_upstream_does():
    ids = Identities()
    reader = ids.authenticate(ids.add_user("reader", POD_READER))
    with pytest.raises(StatusError) as info:
        check(reader, "get", "pods", "log", namespace="dask", name="w-1")
    assert info.value.message == ('pods "w-1" is forbidden: User "reader" cannot get resource "pods/log" in API group "" '
                                  'in the namespace "dask"')
    assert info.value.details == {"name": "w-1", "kind": "pods"}
    with pytest.raises(StatusError) as info:
        check(reader, "create", "subjectaccessreviews", api_group="authorization.k8s.io")
    assert info.value.message == ('subjectaccessreviews.authorization.k8s.io is forbidden: User "reader" cannot create '
                                  'resource "subjectaccessreviews" in API group "authorization.k8s.io" at the cluster scope')
    assert info.value.details == {"group": "authorization.k8s.io", "kind": "subjectaccessreviews"}


def test_self_subject_access_review_answers_from_the_same_rules():
    ids = Identities()
    reader = ids.authenticate(ids.add_user("reader", POD_READER))
    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
              "spec": {"resourceAttributes": {"namespace": "dask", "verb": "watch", "resource": "pods"}}}
    assert access_review(reader, review)["status"]["allowed"] is True
    review["spec"]["resourceAttributes"]["verb"] = "delete"
    assert access_review(reader, review)["status"]["allowed"] is False
    with pytest.raises(StatusError):
        access_review(reader, {"spec": {}})


def test_bad_rules_are_rejected_with_the_rule_quoted():
    with pytest.raises(ValueError, match="verbs"):
        PolicyRule.from_dict({"resources": ["pods"]})
    with pytest.raises(ValueError, match="admin"):
        Identities().add_user("admin", POD_READER)


def test_kubectls_protobuf_review_is_read():
    from dask_k8s_backend.embedded.api.protobuf import decode
    from dask_k8s_backend.embedded.status import StatusError

    body = (b'k8s\x00\n2\n\x17authorization.k8s.io/v1\x12\x17SelfSubjectAccessReview\x12?\n\x10\n\x00\x12\x00\x1a\x00"'
            b'\x00*\x002\x008\x00B\x00\x12!\n\x1f\n\x07default\x12\x06create\x1a\x00"\x00*\x04pods2\x00:\x00\x1a\x08'
            b'\x08\x00\x12\x00\x1a\x00 \x00\x1a\x00"\x00')  # what kubectl 1.32 sends for `auth can-i create pods`
    review = decode(body)
    assert review["kind"] == "SelfSubjectAccessReview"
    assert review["spec"]["resourceAttributes"] == {"namespace": "default", "verb": "create", "resource": "pods"}
    for garbled in (b"{}", b"k8s\x00\xff"):
        with pytest.raises(StatusError):
            decode(garbled)
