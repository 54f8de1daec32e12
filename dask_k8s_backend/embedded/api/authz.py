"""Who is calling the embedded API server, and what they may do (a small RBAC).

Data flow: the API server hands the bearer token of each request to :meth:`Identities.authenticate`
and gets an :class:`Identity` (or None: 401). It maps the request to a verb with
:func:`request_verb` and asks :meth:`Identity.allows` (``authorize`` below); a denied request is
answered with :func:`forbidden` (403, kube-apiserver's message). ``POST
/apis/authorization.k8s.io/v1/selfsubjectaccessreviews`` is answered by :func:`access_review`
from the same rules, so a client can ask before it acts, exactly as on a real cluster.
``POST .../subjectaccessreviews`` (:func:`subject_access_review`) asks the same about another,
named user (``system:serviceaccount:<ns>:<name>`` for a service account): registering a user of
that name with ``users=`` gives the service account its rules; an unknown user has none. Asking
about others is itself a permission (``create subjectaccessreviews`` in ``authorization.k8s.io``),
which restricted users lack unless a rule grants it, so a client learns what its pods may do
only when an administrator lets it, as on a real cluster.

The admin identity (the token in the embedded kubeconfig) may do everything. Restricted
identities carry RBAC-like :class:`PolicyRule` lists (apiGroups, resources incl. subresources
such as ``pods/log``, verbs, optional namespaces, ``*`` wildcards). As on a real cluster every
authenticated identity may create SelfSubjectAccessReviews and read discovery (system:basic-user,
system:discovery). Tokens are never stored on identities nor shown in reprs.
"""

from __future__ import annotations

import copy
import hmac
import json
import logging
import secrets
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..status import StatusError, invalid
from ..status import forbidden as forbidden_status

logger = logging.getLogger(__name__)

ADMIN_USER = "admin"
REVIEW_GROUP = "authorization.k8s.io"
REVIEW_VERSION = "v1"
REVIEW_RESOURCE = "selfsubjectaccessreviews"
SUBJECT_REVIEW_RESOURCE = "subjectaccessreviews"
RULES_REVIEW_RESOURCE = "selfsubjectrulesreviews"
# What every authenticated identity may do on a real cluster (system:basic-user, system:discovery), as
# SelfSubjectRulesReview lists it.
BASIC_USER_RULES = ({"verbs": ["create"], "apiGroups": [REVIEW_GROUP], "resources": [REVIEW_RESOURCE, RULES_REVIEW_RESOURCE]},)
DISCOVERY_RULES = ({"verbs": ["get"], "nonResourceURLs": ["/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez",
                                                         "/openapi", "/openapi/*", "/readyz", "/version", "/version/"]},)
SUPERUSER_GROUP = "system:masters"
_READ_VERBS = ("get", "list", "watch")


@dataclass(frozen=True)
class PolicyRule:
    """One RBAC rule; ``namespaces`` None means every namespace and the cluster scope (a ClusterRole)."""

    verbs: tuple[str, ...]
    resources: tuple[str, ...]
    api_groups: tuple[str, ...] = ("",)
    namespaces: tuple[str, ...] | None = None
    resource_names: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, rule: Mapping[str, Any]) -> PolicyRule:
        """From the YAML shape of a Role rule (apiGroups, resources, verbs, resourceNames) + namespaces."""
        if isinstance(rule, PolicyRule):
            return rule
        unknown = set(rule) - {"verbs", "resources", "apiGroups", "namespaces", "resourceNames"}
        if unknown or not rule.get("verbs") or not rule.get("resources"):
            raise ValueError(
                f"policy rule {dict(rule)!r}: expected a mapping with 'verbs' and 'resources' (and optional "
                f"'apiGroups', 'namespaces', 'resourceNames'){'; unknown keys ' + str(sorted(unknown)) if unknown else ''}"
            )
        namespaces = rule.get("namespaces")
        return cls(
            verbs=tuple(rule["verbs"]),
            resources=tuple(rule["resources"]),
            api_groups=tuple(rule.get("apiGroups", [""])),
            namespaces=None if namespaces is None else tuple(namespaces),
            resource_names=tuple(rule.get("resourceNames") or ()),
        )

    def matches(self, verb: str, api_group: str, resource: str, namespace: str | None, name: str | None) -> bool:
        if "*" not in self.verbs and verb not in self.verbs:
            return False
        if "*" not in self.api_groups and api_group not in self.api_groups:
            return False
        if "*" not in self.resources and resource not in self.resources:
            group_wildcard = resource.split("/", 1)[0] + "/*" if "/" in resource else None
            if group_wildcard not in self.resources:
                return False
        if self.namespaces is not None and namespace not in self.namespaces:
            return False
        return not self.resource_names or (name is not None and name in self.resource_names)


