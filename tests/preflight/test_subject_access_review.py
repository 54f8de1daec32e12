"""SubjectAccessReview: what a named user (a service account) may do.

Asked through the official client over HTTPS, as the preflight asks a real cluster, of the embedded
API server (the answer comes from the rules registered for that user name) or, with
``--k8s-kubeconfig``, of upstream's (its RBAC, for ServiceAccounts bound to Roles made for the
test): an unknown user may do nothing, and asking about someone else is itself a permission
restricted users lack. The answers' fields are upstream's: ``allowed``, and no reason for a denial.
"""

from __future__ import annotations

import json

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from dask_k8s_backend.embedded.api.authz import Identities, Identity, subject_access_review
from dask_k8s_backend.embedded.status import StatusError

from .servers import api_server

pytestmark = pytest.mark.timeout(60)

SA = "dask-sa"  # a service account: system:serviceaccount:<the test namespace>:dask-sa
USERS = {
    SA: [{"resources": ["pods"], "verbs": ["create", "list"], "namespaces": ["default"]}],
    "auditor": [{"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"], "verbs": ["create"]}],
    "plain": [{"resources": ["pods"], "verbs": ["list"]}],
}


@pytest.fixture(scope="module")
def kube(request):
    with api_server(request, USERS, service_accounts=[SA], kubelet="simulated", nodes=1) as server:
        yield server


def review(user: str, verb: str, resource: str = "pods", namespace: str = "default", groups=None) -> dict:
    spec = {"user": user, "resourceAttributes": {"namespace": namespace, "verb": verb, "group": "", "resource": resource}}
    if groups:
        spec["groups"] = groups
    return {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec}


def ask(kubeconfig: str, body: dict) -> dict:
    api_client = config.new_client_from_config(config_file=kubeconfig)
    try:
        api = client.AuthorizationV1Api(api_client)
        return json.loads(api.create_subject_access_review(body, _preload_content=False).data)
    finally:
        api_client.close()


@pytest.mark.parametrize("verb, own_namespace, allowed", [
    ("create", True, True), ("list", True, True),
    ("delete", True, False),   # not in its rules
    ("create", False, False),  # its rules are for its own namespace only
])
def test_the_answer_comes_from_the_named_users_rules_not_the_callers(kube, verb, own_namespace, allowed):
    namespace = kube.namespace if own_namespace else "other"
    answer = ask(kube.kubeconfig, review(kube.user_name(SA), verb, namespace=namespace))  # the admin may do all
    assert answer["kind"] == "SubjectAccessReview"
    assert answer["status"]["allowed"] is allowed, answer
    if not allowed:
        assert answer["status"] == {"allowed": False}, answer  # upstream's RBAC gives no reason for a denial


def test_the_answer_echoes_the_spec_without_its_empty_fields_as_upstream_does(kube):
    question = review(kube.user_name(SA), "list", namespace=kube.namespace)
    question["spec"]["resourceAttributes"]["subresource"] = ""
    answer = ask(kube.kubeconfig, question)
    assert answer["spec"] == {"user": kube.user_name(SA), "resourceAttributes": {
        "namespace": kube.namespace, "verb": "list", "resource": "pods"}}  # group "" and subresource "" omitted
    assert answer["status"]["allowed"] is True and answer["status"]["reason"].startswith("RBAC: allowed by ")


def test_an_unknown_user_may_do_nothing_and_system_masters_everything(kube):
    nobody = review(f"system:serviceaccount:{kube.namespace}:nobody", "list", namespace=kube.namespace)
    assert ask(kube.kubeconfig, nobody)["status"] == {"allowed": False}
    masters = review("someone", "delete", groups=["system:masters"])
    assert ask(kube.kubeconfig, masters)["status"]["allowed"] is True


def test_asking_about_others_needs_its_own_permission(kube):
    question = review(kube.user_name(SA), "create", namespace=kube.namespace)
    with pytest.raises(ApiException) as info:
        ask(kube.kubeconfig_for("plain"), question)
    assert info.value.status == 403
    status = json.loads(info.value.body)
    assert status["message"] == (f'subjectaccessreviews.authorization.k8s.io is forbidden: User "{kube.user_name("plain")}" '
                                 'cannot create resource "subjectaccessreviews" in API group "authorization.k8s.io" at '
                                 'the cluster scope')
    assert status["details"] == {"group": "authorization.k8s.io", "kind": "subjectaccessreviews"}
    assert ask(kube.kubeconfig_for("auditor"), question)["status"]["allowed"] is True


