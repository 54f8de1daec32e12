"""Preflight: what would make the first pod creation fail, found before any pod exists.

Runs in ``KubeSparkCluster._start`` right after the connection is made and before a scheduler,
a scheduler pod or a worker pod is created. Data flow::

    connection ─> SelfSubjectAccessReviews (one per permission the backend uses, concurrently)
               ─> the namespace (read it; a cheap namespaced list when reading namespaces is forbidden)
               ─> LimitRanges + ResourceQuotas of the namespace
    sample worker pod (pods/builder.py) ─> LimitRange defaults ─> quota room (quotas.py) vs n_workers

Each failing check raises one :class:`PreflightError` subclass whose message names what is wrong
and the fix (for RBAC: every missing permission and the Role that grants them). Checks that
this identity may not run (reading quotas is optional) are skipped with a debug log: the
server's own refusal at creation time still says what went wrong. :func:`quota_shortfall` is
the same quota rule for a later ``scale(n)``: a warning, not an error.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from . import quotas
from .errors import Forbidden, KubernetesApiError, NotFound, translate

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------ errors
class PreflightError(RuntimeError):
    """A check that runs before any pod is created failed; the message says how to fix it."""


class MissingPermissionsError(PreflightError):
    def __init__(self, message: str, missing: Sequence[Permission]) -> None:
        super().__init__(message)
        self.missing = tuple(missing)


class NamespaceNotFoundError(PreflightError):
    pass


class QuotaError(PreflightError):
    pass


# ------------------------------------------------------------------------------------ permissions
@dataclass(frozen=True)
class Permission:
    """One RBAC permission the backend needs: ``verb`` on ``resource[/subresource]`` (core group)."""

    verb: str
    resource: str
    subresource: str = ""
    why: str = ""

    @property
    def full_resource(self) -> str:
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource

    def describe(self) -> str:
        return f"{self.verb} {self.full_resource}" + (f" ({self.why})" if self.why else "")


CLIENT_MODE_PERMISSIONS: tuple[Permission, ...] = (
    Permission("create", "pods", why="start workers"),
    Permission("list", "pods", why="see the workers' pods"),
    Permission("watch", "pods", why="follow the workers' pods"),
    Permission("delete", "pods", why="scale down and replace workers"),
    Permission("deletecollection", "pods", why="clean up at close"),
    Permission("patch", "pods", why="label terminated pods kept for debugging"),
    Permission("get", "pods", "log", why="cluster.logs()"),
)
CLUSTER_MODE_PERMISSIONS: tuple[Permission, ...] = (
    Permission("get", "pods", why="the scheduler reads its own pod"),
    Permission("create", "services", why="the scheduler's service"),
)
TLS_PERMISSIONS: tuple[Permission, ...] = (
    Permission("create", "secrets", why="security.tls: the app's certificates"),
    Permission("delete", "secrets", why="security.tls: removed at close"),
)


def required_permissions(deploy_mode: str, tls: bool = False) -> tuple[Permission, ...]:
    """The permissions the backend uses in this deploy mode (and with Dask comm TLS)."""
    return (CLIENT_MODE_PERMISSIONS + (CLUSTER_MODE_PERMISSIONS if deploy_mode == "cluster" else ())
            + (TLS_PERMISSIONS if tls else ()))


def role_snippet(missing: Iterable[Permission], namespace: str) -> str:
    """A Role (YAML) granting exactly the ``missing`` permissions in ``namespace``."""
    by_resource: dict[str, list[str]] = {}
    for permission in missing:
        verbs = by_resource.setdefault(permission.full_resource, [])
        if permission.verb not in verbs:
            verbs.append(permission.verb)
    lines = ["apiVersion: rbac.authorization.k8s.io/v1", "kind: Role", "metadata:", "  name: dask-k8s-backend",
             f"  namespace: {namespace}", "rules:"]
    for resource, verbs in by_resource.items():
        lines += ['  - apiGroups: [""]', f'    resources: ["{resource}"]',
                  "    verbs: [" + ", ".join(f'"{v}"' for v in verbs) + "]"]
    return "\n".join(lines)


def missing_permissions_message(missing: Sequence[Permission], namespace: str) -> str:
    listed = "\n".join(f"  - {p.describe()}" for p in missing)
    return (
        f"The Kubernetes identity in use (kubeconfig user or service account) lacks {len(missing)} permission(s) "
        f"the backend needs in namespace {namespace!r}; nothing was created.\nMissing:\n{listed}\n"
        f"Fix: apply a Role granting them and bind it to this identity with a RoleBinding "
        f"(deploy/rbac.yaml has the complete set):\n{role_snippet(missing, namespace)}"
    )


# ------------------------------------------------------------------------------------ API calls
async def _call(action: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
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
        "spec": {"resourceAttributes": {"namespace": namespace, "verb": permission.verb, "group": "",
                                        "resource": permission.resource, "subresource": permission.subresource}},
    }
    review = await _call(f"ask whether we may {permission.verb} {permission.full_resource} in namespace {namespace}",
                         k8s.AuthorizationV1Api(api_client).create_self_subject_access_review, body)
    return bool((review.get("status") or {}).get("allowed"))


async def check_permissions(api_client: Any, namespace: str, deploy_mode: str = "client", tls: bool = False) -> None:
    """Raise :class:`MissingPermissionsError` listing every permission the identity lacks."""
    wanted = required_permissions(deploy_mode, tls)
    try:
        answers = await asyncio.gather(*(_allowed(api_client, p, namespace) for p in wanted))
    except (NotFound, Forbidden) as e:  # no SelfSubjectAccessReview API here: creation errors will tell
        logger.warning("preflight: cannot ask the API server about permissions (%s); skipping the RBAC check", e.code)
        return
    missing = [p for p, ok in zip(wanted, answers) if not ok]
    if missing:
        raise MissingPermissionsError(missing_permissions_message(missing, namespace), missing)


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
            await _call(f"read namespace {namespace}", core.read_namespace, namespace)
        except Forbidden:
            await _call(f"list pods in namespace {namespace}", core.list_namespaced_pod, namespace, limit=1)
    except NotFound as e:
        raise NamespaceNotFoundError(
            f"namespace {namespace!r} (k8s-backend.namespace / KubeSparkCluster(namespace=...)) does not exist; "
            f"nothing was created. Create it with `kubectl create namespace {namespace}` or choose an existing one."
        ) from e


async def _optional_list(action: str, fn: Any, namespace: str) -> list[dict] | None:
    """Items of a namespaced list, or None when this identity may not read them (the check is skipped)."""
    try:
        return list((await _call(action, fn, namespace)).get("items") or [])
    except (Forbidden, NotFound) as e:
        logger.debug("preflight: cannot %s (%s); skipping that check", action, e.code)
        return None


async def read_policies(api_client: Any, namespace: str) -> tuple[list[dict] | None, list[dict] | None]:
    """(LimitRanges, ResourceQuotas) of the namespace; None for those this identity may not list."""
    from kubernetes import client as k8s

    core = k8s.CoreV1Api(api_client)
    limit_ranges, resource_quotas = await asyncio.gather(
        _optional_list(f"list limitranges in namespace {namespace}", core.list_namespaced_limit_range, namespace),
        _optional_list(f"list resourcequotas in namespace {namespace}", core.list_namespaced_resource_quota, namespace),
    )
    return limit_ranges, resource_quotas


# ------------------------------------------------------------------------------------ quota rules
def effective_pod(pod: dict, limit_ranges: Iterable[dict] | None) -> dict:
    """The worker pod as the API server will store it: LimitRange defaults applied."""
    return quotas.apply_limit_ranges(pod, limit_ranges or [])


def policy_problems(pod: dict, limit_ranges: Iterable[dict] | None, resource_quotas: Iterable[dict] | None,
                    n_workers: int, namespace: str, asked: str | None = None) -> list[str]:
    """Why ``n_workers`` copies of ``pod`` would be refused: LimitRange limits, quota requirements and room.

    ``asked`` says who asks for them in the message (default "n_workers=N asks for N worker pods").
    """
    asked = asked or f"n_workers={n_workers} asks for {n_workers} worker pods"
    problems = []
    effective = effective_pod(pod, limit_ranges)
    violations = quotas.limit_range_violations(effective, limit_ranges or [])
    if violations:
        problems.append(f"the LimitRange of namespace {namespace!r} refuses the worker pod: {quotas.aggregate(violations)}; "
                        "change worker_cores / worker_memory (or the pod template's resources) to fit it")
    for quota in resource_quotas or []:
        name = quota["metadata"]["name"]
        if not quotas.quota_applies(quota, effective):
            continue
        missing = quotas.missing_requirements(effective, quotas.parse_hard((quota.get("spec") or {}).get("hard")))
        if missing:
            problems.append(f"ResourceQuota {name!r} requires every container to set {'; '.join(missing)}; "
                            "set them in the pod template or ask for a LimitRange with defaults")
            continue
        short = _shortfall(quota, effective, n_workers, namespace, asked)
        if short:
            problems.append(short)
    return problems


def _shortfall(quota: dict, pod: dict, n_workers: int, namespace: str, asked: str) -> str | None:
    room = quotas.quota_room(quota, pod)
    if room.fits is None or room.fits >= n_workers:
        return None
    return (f"{asked}, but only {room.fits} fit: {room.describe()} (namespace {namespace!r}). "
            f"Ask for at most {room.fits} more workers, lower worker_cores / worker_memory, or have the quota raised")


async def check_policies(api_client: Any, namespace: str, pod: dict, n_workers: int) -> None:
    """Raise :class:`QuotaError` when LimitRanges or ResourceQuotas would refuse the requested workers."""
    limit_ranges, resource_quotas = await read_policies(api_client, namespace)
    problems = policy_problems(pod, limit_ranges, resource_quotas, n_workers, namespace)
    if problems:
        raise QuotaError("The namespace's policies would refuse the worker pods; nothing was created: "
                         + "; ".join(problems) + ".")


async def quota_shortfall(api_client: Any, namespace: str, pod: dict, n_workers: int, asked: str) -> str | None:
    """A warning when ``n_workers`` pods would not fit the namespace's quotas now (None when they fit)."""
    try:
        limit_ranges, resource_quotas = await read_policies(api_client, namespace)
    except KubernetesApiError as e:
        logger.debug("quota check before scaling skipped: %s", e)
        return None
    problems = policy_problems(pod, limit_ranges, resource_quotas, n_workers, namespace, asked)
    return "; ".join(problems) + "; the backend keeps retrying as capacity frees" if problems else None