@dataclass(frozen=True)
class Identity:
    """An authenticated user; ``rules`` None means unrestricted (the admin)."""

    name: str
    rules: tuple[PolicyRule, ...] | None = None
    groups: tuple[str, ...] = ("system:authenticated",)

    def allows(self, verb: str, resource: str, subresource: str = "", namespace: str | None = None,
               *, api_group: str = "", name: str | None = None) -> bool:
        return authorize(self, verb, resource, subresource, namespace, api_group=api_group, name=name)


ADMIN = Identity(ADMIN_USER)  # the embedded kubeconfig's token: may do everything


def authorize(user: Identity, verb: str, resource: str, subresource: str = "", namespace: str | None = None,
              *, api_group: str = "", name: str | None = None) -> bool:
    """May ``user`` do ``verb`` on ``resource[/subresource]`` in ``namespace`` (None: cluster scope)?"""
    if user.rules is None:
        return True
    if api_group == REVIEW_GROUP and resource == REVIEW_RESOURCE and verb == "create":
        return True  # system:basic-user: everyone may ask what they may do
    full = f"{resource}/{subresource}" if subresource else resource
    return any(rule.matches(verb, api_group, full, namespace, name) for rule in user.rules)


def request_verb(method: str, *, has_name: bool, watch: bool = False) -> str:
    """The RBAC verb of an HTTP request, as kube-apiserver derives it."""
    method = method.upper()
    if method == "GET" or method == "HEAD":
        return "watch" if watch else ("get" if has_name else "list")
    if method == "POST":
        return "create"
    if method == "PUT":
        return "update"
    if method == "PATCH":
        return "patch"
    if method == "DELETE":
        return "delete" if has_name else "deletecollection"
    return method.lower()


def forbidden(user: Identity, verb: str, resource: str, subresource: str = "", namespace: str | None = None,
              api_group: str = "", name: str | None = None) -> StatusError:
    """kube-apiserver's 403 for a denied request (``pods "x" is forbidden: ...`` when it names an object)."""
    return forbidden_status(user.name, verb, resource, namespace, subresource, api_group, name)


def check(user: Identity, verb: str, resource: str, subresource: str = "", namespace: str | None = None,
          *, api_group: str = "", name: str | None = None) -> None:
    """Raise the 403 StatusError when ``user`` may not do this (and log the denial at debug level)."""
    if not authorize(user, verb, resource, subresource, namespace, api_group=api_group, name=name):
        logger.debug("denied %s %s/%s in %s to %s", verb, resource, subresource, namespace, user.name)
        raise forbidden(user, verb, resource, subresource, namespace, api_group, name)


def access_review(user: Identity, review: Mapping[str, Any]) -> dict[str, Any]:
    """Answer a SelfSubjectAccessReview body: the same object with ``status.allowed`` filled in."""
    _valid_spec(review, about_someone=False)
    return _answer(user, review, "SelfSubjectAccessReview")


