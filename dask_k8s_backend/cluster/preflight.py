"""Preflight: what would make the first pod creation fail, found before any pod exists.

Runs in ``KubeSparkCluster._start`` right after the connection is made and before a scheduler,
a scheduler pod or a worker pod is created. Data flow::

    connection ─> SelfSubjectAccessReviews (one per permission the backend uses, concurrently)
               ─> the namespace (read it; a cheap namespaced list when reading namespaces is forbidden)
               ─> LimitRanges + ResourceQuotas of the namespace
               ─> cluster mode: the scheduler pod's service account (read it; SubjectAccessReviews for
                  system:serviceaccount:<ns>:<name>, one per permission the backend in the pod uses)
    sample worker pod (pods/builder.py) ─> LimitRange defaults ─> quota room (quotas.py) vs n_workers

Worker groups go through the same rules (:func:`policy_findings`) with their own sample pod: when
added (:func:`check_worker_group`, only refusals no empty namespace would lift are errors) and before
``scale(n, group=...)`` / ``adapt(maximum=..., group=...)`` (:func:`warn_before_scale`, a warning).

Each failing check raises one :class:`PreflightError` subclass whose message names what is wrong
and the fix (for RBAC: every missing permission and the Role that grants them). Permissions are
must or nice: without a required one (create/list/watch/delete pods, ...) the backend cannot work
and the start is refused; without an optional one (``OPTIONAL_PERMISSIONS``: pods/log, reading
quotas and LimitRanges) the cluster starts with one warning, and the feature that needs it says
so when used (:func:`feature_refusal`). Checks that this identity may not run (reading quotas)
are skipped with a debug log: the server's own refusal at creation time still says what went wrong. :func:`quota_shortfall` is
the same quota rule for a later ``scale(n)``: a warning, not an error.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..kube import quotas
from ..kube.errors import Forbidden, KubernetesApiError, NotFound, translate
from ..labels import DEFAULT_GROUP
from ..pods.builder import check_executor_pod
from .cluster_mode import scheduler_service_account

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
        "spec": {"resourceAttributes": {"namespace": namespace, "verb": permission.verb, "group": permission.group,
                                        "resource": permission.resource, "subresource": permission.subresource}},
    }
    review = await _call(f"ask whether we may {permission.verb} {permission.full_resource} in namespace {namespace}",
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


DEFAULT_KNOBS = "worker_cores / worker_memory"


@dataclass(frozen=True)
class PolicyProblem:
    """One reason the namespace's policies refuse worker pods.

    ``keys`` are the resource names involved (``cpu``, ``memory``, ``example.com/gpu``) so a caller
    can name the option that sets them; ``permanent`` is True when even an empty namespace would
    refuse the pod (a LimitRange violation, a missing request, one pod larger than the quota),
    False when only what other pods use now is in the way.
    """

    what: str
    fix: str
    keys: tuple[str, ...] = ()
    permanent: bool = True
    sep: str = "; "

    @property
    def text(self) -> str:
        return f"{self.what}{self.sep}{self.fix}"


def policy_problems(pod: dict, limit_ranges: Iterable[dict] | None, resource_quotas: Iterable[dict] | None,
                    n_workers: int, namespace: str, asked: str | None = None) -> list[str]:
    """Why ``n_workers`` copies of ``pod`` would be refused: LimitRange limits, quota requirements and room.

    ``asked`` says who asks for them in the message (default "n_workers=N asks for N worker pods").
    """
    return [p.text for p in policy_findings(pod, limit_ranges, resource_quotas, n_workers, namespace, asked)]


def policy_findings(pod: dict, limit_ranges: Iterable[dict] | None, resource_quotas: Iterable[dict] | None,
                    n_workers: int, namespace: str, asked: str | None = None,
                    knobs: str = DEFAULT_KNOBS) -> list[PolicyProblem]:
    """:func:`policy_problems` with structure: every group's checks (and the default's) go through here.

    ``knobs`` names the options that size the pod in the fixes (the default group's, or a worker group's).
    """
    asked = asked or f"n_workers={n_workers} asks for {n_workers} worker pods"
    problems = []
    effective = effective_pod(pod, limit_ranges)
    violations = quotas.limit_range_violations(effective, limit_ranges or [])
    if violations:
        problems.append(PolicyProblem(
            f"the LimitRange of namespace {namespace!r} refuses the worker pod: {quotas.aggregate(violations)}",
            f"change {knobs} (or the pod template's resources) to fit it", _violation_keys(violations)))
    for quota in resource_quotas or []:
        name = quota["metadata"]["name"]
        if not quotas.quota_applies(quota, effective):
            continue
        missing = quotas.missing_requirements(effective, quotas.parse_hard((quota.get("spec") or {}).get("hard")))
        if missing:
            problems.append(PolicyProblem(
                f"ResourceQuota {name!r} requires every container to set {'; '.join(missing)}",
                "set them in the pod template or ask for a LimitRange with defaults",
                tuple(m.split(" ", 1)[0].split(".", 1)[-1] for m in missing)))
            continue
        short = _shortfall(quota, effective, n_workers, namespace, asked, knobs)
        if short:
            problems.append(short)
    return problems


_VIOLATION_KEY = re.compile(r"^(?:minimum|maximum) (\S+) usage|^(\S+) max limit to request ratio")


def _violation_keys(violations: Iterable[str]) -> tuple[str, ...]:
    keys = []
    for violation in violations:
        match = _VIOLATION_KEY.match(violation)
        key = match and (match.group(1) or match.group(2))
        if key and key not in keys:
            keys.append(key)
    return tuple(keys)


def _shortfall(quota: dict, pod: dict, n_workers: int, namespace: str, asked: str,
               knobs: str = DEFAULT_KNOBS) -> PolicyProblem | None:
    room = quotas.quota_room(quota, pod)
    if room.fits is None or room.fits >= n_workers:
        return None
    never = quotas.quota_room(quota, pod, used={}).fits == 0  # one pod is larger than the whole quota
    return PolicyProblem(
        f"{asked}, but only {room.fits} fit: {room.describe()} (namespace {namespace!r})",
        f"Ask for at most {room.fits} more workers, lower {knobs}, or have the quota raised",
        tuple(k.split(".", 1)[1] if k.startswith(("requests.", "limits.")) else k for k in room.binding),
        permanent=never, sep=". ")


async def check_policies(api_client: Any, namespace: str, pod: dict, n_workers: int) -> None:
    """Raise :class:`QuotaError` when LimitRanges or ResourceQuotas would refuse the requested workers."""
    limit_ranges, resource_quotas = await read_policies(api_client, namespace)
    problems = policy_problems(pod, limit_ranges, resource_quotas, n_workers, namespace)
    if problems:
        raise QuotaError("The namespace's policies would refuse the worker pods; nothing was created: "
                         + "; ".join(problems) + ".")


async def quota_shortfall(api_client: Any, namespace: str, pod: dict, n_workers: int, asked: str,
                          knobs: str = DEFAULT_KNOBS) -> str | None:
    """A warning when ``n_workers`` pods would not fit the namespace's quotas now (None when they fit)."""
    try:
        limit_ranges, resource_quotas = await read_policies(api_client, namespace)
    except KubernetesApiError as e:
        logger.debug("quota check before scaling skipped: %s", e)
        return None
    problems = [p.text for p in policy_findings(pod, limit_ranges, resource_quotas, n_workers, namespace, asked, knobs)]
    return "; ".join(problems) + "; the backend keeps retrying as capacity frees" if problems else None


