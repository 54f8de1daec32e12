"""Preflight, who may do what where: the identity's RBAC, the namespace, the scheduler pod's service account.

The half of the preflight (:mod:`.preflight`) that asks the API server about access before any pod
exists, so that a missing permission or namespace is one clear error instead of the first creation's 403
or 404. Data flow::

    required_permissions(deploy mode, tls) + optional ones
        ─> SelfSubjectAccessReviews, one per permission, concurrently (check_permissions)
        ─> MissingPermissionsError listing every required one lacking, with the Role granting them;
           one warning for the optional ones (the feature needing one says so when used: feature_refusal)
    namespace ─> read it, or a one-item pod list when reading namespaces is forbidden (check_namespace)
    cluster mode: service account ─> read it ─> SubjectAccessReviews for system:serviceaccount:<ns>:<name>

The errors of every preflight check derive from :class:`PreflightError`, defined here because this is
the lowest of the preflight's modules; :func:`call_api` is the one way they all talk to the API server.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..kube.errors import Forbidden, NotFound, translate

# One logger for the whole preflight (preflight.py, preflight_access.py, preflight_policies.py): users and
# tests filter its warnings by this name.
logger = logging.getLogger(f"{__package__}.preflight")


# ------------------------------------------------------------------------------------ errors
class PreflightError(RuntimeError):
    """A check that runs before any pod is created failed; the message says how to fix it."""


class MissingPermissionsError(PreflightError):
    def __init__(self, message: str, missing: Sequence[Permission]) -> None:
        super().__init__(message)
        self.missing = tuple(missing)


class NamespaceNotFoundError(PreflightError):
    pass



class ServiceAccountError(PreflightError):
    pass



# ------------------------------------------------------------------------------------ permissions
@dataclass(frozen=True)
class Permission:
    """One RBAC permission the backend needs: ``verb`` on ``resource[/subresource]`` of API ``group`` ("" = core)."""

    verb: str
    resource: str
    subresource: str = ""
    why: str = ""
    group: str = ""

    @property
    def full_resource(self) -> str:
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource

    def describe(self) -> str:
        return f"{self.verb} {self.full_resource}" + (f" ({self.why})" if self.why else "")


LEASE_GROUP = "coordination.k8s.io"
CLIENT_MODE_PERMISSIONS: tuple[Permission, ...] = (
    Permission("create", "pods", why="start workers"),
    Permission("list", "pods", why="see the workers' pods"),
    Permission("watch", "pods", why="follow the workers' pods"),
    Permission("delete", "pods", why="scale down and replace workers"),
    Permission("deletecollection", "pods", why="clean up at close"),
    Permission("patch", "pods", why="label terminated pods kept for debugging"),
    *(Permission(verb, "leases", why=f"the app's heartbeat lease, owner of its pods ({why})", group=LEASE_GROUP)
      for verb, why in (("create", "created at start"), ("get", "taken over by a restarted scheduler"),
                        ("update", "renewed"), ("delete", "deleted at close"), ("list", "read by `status` and `gc`"))),
)
# Permissions a feature needs, not the backend: without them the cluster starts, with one warning at start,
# and the feature says what is missing when it is used (reading quotas and LimitRanges: the preflight's
# quota checks are skipped and the API server's own refusal speaks at creation time).
POD_LOGS = Permission("get", "pods", "log", why="cluster.logs() and get_logs() read the workers' logs")
OPTIONAL_PERMISSIONS: tuple[Permission, ...] = (
    POD_LOGS,
    Permission("list", "resourcequotas", why="checking before creating workers that they fit the namespace's quota"),
    Permission("list", "limitranges", why="applying the namespace's LimitRange defaults in that quota check"),
)
CLUSTER_MODE_PERMISSIONS: tuple[Permission, ...] = (
    Permission("get", "pods", why="the scheduler reads its own pod"),
    Permission("create", "services", why="the scheduler's service"),
)
TLS_PERMISSIONS: tuple[Permission, ...] = (
    Permission("create", "secrets", why="security.tls: the app's certificates"),
    Permission("delete", "secrets", why="security.tls: removed at close"),
)
CLUSTER_MODE_TLS_PERMISSIONS: tuple[Permission, ...] = (
    Permission("patch", "secrets", why="security.tls in cluster mode: the scheduler pod owns the certificates"),
    Permission("get", "secrets", why="security.tls in cluster mode: from_name reads the certificates"),
)


def required_permissions(deploy_mode: str, tls: bool = False) -> tuple[Permission, ...]:
    """The permissions the backend uses in this deploy mode (and with Dask comm TLS)."""
    cluster = deploy_mode == "cluster"
    return (CLIENT_MODE_PERMISSIONS + (CLUSTER_MODE_PERMISSIONS if cluster else ())
            + (TLS_PERMISSIONS if tls else ()) + (CLUSTER_MODE_TLS_PERMISSIONS if tls and cluster else ()))


def role_snippet(missing: Iterable[Permission], namespace: str) -> str:
    """A Role (YAML) granting exactly the ``missing`` permissions in ``namespace``."""
    by_resource: dict[tuple[str, str], list[str]] = {}
    for permission in missing:
        verbs = by_resource.setdefault((permission.group, permission.full_resource), [])
        if permission.verb not in verbs:
            verbs.append(permission.verb)
    lines = ["apiVersion: rbac.authorization.k8s.io/v1", "kind: Role", "metadata:", "  name: dask-k8s-backend",
             f"  namespace: {namespace}", "rules:"]
    for (group, resource), verbs in by_resource.items():
        lines += [f'  - apiGroups: ["{group}"]', f'    resources: ["{resource}"]',
                  "    verbs: [" + ", ".join(f'"{v}"' for v in verbs) + "]"]
    return "\n".join(lines)


def optional_permissions_message(missing: Sequence[Permission], namespace: str) -> str:
    """The one warning at start about optional permissions this identity lacks, and what goes without them."""
    listed = "\n".join(f"  - {p.describe()}" for p in missing)
    return (
        f"The Kubernetes identity in use lacks {len(missing)} optional permission(s) in namespace {namespace!r}; "
        f"the cluster starts, without what needs them:\n{listed}\nTo have them, ask for them in your Role:\n"
        f"{role_snippet(missing, namespace)}"
    )


def feature_refusal(what: str, doing: str, permission: Permission, namespace: str) -> MissingPermissionsError:
    """The error of a feature used without its optional permission: what was asked, what is missing, the Role."""
    return MissingPermissionsError(
        f"{what}: your credentials may not {doing} ({permission.verb} {permission.full_resource}) in namespace "
        f"{namespace!r}; ask for it in your Role:\n{role_snippet([permission], namespace)}", [permission])


def missing_permissions_message(missing: Sequence[Permission], namespace: str) -> str:
    listed = "\n".join(f"  - {p.describe()}" for p in missing)
    return (
        f"The Kubernetes identity in use (kubeconfig user or service account) lacks {len(missing)} permission(s) "
        f"the backend needs in namespace {namespace!r}; nothing was created.\nMissing:\n{listed}\n"
        f"Fix: apply a Role granting them and bind it to this identity with a RoleBinding "
        f"(deploy/rbac.yaml has the complete set):\n{role_snippet(missing, namespace)}"
    )


# ------------------------------------------------------------------------------------ API calls
async def call_api(action: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run one blocking client call in a thread; JSON in, JSON out, errors translated."""
    try:
        response = await asyncio.to_thread(fn, *args, _preload_content=False, **kwargs)
    except Exception as e:
        raise translate(e, action) from e
    return json.loads(response.data or b"{}")