def subject_access_review(caller: Identity, identities: Identities | None, review: Mapping[str, Any]) -> dict[str, Any]:
    """Answer a SubjectAccessReview: may ``spec.user`` (or a member of ``spec.groups``) do this?

    The caller needs ``create subjectaccessreviews`` (403 otherwise, as kube-apiserver answers).
    ``spec.user`` is looked up among the registered identities by name; an unknown user has no
    rules (RBAC binds nothing to it), a member of ``system:masters`` may do everything.
    """
    check(caller, "create", SUBJECT_REVIEW_RESOURCE, api_group=REVIEW_GROUP)
    spec = _valid_spec(review, about_someone=True)
    subject = _subject(identities, str(spec.get("user") or ""), tuple(spec.get("groups") or ()))
    return _answer(subject, review, "SubjectAccessReview")


def _valid_spec(review: Any, *, about_someone: bool) -> Mapping[str, Any]:
    """The review's spec, or upstream's 422 (ValidateSubjectAccessReviewSpec / ValidateSelfSubjectAccessReviewSpec):
    exactly one of resourceAttributes and nonResourceAttributes, and a user or group when asking about someone."""
    spec = review.get("spec") if isinstance(review, Mapping) else None
    spec = spec if isinstance(spec, Mapping) else {}
    resource, non_resource = spec.get("resourceAttributes"), spec.get("nonResourceAttributes")
    causes = []
    if resource is not None and non_resource is not None:
        fields = non_resource if isinstance(non_resource, Mapping) else {}
        shown = json.dumps({"Path": fields.get("path", ""), "Verb": fields.get("verb", "")}, separators=(",", ":"))
        causes.append(("spec.nonResourceAttributes",
                       f"Invalid value: {shown}: cannot be specified in combination with resourceAttributes"))
    if resource is None and non_resource is None:
        causes.append(("spec.resourceAttributes", "Invalid value: null: exactly one of nonResourceAttributes or "
                                                  "resourceAttributes must be specified"))
    if about_someone and not spec.get("user") and not spec.get("groups"):
        shown = json.dumps(str(spec.get("user") or ""))
        causes.append(("spec.user", f"Invalid value: {shown}: at least one of user or group must be specified"))
    if causes:  # the decoded object has no kind by then: upstream names it ".authorization.k8s.io"
        raise invalid("", "", causes, group=REVIEW_GROUP)
    return spec


def _subject(identities: Identities | None, name: str, groups: tuple[str, ...]) -> Identity:
    """The identity a SubjectAccessReview asks about: registered rules, the admin, or nothing at all."""
    if SUPERUSER_GROUP in groups or name == ADMIN_USER:
        return Identity(name or ADMIN_USER)
    known = identities.by_name(name) if identities is not None and name else None
    return known if known is not None else Identity(name, rules=())


