"""Preflight: what would make the first pod creation fail, found before any pod exists.

Runs in ``KubeSparkCluster._start`` right after the connection is made and before a scheduler,
a scheduler pod or a worker pod is created. Data flow::

    connection ─> SelfSubjectAccessReviews (one per permission the backend uses, concurrently)
               ─> the namespace (read it; a cheap namespaced list when reading namespaces is forbidden)
               ─> LimitRanges + ResourceQuotas of the namespace
               ─> cluster mode: the scheduler pod's service account (read it; SubjectAccessReviews for
                  system:serviceaccount:<ns>:<name>, one per permission the backend in the pod uses)
    sample worker pod (pods/builder.py) ─> LimitRange defaults ─> quota room (quotas.py) vs n_workers

Worker groups go through the same rules (:func:`~.preflight_policies.policy_findings`) with their own sample pod: when
added (:func:`check_worker_group`, only refusals no empty namespace would lift are errors) and before
``scale(n, group=...)`` / ``adapt(maximum=..., group=...)`` (:func:`warn_before_scale`, a warning).

Each failing check raises one :class:`PreflightError` subclass whose message names what is wrong
and the fix (for RBAC: every missing permission and the Role that grants them). Permissions are
must or nice: without a required one (create/list/watch/delete pods, ...) the backend cannot work
and the start is refused; without an optional one (``OPTIONAL_PERMISSIONS``: pods/log, reading
quotas and LimitRanges) the cluster starts with one warning, and the feature that needs it says
so when used (:func:`~.preflight_access.feature_refusal`). Checks that this identity may not run (reading quotas)
are skipped with a debug log: the server's own refusal at creation time still says what went wrong.
:func:`~.preflight_policies.quota_shortfall` is
the same quota rule for a later ``scale(n)``: a warning, not an error.

The checks live in two modules below this one: :mod:`.preflight_access` (RBAC, the namespace, the
service account) and :mod:`.preflight_policies` (LimitRanges and ResourceQuotas); this one runs them
in order for a starting cluster, a new worker group and a scale. The errors of every check are
importable from here, where a user catches them.
"""

from __future__ import annotations

import logging
from typing import Any

from ..labels import DEFAULT_GROUP
from ..pods.builder import check_executor_pod
from .cluster_mode import scheduler_service_account
from .preflight_access import (
    MissingPermissionsError,
    NamespaceNotFoundError,
    Permission,
    PreflightError,
    ServiceAccountError,
    check_namespace,
    check_permissions,
    check_service_account,
    client_optional_permissions,
)
from .preflight_policies import (
    QuotaError,
    check_policies,
    effective_pod,
    group_argument,
    group_knobs,
    group_policy_message,
    policy_findings,
    quota_shortfall,
    read_policies,
)

__all__ = ["MissingPermissionsError", "NamespaceNotFoundError", "PreflightError", "QuotaError", "ServiceAccountError",
           "check_cluster", "check_worker_group", "run_preflight", "warn_before_scale"]

# One logger for the whole preflight (preflight.py, preflight_access.py, preflight_policies.py): users and
# tests filter its warnings by this name.
logger = logging.getLogger(f"{__package__}.preflight")


# ------------------------------------------------------------------------------------ worker groups
async def check_worker_group(cluster: Any, group: str, pod: dict, settings: Any, given: dict[str, Any]) -> None:
    """Before ``add_worker_group``: raise :class:`QuotaError` when no pod of the group could ever be admitted.

    The same rules as the default group's preflight (:func:`policy_findings`), on the group's own
    pod (built by ``add_worker_group`` from ``settings``); only permanent refusals are errors (a quota
    that other pods fill now is a warning at scale time).
    """
    namespace = cluster.app.namespace
    limit_ranges, resource_quotas = await read_policies(cluster.connection.api_client, namespace)
    effective = effective_pod(pod, limit_ranges)
    problems = [p for p in policy_findings(pod, limit_ranges, resource_quotas, 1, namespace,
                                           asked=f"worker group {group!r} asks for 1 worker pod",
                                           knobs=group_knobs(group)) if p.permanent]
    if problems:
        raise QuotaError(group_policy_message(group, namespace, problems, effective, given, settings))


