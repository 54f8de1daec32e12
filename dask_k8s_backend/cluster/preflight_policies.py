"""Preflight, what the namespace's policies allow: LimitRanges and ResourceQuotas against the worker pods.

The half of the preflight (:mod:`.preflight`) that reads the namespace's policies and applies the
quota arithmetic of :mod:`~dask_k8s_backend.kube.quotas` to a sample worker pod. Data flow::

    LimitRanges + ResourceQuotas (read_policies; None for what this identity may not list: check skipped)
    sample pod ─> LimitRange defaults (effective_pod) ─> LimitRange limits, quota requirements,
                  quota room vs the number of pods asked for ─> PolicyProblems (policy_findings)

Every use goes through :func:`policy_findings`: at start (:func:`check_policies`, an error), before a
later ``scale(n)`` (:func:`quota_shortfall`, a warning), and for a worker group's own pod (its messages
name the add_worker_group option that made the pod that large: :func:`group_policy_message`).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..kube import quotas
from ..kube.errors import Forbidden, KubernetesApiError, NotFound
from ..labels import DEFAULT_GROUP
from .preflight_access import PreflightError, call_api

# One logger for the whole preflight (preflight.py, preflight_access.py, preflight_policies.py): users and
# tests filter its warnings by this name.
logger = logging.getLogger(f"{__package__}.preflight")


class QuotaError(PreflightError):
    pass


# ------------------------------------------------------------------------------------ reading the policies
async def _optional_list(action: str, fn: Any, namespace: str) -> list[dict] | None:
    """Items of a namespaced list, or None when this identity may not read them (the check is skipped)."""
    try:
        return list((await call_api(action, fn, namespace)).get("items") or [])
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