def test_self_reviews_still_answer_for_the_caller(kube):
    api_client = config.new_client_from_config(config_file=kube.kubeconfig_for("plain"))
    try:
        body = {"spec": {"resourceAttributes": {"namespace": kube.namespace, "verb": "create", "resource": "pods"}}}
        answer = json.loads(client.AuthorizationV1Api(api_client).create_self_subject_access_review(
            body, _preload_content=False).data)
    finally:
        api_client.close()
    assert answer["status"]["allowed"] is False  # "plain" may only list pods, whatever SA may do


@pytest.mark.parametrize("resource, spec, field, why", [
    ("subjectaccessreviews", {"resourceAttributes": {"verb": "get", "resource": "pods"}}, "spec.user",
     'Invalid value: "": at least one of user or group must be specified'),
    ("subjectaccessreviews", {"user": "x"}, "spec.resourceAttributes",
     "Invalid value: null: exactly one of nonResourceAttributes or resourceAttributes must be specified"),
    ("subjectaccessreviews", {"user": "x", "resourceAttributes": {"verb": "get", "resource": "pods"},
                              "nonResourceAttributes": {"verb": "get", "path": "/x"}}, "spec.nonResourceAttributes",
     'Invalid value: {"Path":"/x","Verb":"get"}: cannot be specified in combination with resourceAttributes'),
    ("selfsubjectaccessreviews", {}, "spec.resourceAttributes",
     "Invalid value: null: exactly one of nonResourceAttributes or resourceAttributes must be specified"),
])
def test_a_review_that_asks_nothing_answerable_is_upstreams_422(kube, resource, spec, field, why):
    api_client = config.new_client_from_config(config_file=kube.kubeconfig)
    api = client.AuthorizationV1Api(api_client)
    create = api.create_subject_access_review if resource == "subjectaccessreviews" else api.create_self_subject_access_review
    try:
        with pytest.raises(client.ApiException) as info:
            create({"spec": spec}, _preload_content=False)
    finally:
        api_client.close()
    status = json.loads(info.value.body)
    assert (status["code"], status["reason"]) == (422, "Invalid")
    assert status["message"] == f'.authorization.k8s.io "" is invalid: {field}: {why}'
    assert status["details"] == {"group": "authorization.k8s.io",
                                 "causes": [{"reason": "FieldValueInvalid", "message": why, "field": field}]}


def test_a_review_without_a_subject_is_invalid_after_the_callers_permission():
    identities = Identities()
    with pytest.raises(StatusError) as info:
        subject_access_review(Identity("admin"), identities, {"spec": {"resourceAttributes": {"verb": "get"}}})
    assert info.value.code == 422 and "spec.user" in info.value.message
    plain = identities.authenticate(identities.add_user("plain", USERS["plain"]))
    with pytest.raises(StatusError) as info:  # asking at all is refused first, as upstream authorizes before validating
        subject_access_review(plain, identities, {"spec": {"resourceAttributes": {"verb": "get"}}})
    assert info.value.code == 403


def rules(body: dict) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) of every resource rule a SelfSubjectRulesReview lists."""
    return {(group, resource, verb) for rule in body["status"]["resourceRules"] for group in rule["apiGroups"]
            for resource in rule["resources"] for verb in rule["verbs"]}


def test_a_rules_review_lists_the_callers_own_rules_not_everything(kube):
    api_client = config.new_client_from_config(config_file=kube.kubeconfig_for("plain"))
    try:
        body = json.loads(client.AuthorizationV1Api(api_client).create_self_subject_rules_review(
            {"spec": {"namespace": kube.namespace}}, _preload_content=False).data)
    finally:
        api_client.close()
    listed = rules(body)
    assert ("", "pods", "list") in listed and ("", "pods", "create") not in listed
    assert not any("*" in triple for triple in listed), listed  # what `kubectl auth can-i --list` shows
    assert {("authorization.k8s.io", "selfsubjectaccessreviews", "create"),
            ("authorization.k8s.io", "selfsubjectrulesreviews", "create")} <= listed  # every identity may ask
    assert body["status"]["incomplete"] is False