def _group_pod(cluster: Any, group: str) -> dict | None:
    """A sample pod of ``group`` as this client knows it (None for a group added by another client)."""
    recipe = cluster._group_recipes.get(group) if group != DEFAULT_GROUP else (cluster.settings, cluster._pod_template)
    if recipe is None:
        return None
    settings, template = recipe
    return check_executor_pod(app=cluster.app, settings=settings, template=template)



# ------------------------------------------------------------------------------------ entry point
async def run_preflight(api_client: Any, *, namespace: str, deploy_mode: str, pod: dict, n_workers: int,
                        tls: bool = False, service_account: str | None = None) -> tuple[Permission, ...]:
    """All checks, in order (permissions, namespace, service account, policies); the first failing one raises.

    ``service_account``: the cluster-mode scheduler pod's account to check (None: none to check).
    Returns the optional permissions the identity lacks (already warned about).
    """
    optional_missing = await check_permissions(api_client, namespace, deploy_mode, tls,
                                               client_optional_permissions(deploy_mode, service_account))
    await check_namespace(api_client, namespace)
    if deploy_mode == "cluster" and service_account:
        optional_missing += await check_service_account(api_client, namespace, service_account)
    await check_policies(api_client, namespace, pod, n_workers)
    logger.debug("preflight passed for namespace %s (%d workers)", namespace, n_workers)
    return optional_missing


async def check_cluster(cluster: Any) -> None:
    """The preflight of a starting :class:`~dask_k8s_backend.cluster.kube_spark_cluster.KubeSparkCluster` (its connection is up)."""
    pod = check_executor_pod(app=cluster.app, settings=cluster.settings, template=cluster._pod_template)
    service_account = scheduler_service_account(cluster.settings, cluster.connection)
    cluster.missing_optional_permissions = await run_preflight(
        cluster.connection.api_client, namespace=cluster.app.namespace, deploy_mode=cluster.settings.deploy_mode,
        pod=pod, n_workers=cluster._n_workers, tls=cluster.settings.security.tls, service_account=service_account)


async def warn_before_scale(cluster: Any, n: int, group: str = DEFAULT_GROUP, asked: str | None = None) -> str | None:
    """Before ``scale(n, group=...)`` (and ``adapt(maximum=n, group=...)``): warn when the extra pods of
    that group will not fit the quota now; never raises.

    The quota's ``status.used`` already counts every pod of the namespace, the other groups'
    included, so only this group's live pods are subtracted from ``n``.
    """
    if cluster.connection is None:
        return None
    await cluster._refresh_status_quietly()  # the group's pods as the backend sees them now, not at the last poll
    alive = sum(1 for e in cluster._status_cache.alive() if e.get("group", DEFAULT_GROUP) == group)
    extra = n - alive
    if extra <= 0:
        return None
    asked = (asked or f"scale({n}{group_argument(group)}) needs {{extra}} more worker pods").format(extra=extra)
    try:
        pod = _group_pod(cluster, group)
        if pod is None:
            logger.debug("no pod recipe of worker group %r in this client; quota check before scaling skipped", group)
            return None
        warning = await quota_shortfall(cluster.connection.api_client, cluster.app.namespace, pod, extra,
                                        asked=asked, knobs=group_knobs(group))
    except Exception as e:  # a warning must never break scaling
        logger.debug("quota check before scale(%s, group=%r) failed: %s", n, group, e)
        return None
    if warning:
        logger.warning("%s", warning)  # the one time it is shown
        cluster.keep_log(warning)  # kept in cluster.get_logs(), not printed a second time
    return warning