async def _allowed(api_client: Any, permission: Permission, namespace: str) -> bool:
    from kubernetes import client as k8s

    body = {
        "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": {"namespace": namespace, "verb": permission.verb, "group": permission.group,
                                        "resource": permission.resource, "subresource": permission.subresource}},
    }
    review = await call_api(f"ask whether we may {permission.verb} {permission.full_resource} in namespace {namespace}",
                         k8s.AuthorizationV1Api(api_client).create_self_subject_access_review, body)
    return bool((review.get("status") or {}).get("allowed"))


async def check_permissions(api_client: Any, namespace: str, deploy_mode: str = "client", tls: bool = False,
                            optional: tuple[Permission, ...] = OPTIONAL_PERMISSIONS) -> tuple[Permission, ...]:
    """Raise :class:`MissingPermissionsError` listing every required permission the identity lacks;
    warn once about the ``optional`` ones it lacks and return them (the features that need them say so)."""
    required = required_permissions(deploy_mode, tls)
    wanted = required + optional
    try:
        answers = await asyncio.gather(*(_allowed(api_client, p, namespace) for p in wanted))
    except (NotFound, Forbidden) as e:  # no SelfSubjectAccessReview API here: creation errors will tell
        logger.warning("preflight: cannot ask the API server about permissions (%s); skipping the RBAC check", e.code)
        return ()
    missing = [p for p, ok in zip(wanted, answers) if not ok]
    must = [p for p in missing if p in required]
    if must:
        raise MissingPermissionsError(missing_permissions_message(must, namespace), must)
    optional = tuple(p for p in missing if p not in required)
    if optional:
        logger.warning("%s", optional_permissions_message(optional, namespace))
    return optional


