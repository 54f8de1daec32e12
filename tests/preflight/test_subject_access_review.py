"""SubjectAccessReview on the embedded API server: what a named user (a service account) may do.

Asked through the official client over HTTPS, as the preflight asks a real cluster: the answer
comes from the rules registered for that user name, an unknown user may do nothing, and asking
about someone else is itself a permission restricted users lack.
"""

from __future__ import annotations

import pytest

from dask_k8s_backend.embedded.authz import Identities, Identity, subject_access_review
from dask_k8s_backend.embedded.status import StatusError

pytestmark = pytest.mark.timeout(60)

SA = "system:serviceaccount:default:dask-sa"
USERS = {
    SA: [{"resources": ["pods"], "verbs": ["create", "list"], "namespaces": ["default"]}],
    "auditor": [{"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"], "verbs": ["create"]}],
    "plain": [{"resources": ["pods"], "verbs": ["list"]}],
}


@pytest.fixture(scope="module")
def kube():
    from dask_k8s_backend.embedded.cluster import EmbeddedKubernetes

    with EmbeddedKubernetes(kubelet="simulated", nodes=1, users=USERS) as k:
        yield k


def review(user: str, verb: str, resource: str = "pods", namespace: str = "default", groups=None) -> dict:
    spec = {"user": user, "resourceAttributes": {"namespace": namespace, "verb": verb, "group": "", "resource": resource}}
    if groups:
        spec["groups"] = groups
    return {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec}


def ask(kubeconfig: str, body: dict) -> dict:
    import json

    from kubernetes import client, config

    api_client = config.new_client_from_config(config_file=kubeconfig)
    try:
        api = client.AuthorizationV1Api(api_client)
        return json.loads(api.create_subject_access_review(body, _preload_content=False).data)
    finally:
        api_client.close()


@pytest.mark.parametrize("verb, namespace, allowed", [
    ("create", "default", True), ("list", "default", True),
    ("delete", "default", False),   # not in its rules
    ("create", "other", False),     # its rules are for namespace default only
])
def test_the_answer_comes_from_the_named_users_rules_not_the_callers(kube, verb, namespace, allowed):
    answer = ask(kube.kubeconfig, review(SA, verb, namespace=namespace))  # the admin asks: the admin may do all
    assert answer["kind"] == "SubjectAccessReview"
    assert answer["status"]["allowed"] is allowed, answer


def test_an_unknown_user_may_do_nothing_and_system_masters_everything(kube):
    assert ask(kube.kubeconfig, review("system:serviceaccount:default:nobody", "list"))["status"]["allowed"] is False
    masters = review("someone", "delete", groups=["system:masters"])
    assert ask(kube.kubeconfig, masters)["status"]["allowed"] is True


def test_asking_about_others_needs_its_own_permission(kube):
    import json

    from kubernetes.client.exceptions import ApiException

    with pytest.raises(ApiException) as info:
        ask(kube.kubeconfig_for("plain"), review(SA, "create"))
    assert info.value.status == 403
    message = json.loads(info.value.body)["message"]
    assert 'cannot create resource "subjectaccessreviews" in API group "authorization.k8s.io"' in message, message
    assert ask(kube.kubeconfig_for("auditor"), review(SA, "create"))["status"]["allowed"] is True


def test_self_reviews_still_answer_for_the_caller(kube):
    import json

    from kubernetes import client, config

    api_client = config.new_client_from_config(config_file=kube.kubeconfig_for("plain"))
    try:
        body = {"spec": {"resourceAttributes": {"namespace": "default", "verb": "create", "resource": "pods"}}}
        answer = json.loads(client.AuthorizationV1Api(api_client).create_self_subject_access_review(
            body, _preload_content=False).data)
    finally:
        api_client.close()
    assert answer["status"]["allowed"] is False  # "plain" may only list pods, whatever SA may do


def test_a_review_without_a_subject_is_a_bad_request():
    identities = Identities()
    with pytest.raises(StatusError) as info:
        subject_access_review(Identity("admin"), identities, {"spec": {"resourceAttributes": {"verb": "get"}}})
    assert info.value.code == 400 and "spec.user" in info.value.message