# ------------------------------------------------------------------------------------ entry point
async def run_preflight(api_client: Any, *, namespace: str, deploy_mode: str, pod: dict, n_workers: int,
                        tls: bool = False) -> None:
    """All checks, in order (permissions, namespace, policies); the first failing one raises."""
    await check_permissions(api_client, namespace, deploy_mode, tls)
    await check_namespace(api_client, namespace)
    await check_policies(api_client, namespace, pod, n_workers)
    logger.debug("preflight passed for namespace %s (%d workers)", namespace, n_workers)


async def check_cluster(cluster: Any) -> None:
    """The preflight of a starting :class:`~dask_k8s_backend.cluster.KubeSparkCluster` (its connection is up)."""
    from .pods.builder import check_executor_pod

    pod = check_executor_pod(app=cluster.app, settings=cluster.settings, template=cluster._pod_template)
    await run_preflight(cluster.connection.api_client, namespace=cluster.app.namespace,
                        deploy_mode=cluster.settings.deploy_mode, pod=pod, n_workers=cluster._n_workers,
                        tls=cluster.settings.security.tls)


async def warn_before_scale(cluster: Any, n: int, group: str = "default") -> str | None:
    """Before ``scale(n)``: warn when the extra pods will not fit the quota; never raises.

    Only the default group's pod recipe is known here; the backend reports refusals of any group
    in the cluster's status events when they happen.
    """
    if group != "default" or cluster.connection is None:
        return None
    alive = sum(1 for e in cluster._status_cache.alive() if e.get("group", "default") == group)
    extra = n - alive
    if extra <= 0:
        return None
    try:
        from .pods.builder import check_executor_pod

        pod = check_executor_pod(app=cluster.app, settings=cluster.settings, template=cluster._pod_template)
        warning = await quota_shortfall(cluster.connection.api_client, cluster.app.namespace, pod, extra,
                                        asked=f"scale({n}) needs {extra} more worker pods")
    except Exception as e:  # a warning must never break scaling
        logger.debug("quota check before scale(%s) failed: %s", n, e)
        return None
    if warning:
        logger.warning("%s", warning)
        cluster._log(warning)  # shown to the notebook user (unless quiet) and kept in cluster.get_logs()
    return warning