def _answer(user: Identity, review: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """``review`` (its spec validated by :func:`_valid_spec`) with ``status`` filled in from ``user``'s rules."""
    spec = review["spec"]
    out = copy.deepcopy(dict(review))
    out["spec"] = _without_empty_strings(out["spec"])
    out.setdefault("apiVersion", f"{REVIEW_GROUP}/{REVIEW_VERSION}")
    out.setdefault("kind", kind)
    out.setdefault("metadata", {})
    attributes = spec.get("resourceAttributes")
    if attributes is not None:
        attributes = attributes if isinstance(attributes, Mapping) else {}
        allowed = authorize(
            user, attributes.get("verb") or "", attributes.get("resource") or "", attributes.get("subresource") or "",
            attributes.get("namespace") or None, api_group=attributes.get("group") or "", name=attributes.get("name") or None,
        )
    else:
        non_resource = spec["nonResourceAttributes"]
        verb = (non_resource.get("verb") or "").lower() if isinstance(non_resource, Mapping) else ""
        allowed = user.rules is None or verb in _READ_VERBS  # system:discovery
    status: dict[str, Any] = {"allowed": allowed}
    if allowed and user.rules is not None:
        status["reason"] = f'RBAC: allowed by the embedded rules of user "{user.name}"'
    out["status"] = status  # a denial has no reason: upstream's RBAC authorizer gives none (NoOpinion, "")
    return out


def rules_review(user: Identity, review: Mapping[str, Any]) -> dict[str, Any]:
    """Answer a SelfSubjectRulesReview for a restricted ``user``: its rules that apply in ``spec.namespace``
    (cluster-wide ones included) after what every identity may do, as upstream lists them."""
    namespace = ((review.get("spec") or {}) if isinstance(review, Mapping) else {}).get("namespace") or None
    own = [_rule_dict(r) for r in user.rules or () if r.namespaces is None or namespace in r.namespaces]
    out = copy.deepcopy(dict(review)) if isinstance(review, Mapping) else {}
    out.setdefault("apiVersion", f"{REVIEW_GROUP}/{REVIEW_VERSION}")
    out.setdefault("kind", "SelfSubjectRulesReview")
    out.setdefault("metadata", {})
    out["status"] = {"resourceRules": [*copy.deepcopy(BASIC_USER_RULES), *own],
                     "nonResourceRules": list(copy.deepcopy(DISCOVERY_RULES)), "incomplete": False}
    return out


def _rule_dict(rule: PolicyRule) -> dict[str, Any]:
    out: dict[str, Any] = {"verbs": list(rule.verbs), "apiGroups": list(rule.api_groups), "resources": list(rule.resources)}
    if rule.resource_names:
        out["resourceNames"] = list(rule.resource_names)
    return out


def _without_empty_strings(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The spec as upstream echoes it: its string fields are ``omitempty``, so ``"group": ""`` comes back absent."""
    out = {k: v for k, v in spec.items() if v != ""}
    for key in ("resourceAttributes", "nonResourceAttributes"):
        if isinstance(out.get(key), Mapping):
            out[key] = {k: v for k, v in out[key].items() if v != ""}
    return out


class Identities:
    """Bearer token -> :class:`Identity`. Thread-safe; tokens are random and never logged."""

    def __init__(self, admin_token: str | None = None) -> None:
        self._lock = threading.Lock()
        self._by_token: dict[str, Identity] = {}
        self._tokens: dict[str, str] = {}
        self.admin_token = self.add(ADMIN, admin_token)

    def add(self, identity: Identity, token: str | None = None) -> str:
        """Register ``identity`` and return its token (a new random one unless given)."""
        token = token or secrets.token_urlsafe(24)
        with self._lock:
            old = self._tokens.pop(identity.name, None)
            if old is not None:
                self._by_token.pop(old, None)
            self._by_token[token] = identity
            self._tokens[identity.name] = token
        return token

    def add_user(self, name: str, rules: Iterable[Mapping[str, Any] | PolicyRule]) -> str:
        """A restricted identity named ``name`` with these RBAC-like rules; returns its token."""
        if not name or name == ADMIN_USER:
            raise ValueError(f"users: {name!r} cannot name a restricted user (empty or the admin's name); pick another name")
        return self.add(Identity(name, tuple(PolicyRule.from_dict(r) for r in rules)))

    def by_name(self, name: str) -> Identity | None:
        """The registered identity called ``name`` (what a SubjectAccessReview asks about), or None."""
        with self._lock:
            token = self._tokens.get(name)
            return self._by_token.get(token) if token is not None else None

    def token_for(self, name: str) -> str:
        with self._lock:
            if name not in self._tokens:
                raise KeyError(f"no user {name!r} in the embedded Kubernetes; known: {sorted(self._tokens)}")
            return self._tokens[name]

    def authenticate(self, token: str | None) -> Identity | None:
        """The identity of this bearer token, or None (the API server answers 401)."""
        if not token:
            return None
        with self._lock:
            for known, identity in self._by_token.items():
                if hmac.compare_digest(known.encode(), token.encode()):
                    return identity
        return None

    def __repr__(self) -> str:
        return f"Identities(users={sorted(self._tokens)})"