# ------------------------------------------------------------------------------------ worker groups
def group_argument(group: str) -> str:
    """How a call names the group in messages: nothing for the default group, ``, group='gpu'`` otherwise."""
    return "" if group == DEFAULT_GROUP else f", group={group!r}"


def group_knobs(group: str) -> str:
    """How the fixes name the options that size one group's pods."""
    return DEFAULT_KNOBS if group == DEFAULT_GROUP else f"the worker_cores / worker_memory / resources of worker group {group!r}"


def _group_option(key: str, given: dict[str, Any], settings: Any) -> tuple[str, str]:
    """(option, ``option=value``) of add_worker_group that sets resource ``key`` of the group's pod.

    ``given`` holds the group's explicit options as worker.* keys (``cores``, ``memory``, ...)."""
    worker = settings.worker
    if key == "cpu":
        return "worker_cores", (f"worker_cores={given['cores']!r}" if "cores" in given
                                else f"worker_cores (inherited: {worker.cores!r})")
    if key == "memory":
        return "worker_memory", (f"worker_memory={given['memory']!r}" if "memory" in given
                                 else f"worker_memory (inherited: {worker.memory} bytes)")
    if key in worker.resources:
        return "resources", f"resources={{{key!r}: {worker.resources[key]!r}}}"
    return "pod_template", f"pod_template (its containers' {key})"


def _pod_asks(pod: dict, key: str) -> str:
    usage = quotas.pod_usage(pod, (f"requests.{key}", f"limits.{key}"))
    return quotas.format_usage(usage, [k for k, v in usage.items() if v > 0]) or f"no {key}"


def group_policy_message(group: str, namespace: str, problems: Sequence[PolicyProblem], pod: dict,
                         given: dict[str, Any], settings: Any) -> str:
    """One error for a worker group no pod of which the namespace would ever accept: what refuses it,
    which add_worker_group option (and value) made the pod that large, and the fix."""
    keys = list(dict.fromkeys(k for p in problems for k in p.keys))
    options = {key: _group_option(key, given, settings) for key in keys}
    named = "; ".join(f"{text} makes the pod ask {_pod_asks(pod, key)}" for key, (_, text) in options.items())
    to_lower = ", ".join(dict.fromkeys(option for option, _ in options.values())) or "the pod's resources"
    return (f"add_worker_group({group!r}): the policies of namespace {namespace!r} would refuse every pod of worker "
            f"group {group!r}; nothing was created and the group was not added. "
            + (f"{named}. " if named else "") + "Refused: " + "; ".join(p.what for p in problems)
            + f". Fix: call add_worker_group({group!r}, ...) with smaller {to_lower} so one pod fits, "
            "or have the namespace's LimitRange / ResourceQuota raised.")


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


# ------------------------------------------------------------------------------------ service account
class ServiceAccountError(PreflightError):
    pass


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
    review = await _call(f"ask whether {user} may {permission.verb} {permission.full_resource} in namespace {namespace}",
                         k8s.AuthorizationV1Api(api_client).create_subject_access_review, body)
    return bool((review.get("status") or {}).get("allowed"))


async def check_service_account_exists(api_client: Any, namespace: str, name: str) -> None:
    """Raise :class:`ServiceAccountError` when the scheduler pod's service account is missing.

    A pod naming a missing service account is refused by the API server; reading service accounts
    is optional (skipped with a warning without it), the creation's refusal then says it.
    """
    from kubernetes import client as k8s

    try:
        await _call(f"read service account {name} in namespace {namespace}",
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