async def check_namespace(api_client: Any, namespace: str) -> None:
    """Raise :class:`NamespaceNotFoundError` when ``namespace`` does not exist.

    Reading namespaces is cluster-scoped and often not granted; then a one-item list of pods in the
    namespace stands in. It is only conclusive when it answers 404: kube-apiserver (and the embedded
    one) answer an empty list for a missing namespace, and then the first creation's 404 names it.
    """
    from kubernetes import client as k8s

    core = k8s.CoreV1Api(api_client)
    try:
        try:
            await call_api(f"read namespace {namespace}", core.read_namespace, namespace)
        except Forbidden:
            await call_api(f"list pods in namespace {namespace}", core.list_namespaced_pod, namespace, limit=1)
    except NotFound as e:
        raise NamespaceNotFoundError(
            f"namespace {namespace!r} (k8s-backend.namespace / KubeSparkCluster(namespace=...)) does not exist; "
            f"nothing was created. Create it with `kubectl create namespace {namespace}` or choose an existing one."
        ) from e



# ------------------------------------------------------------------------------------ service account
SERVICE_ACCOUNT_OPTION = "k8s-backend.worker.service-account"
IN_POD_PERMISSIONS: tuple[Permission, ...] = CLIENT_MODE_PERMISSIONS + (
    Permission("get", "pods", why="the scheduler reads its own pod"),
)
IN_POD_OPTIONAL_PERMISSIONS: tuple[Permission, ...] = (POD_LOGS,)  # cluster.logs() is served by the scheduler pod


def service_account_user(namespace: str, name: str) -> str:
    """The user name Kubernetes gives a service account's token."""
    return f"system:serviceaccount:{namespace}:{name}"


async def _subject_allowed(api_client: Any, user: str, permission: Permission, namespace: str) -> bool:
    from kubernetes import client as k8s

    body = {
        "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {"user": user, "resourceAttributes": {
            "namespace": namespace, "verb": permission.verb, "group": permission.group, "resource": permission.resource,
            "subresource": permission.subresource}},
    }
    review = await call_api(f"ask whether {user} may {permission.verb} {permission.full_resource} in namespace {namespace}",
                         k8s.AuthorizationV1Api(api_client).create_subject_access_review, body)
    return bool((review.get("status") or {}).get("allowed"))


async def check_service_account_exists(api_client: Any, namespace: str, name: str) -> None:
    """Raise :class:`ServiceAccountError` when the scheduler pod's service account is missing.

    A pod naming a missing service account is refused by the API server; reading service accounts
    is optional (skipped with a warning without it), the creation's refusal then says it.
    """
    from kubernetes import client as k8s

    try:
        await call_api(f"read service account {name} in namespace {namespace}",
                    k8s.CoreV1Api(api_client).read_namespaced_service_account, name, namespace)
    except Forbidden as e:
        logger.warning("preflight: may not read service accounts (%s); not checking that %r exists", e.code, name)
    except NotFound as e:
        raise ServiceAccountError(
            f"cluster mode: the scheduler pod runs as service account {name!r} ({SERVICE_ACCOUNT_OPTION} / "
            f"KubeSparkCluster(service_account=...)), which does not exist in namespace {namespace!r}; nothing was "
            f"created. Fix: create it (`kubectl create serviceaccount {name} -n {namespace}`, or `kubectl apply -n "
            f"{namespace} -f deploy/rbac.yaml` for the account with its Role) or set {SERVICE_ACCOUNT_OPTION} to an "
            "existing service account."
        ) from e


