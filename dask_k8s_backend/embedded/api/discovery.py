"""Discovery documents of the embedded API server: /version, /api, /api/v1, /apis and its groups.

Clients (kubectl's RESTMapper, the official client) read these to learn which resources exist,
whether they are namespaced and which verbs they take. Everything comes from the store's
:data:`~dask_k8s_backend.embedded.store.resource_table.RESOURCES` table, so serving a new resource is
one line there.
"""

from __future__ import annotations

from typing import Any

from ..store.resource_table import RESOURCES, ResourceInfo

KUBE_VERSION = {"major": "1", "minor": "32", "gitVersion": "v1.32.0-embedded", "gitCommit": "embedded",
                "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.23",
                "compiler": "gc", "platform": "linux/amd64"}

_OBJECT_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
_SUBRESOURCES = {
    "pods": [("status", ["get", "patch", "update"]), ("log", ["get"]), ("binding", ["create"])],
    "nodes": [("status", ["get", "patch", "update"])],
    "namespaces": [("status", ["get", "patch", "update"])],
    "services": [("status", ["get", "patch", "update"])],
}
# Served resources in upstream's "all" category (kubectl get all): pods and services
_CATEGORY_ALL = ("pods", "services")
AUTHZ_GROUP = "authorization.k8s.io"
AUTHN_GROUP = "authentication.k8s.io"  # SelfSubjectReview: ``kubectl auth whoami``
_REVIEW_GROUPS = (AUTHZ_GROUP, AUTHN_GROUP)
SELF_SUBJECT_REVIEW_PATH = f"/apis/{AUTHN_GROUP}/v1/selfsubjectreviews"


def _resource(info: ResourceInfo) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": info.name, "singularName": info.kind.lower(), "namespaced": info.namespaced,
                           "kind": info.kind, "verbs": list(_OBJECT_VERBS)}
    if info.name == "namespaces":
        doc["verbs"] = [v for v in _OBJECT_VERBS if v != "deletecollection"]
    if info.short_names:
        doc["shortNames"] = list(info.short_names)
    if info.name in _CATEGORY_ALL:
        doc["categories"] = ["all"]
    return doc


def core_v1_resources() -> dict[str, Any]:
    """``GET /api/v1``: an APIResourceList with every resource and subresource."""
    resources = []
    for info in RESOURCES.values():
        if info.group:
            continue
        resources.append(_resource(info))
        for sub, verbs in _SUBRESOURCES.get(info.name, []):
            kind = "Binding" if sub == "binding" else info.kind
            resources.append({"name": f"{info.name}/{sub}", "singularName": "", "namespaced": info.namespaced,
                              "kind": kind, "verbs": verbs})
    return {"kind": "APIResourceList", "groupVersion": "v1", "resources": resources}


def api_versions(server_address: str) -> dict[str, Any]:
    """``GET /api``."""
    return {"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}]}


def api_groups() -> dict[str, Any]:
    """``GET /apis``: authorization.k8s.io (for ``kubectl auth can-i``) and authentication.k8s.io (for
    ``kubectl auth whoami``) first, then the groups of served resources (coordination.k8s.io: Leases)."""
    groups = []
    served = sorted({i.group_version for i in RESOURCES.values() if i.group})
    for group_version in [f"{g}/v1" for g in _REVIEW_GROUPS] + served:
        version = {"groupVersion": group_version, "version": group_version.rpartition("/")[2]}
        groups.append({"name": group_version.rpartition("/")[0], "versions": [version], "preferredVersion": version})
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def served_group_documents() -> dict[str, dict[str, Any]]:
    """``GET /apis/<group>`` and ``GET /apis/<group>/<version>`` of every served non-core group."""
    documents: dict[str, dict[str, Any]] = {}
    for group in api_groups()["groups"]:
        if group["name"] in _REVIEW_GROUPS:
            documents[f"/apis/{group['name']}"] = group
            continue
        group_version = group["preferredVersion"]["groupVersion"]
        documents[f"/apis/{group['name']}"] = group
        documents[f"/apis/{group_version}"] = {
            "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version,
            "resources": [_resource(i) for i in RESOURCES.values() if i.group_version == group_version]}
    return documents


def authz_resources() -> dict[str, Any]:
    """``GET /apis/authorization.k8s.io/v1``."""
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": f"{AUTHZ_GROUP}/v1",
            "resources": [{"name": "selfsubjectaccessreviews", "singularName": "selfsubjectaccessreview",
                           "namespaced": False, "kind": "SelfSubjectAccessReview", "verbs": ["create"]},
                          {"name": "selfsubjectrulesreviews", "singularName": "selfsubjectrulesreview",
                           "namespaced": False, "kind": "SelfSubjectRulesReview", "verbs": ["create"]}]}


def authn_resources() -> dict[str, Any]:
    """``GET /apis/authentication.k8s.io/v1``."""
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": f"{AUTHN_GROUP}/v1",
            "resources": [{"name": "selfsubjectreviews", "singularName": "selfsubjectreview", "namespaced": False,
                           "kind": "SelfSubjectReview", "verbs": ["create"]}]}


def self_subject_review(username: str, groups: list[str]) -> dict[str, Any]:
    """What upstream answers ``POST .../selfsubjectreviews`` with: who the caller is (any user may ask)."""
    return {"kind": "SelfSubjectReview", "apiVersion": f"{AUTHN_GROUP}/v1", "metadata": {"creationTimestamp": None},
            "status": {"userInfo": {"username": username, "groups": groups}}}


def access_review(body: dict[str, Any]) -> dict[str, Any]:
    """The embedded cluster has one all-powerful user: every review is allowed."""
    review = dict(body)
    review.setdefault("apiVersion", f"{AUTHZ_GROUP}/v1")
    review["status"] = {"allowed": True, "reason": "the embedded Kubernetes has a single administrator"}
    if review.get("kind") == "SelfSubjectRulesReview":
        review["status"] = {"resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}],
                            "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}], "incomplete": False}
    review.setdefault("metadata", {})
    return review