def service_account_message(missing: Sequence[Permission], namespace: str, name: str) -> str:
    listed = "\n".join(f"  - {p.describe()}" for p in missing)
    binding = "\n".join([
        "---", "apiVersion: rbac.authorization.k8s.io/v1", "kind: RoleBinding", "metadata:", "  name: dask-k8s-backend",
        f"  namespace: {namespace}", "subjects:", "  - kind: ServiceAccount", f"    name: {name}",
        f"    namespace: {namespace}", "roleRef:", "  apiGroup: rbac.authorization.k8s.io", "  kind: Role",
        "  name: dask-k8s-backend"])
    return (
        f"cluster mode: the scheduler pod runs as service account {name!r} ({SERVICE_ACCOUNT_OPTION}), which lacks "
        f"{len(missing)} permission(s) the backend in that pod needs in namespace {namespace!r}; nothing was created."
        f"\nMissing:\n{listed}\nFix: bind a Role granting them to the service account (deploy/rbac.yaml has the "
        f"ServiceAccount, Role and RoleBinding), or set {SERVICE_ACCOUNT_OPTION} to an account that has them:\n"
        f"{role_snippet(missing, namespace)}\n{binding}"
    )


async def check_service_account_permissions(api_client: Any, namespace: str, name: str) -> tuple[Permission, ...]:
    """Raise :class:`MissingPermissionsError` naming the service account and the required permissions it
    lacks; warn once about the optional ones (``IN_POD_OPTIONAL_PERMISSIONS``) and return them.

    Asked with SubjectAccessReviews; an identity that may not create them (403) or a server
    without them (404) gets a warning: the scheduler pod's own refusals will say what is missing.
    """
    user = service_account_user(namespace, name)
    wanted = IN_POD_PERMISSIONS + IN_POD_OPTIONAL_PERMISSIONS
    try:
        answers = await asyncio.gather(*(_subject_allowed(api_client, user, p, namespace) for p in wanted))
    except (Forbidden, NotFound) as e:
        logger.warning("preflight: cannot ask what service account %r may do (%s: creating subjectaccessreviews "
                       "needs that permission); not checking the scheduler pod's permissions", name, e.code)
        return ()
    missing = [p for p, ok in zip(wanted, answers) if not ok]
    must = [p for p in missing if p in IN_POD_PERMISSIONS]
    if must:
        raise MissingPermissionsError(service_account_message(must, namespace, name), must)
    optional = tuple(p for p in missing if p not in IN_POD_PERMISSIONS)
    if optional:
        logger.warning("cluster mode: the scheduler pod's service account %r: %s", name,
                       optional_permissions_message(optional, namespace))
    return optional


async def check_service_account(api_client: Any, namespace: str, name: str) -> tuple[Permission, ...]:
    """The cluster-mode scheduler pod's service account exists and may do what the backend in it does;
    returns the optional permissions it lacks."""
    await check_service_account_exists(api_client, namespace, name)
    return await check_service_account_permissions(api_client, namespace, name)


def client_optional_permissions(deploy_mode: str, service_account: str | None) -> tuple[Permission, ...]:
    """The optional permissions asked of the client's identity: where the scheduler pod reads logs with its
    own service account, pods/log is that account's business (asked of it), not the notebook's."""
    if deploy_mode == "cluster" and service_account:
        return tuple(p for p in OPTIONAL_PERMISSIONS if p not in IN_POD_OPTIONAL_PERMISSIONS)
    return OPTIONAL_PERMISSIONS

