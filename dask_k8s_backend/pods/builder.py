"""Executor pod spec = pod template + a list of pure feature steps.

Data flow::

    template (dict / file / none) ──> base pod ──> step ──> step ──> ... ──> pod dict to create
                                                   ^ each step: (pod, ExecutorPodContext) -> new pod

Like Spark's ``features/*FeatureStep``: each step adds one concern (name and labels, worker
command, env, resources, scheduling, image, owner, security) and never mutates its input, so
each can be tested alone and a new concern is a new step in :data:`FEATURE_STEPS`.

Precedence: the template is the base; ``k8s-backend.worker.*`` settings are added on top of it
(labels, annotations, env, node selector and tolerations are merged, settings winning on equal
keys); what the backend must own to find and manage its pods is always set by the backend:
the pod name, the labels in :mod:`dask_k8s_backend.labels`, ``restartPolicy: Never``, the
hostname, and the worker container's command, args, its own env variables and its cpu/memory
requests. The template's image, pull policy, other containers, volumes, affinity,
securityContext and other resource keys (ephemeral-storage, ...) are kept.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import labels
from ..config import Settings
from .app_spec import AppSpec
from .template import load_pod_template, validate_pod_template, worker_container_index
from .tls_env import tls_env

logger = logging.getLogger(__name__)

Pod = dict[str, Any]
MAX_NAME_LENGTH = 63  # a DNS-1123 label: the pod name is also the pod's hostname
DEFAULT_CONTAINER_NAME = "dask-worker"
MIB = 1 << 20
# Fields a template may carry (e.g. copied from `kubectl get pod -o yaml`) that must not be sent back.
_SERVER_SET_METADATA = ("uid", "resourceVersion", "creationTimestamp", "generation", "selfLink",
                        "managedFields", "deletionTimestamp", "deletionGracePeriodSeconds", "generateName")


@dataclass(frozen=True)
class ExecutorPodContext:
    """What the feature steps read; built once per pod by :func:`build_executor_pod`."""

    executor_id: int
    app: AppSpec
    settings: Settings
    scheduler_address: str
    group: str = labels.DEFAULT_GROUP
    owner: dict[str, Any] | None = None
    app_owners: tuple[dict[str, Any], ...] = ()  # the app's Lease (app_lease.py), as ownerReferences
    container_index: int = 0
    worker_args: tuple[str, ...] = field(default=())

    @property
    def pod_name(self) -> str:
        return executor_pod_name(app_name_prefix(self.app), self.executor_id)


APP_ID_IN_NAME = 5


def app_name_prefix(app: AppSpec) -> str:
    """``<app name>-<start of the app id>``: two clusters given the same name (in one namespace)
    never create pods with the same names, so neither can touch the other's pods (Spark adds a
    unique part to its resource name prefix for the same reason)."""
    return f"{app.app_name}-{app.app_id[:APP_ID_IN_NAME]}"


FeatureStep = Callable[[Pod, ExecutorPodContext], Pod]


# --------------------------------------------------------------------------- names
_INVALID = re.compile(r"[^a-z0-9-]+")
_DASHES = re.compile(r"-{2,}")


def pod_name_prefix(app_name: str, suffix: str = "") -> str:
    """DNS-1123 prefix from an app name, short enough that ``prefix + suffix`` is <= 63 characters.

    Lowercase, ``[a-z0-9-]`` only (other characters become ``-``), starting and ending with a
    letter or digit; the prefix is truncated, never the suffix, so executor ids stay readable.
    An app name with no usable character gives ``dask``.
    """
    room = MAX_NAME_LENGTH - len(suffix)
    if room < 1:
        raise ValueError(f"pod name suffix {suffix!r} leaves no room for a name prefix within {MAX_NAME_LENGTH} characters.")
    prefix = _DASHES.sub("-", _INVALID.sub("-", app_name.lower())).strip("-")
    prefix = prefix[:room].rstrip("-") or "dask"[:room]
    return prefix


def executor_pod_name(app_name: str, executor_id: int) -> str:
    """``<prefix>-exec-<id>``, at most 63 characters."""
    suffix = f"-exec-{executor_id}"
    return f"{pod_name_prefix(app_name, suffix)}{suffix}"


_LABEL_INVALID = re.compile(r"[^A-Za-z0-9._-]+")


def label_value(value: str) -> str:
    """A valid label value (<= 63 chars of ``[A-Za-z0-9._-]``, alphanumeric at both ends) from any string."""
    cleaned = _LABEL_INVALID.sub("-", value)[:MAX_NAME_LENGTH]
    return re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", cleaned)


# --------------------------------------------------------------------------- helpers
def _clone(obj: Any) -> Any:
    """Deep copy of JSON-like data (dicts, lists, scalars); several times faster than copy.deepcopy."""
    if isinstance(obj, dict):
        return {k: _clone(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clone(v) for v in obj]
    return obj


def worker_container(pod: Pod, ctx: ExecutorPodContext) -> dict[str, Any]:
    """The container that runs ``dask worker`` (chosen once from the template)."""
    return pod["spec"]["containers"][ctx.container_index]


def format_cpu(cores: float) -> str:
    """Kubernetes cpu quantity: whole cores as ``"2"``, fractions in millicores (``"500m"``)."""
    millis = math.ceil(round(cores * 1000, 6))
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


def pod_memory_bytes(memory: int, overhead_factor: float, min_overhead: int) -> int:
    """Spark's rule: memory + max(factor x memory, min overhead), rounded up to whole MiB."""
    total = memory + max(int(overhead_factor * memory), min_overhead)
    return math.ceil(total / MIB) * MIB


def _set_env(env: list[dict[str, Any]], entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Replace same-named entries of ``env`` by ``entries`` (appended in order)."""
    names = {e["name"] for e in entries}
    return [e for e in env if e.get("name") not in names] + entries


# --------------------------------------------------------------------------- feature steps
def basic_step(pod: Pod, ctx: ExecutorPodContext) -> Pod:
    """Name, namespace, hostname, restartPolicy Never and the labels/annotations the backend and user need."""
    pod = _clone(pod)
    pod["apiVersion"], pod["kind"] = "v1", "Pod"
    meta = pod.setdefault("metadata", {})
    for key in _SERVER_SET_METADATA:
        meta.pop(key, None)
    name = ctx.pod_name
    meta["name"] = name
    meta["namespace"] = ctx.app.namespace
    worker = ctx.settings.worker
    meta["labels"] = {
        **(meta.get("labels") or {}),
        **worker.labels,
        labels.APP_ID: ctx.app.app_id,
        labels.APP_NAME: label_value(ctx.app.app_name),
        labels.ROLE: labels.ROLE_WORKER,
        labels.EXECUTOR_ID: str(ctx.executor_id),
        labels.GROUP: ctx.group,
    }
    annotations = {**(meta.get("annotations") or {}), **worker.annotations}
    if annotations:
        meta["annotations"] = annotations
    spec = pod["spec"]
    spec["restartPolicy"] = "Never"
    spec["hostname"] = name
    spec.pop("nodeName", None)  # the scheduler binds pods; a template must not pin one
    pod.pop("status", None)
    return pod


def worker_command_step(pod: Pod, ctx: ExecutorPodContext) -> Pod:
    """``dask worker <scheduler> --name <id> ...``; Kubernetes expands ``$(POD_IP)`` from the env."""
    pod = _clone(pod)
    worker = ctx.settings.worker
    args = [
        ctx.scheduler_address,
        "--name", str(ctx.executor_id),
        "--nthreads", str(max(1, math.floor(worker.cores))),
        "--memory-limit", str(worker.memory),
        "--death-timeout", f"{worker.death_timeout:g}",
        "--host", "$(POD_IP)",
        "--no-dashboard",
    ]
    if worker.resources:
        args += ["--resources", ",".join(f"{k}={v:g}" for k, v in worker.resources.items())]
    args += list(ctx.worker_args)
    container = worker_container(pod, ctx)
    container["command"] = ["dask", "worker"]
    container["args"] = args
    return pod


#: Worker container env the pod template and ``k8s-backend.worker.env`` may override.
#: The nanny starts its worker by fork instead of distributed's default spawn. Why: a pod runs one
#: nanny and one worker; the nanny's process runs none of the user's code and, when it forks, has
#: only multiprocessing's queue feeder and distributed's queue watcher as threads, both made for
#: fork; spawn boots a second interpreter that imports distributed again (about 1 s of CPU per
#: worker on 2 cores: scale(8) 4.0 s -> 0.8 s in benchmarks/scale.py on the embedded Kubernetes,
#: and the same second per pod on a real cluster).
WORKER_DEFAULT_ENV = {"DASK_DISTRIBUTED__WORKER__MULTIPROCESSING_METHOD": "fork"}


def env_step(pod: Pod, ctx: ExecutorPodContext) -> Pod:
    """Identity and downward-API variables first (so later values may use ``$(POD_IP)``), then the
    worker defaults (:data:`WORKER_DEFAULT_ENV`), the template's and the user's, each winning over the last."""
    pod = _clone(pod)
    backend_env = [
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "status.podIP"}}},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}},
        {"name": "DASK_K8S_EXECUTOR_ID", "value": str(ctx.executor_id)},
        {"name": "DASK_K8S_APP_ID", "value": ctx.app.app_id},
        {"name": "DASK_SCHEDULER_ADDRESS", "value": ctx.scheduler_address},
    ]
    owned = {e["name"] for e in backend_env}
    user_env = [{"name": k, "value": str(v)} for k, v in ctx.settings.worker.env.items() if k not in owned]
    container = worker_container(pod, ctx)
    template_env = [e for e in container.get("env") or [] if e.get("name") not in owned]
    defaults = [{"name": k, "value": v} for k, v in WORKER_DEFAULT_ENV.items() if k not in owned]
    container["env"] = backend_env + _set_env(_set_env(defaults, template_env), user_env)
    return pod


def resources_step(pod: Pod, ctx: ExecutorPodContext) -> Pod:
    """Memory request = limit = memory + overhead; cpu request (optional limit); extended resources.

    A worker resource whose name is a qualified Kubernetes resource name (``example.com/gpu``,
    ``nvidia.com/gpu``) is also requested from Kubernetes, so the pod lands on a node that has it.
    """
    pod = _clone(pod)
    worker = ctx.settings.worker
    memory = f"{pod_memory_bytes(worker.memory, worker.memory_overhead_factor, worker.min_memory_overhead) // MIB}Mi"
    container = worker_container(pod, ctx)
    resources = container.setdefault("resources", {})
    requests = resources.setdefault("requests", {})
    limits = resources.setdefault("limits", {})
    requests["memory"] = limits["memory"] = memory
    requests["cpu"] = format_cpu(worker.request_cores if worker.request_cores is not None else worker.cores)
    if worker.limit_cores is not None:
        limits["cpu"] = format_cpu(worker.limit_cores)
    else:
        limits.pop("cpu", None)
    for name, amount in worker.resources.items():
        if "/" in name:
            if amount != int(amount) or amount < 0:
                raise ValueError(
                    f"k8s-backend.worker.resources: the Kubernetes extended resource {name!r} must be a whole "
                    f"number >= 0, got {amount!r}; Kubernetes cannot share extended resources between pods."
                )
            requests[name] = limits[name] = str(int(amount))
    return pod


def scheduling_step(pod: Pod, ctx: ExecutorPodContext) -> Pod:
    """Node selector (merged, settings win) and tolerations (template's plus the settings')."""
    pod = _clone(pod)
    worker, spec = ctx.settings.worker, pod["spec"]
    if worker.node_selector:
        spec["nodeSelector"] = {**(spec.get("nodeSelector") or {}), **worker.node_selector}
    if worker.tolerations:
        tolerations = list(spec.get("tolerations") or [])
        tolerations += [_clone(t) for t in worker.tolerations if t not in tolerations]
        spec["tolerations"] = tolerations
    return pod


def service_account_step(pod: Pod, ctx: ExecutorPodContext) -> Pod:
    """The configured service account; otherwise the template's, otherwise the namespace default."""
    pod = _clone(pod)
    if ctx.settings.worker.service_account:
        pod["spec"]["serviceAccountName"] = ctx.settings.worker.service_account
    return pod


def image_step(pod: Pod, ctx: ExecutorPodContext) -> Pod:
    """``k8s-backend.image`` and ``image-pull-policy`` unless the template's worker container sets them.

    The template wins because the settings always have a default image: a template that pins an
    image (for example one with the team's libraries) would otherwise be silently overridden.
    """
    pod = _clone(pod)
    container = worker_container(pod, ctx)
    container.setdefault("name", DEFAULT_CONTAINER_NAME)
    if not container.get("image"):
        container["image"] = ctx.settings.image
    if not container.get("imagePullPolicy"):
        container["imagePullPolicy"] = ctx.settings.image_pull_policy
    return pod


def owner_reference_step(pod: Pod, ctx: ExecutorPodContext) -> Pod:
    """Owner reference to the scheduler pod (cluster mode): deleting it garbage-collects the workers."""
    if ctx.owner is None:
        return pod
    pod = _clone(pod)
    reference = owner_reference(ctx.owner)
    meta = pod["metadata"]
    others = [r for r in meta.get("ownerReferences") or [] if r.get("uid") != reference["uid"]]
    for r in others:  # Kubernetes allows only one controller reference
        r.pop("controller", None)
    meta["ownerReferences"] = others + [reference]
    return pod


def owner_reference(owner: dict[str, Any]) -> dict[str, Any]:
    """An ownerReference from either a pod dict or an ownerReference dict (controller, blocking deletion)."""
    if "metadata" in owner:
        meta = owner["metadata"]
        owner = {"apiVersion": owner.get("apiVersion", "v1"), "kind": owner.get("kind", "Pod"),
                 "name": meta.get("name"), "uid": meta.get("uid")}
    missing = [k for k in ("apiVersion", "kind", "name", "uid") if not owner.get(k)]
    if missing:
        raise ValueError(
            f"owner of the worker pods lacks {', '.join(missing)}; pass the scheduler pod as read from the API "
            "(it has metadata.name and metadata.uid) or a complete ownerReference."
        )
    return {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": owner["name"], "uid": owner["uid"],
            "controller": True, "blockOwnerDeletion": True}


def app_owner_step(pod: Pod, ctx: ExecutorPodContext) -> Pod:
    """The app's Lease owns the pod: deleting it (``gc`` of a dead app) garbage-collects the pod, even Pending."""
    if not ctx.app_owners:
        return pod
    pod = _clone(pod)
    meta = pod["metadata"]
    present = {r.get("uid") for r in meta.get("ownerReferences") or []}
    meta["ownerReferences"] = list(meta.get("ownerReferences") or []) + [
        dict(r) for r in ctx.app_owners if r.get("uid") not in present]
    return pod


def security_context_step(pod: Pod, ctx: ExecutorPodContext) -> Pod:
    """Restrictive defaults for the worker container, each only where the template says nothing.

    ``runAsNonRoot`` is set only when the pod or container sets a non-zero numeric ``runAsUser``:
    the kubelet can only check it against the image's user, and an image running as root (such as
    the official dask image) or with a named user would fail with CreateContainerConfigError.
    """
    if not ctx.settings.worker.secure_defaults:
        return pod
    pod = _clone(pod)
    pod_security = pod["spec"].get("securityContext") or {}
    container = worker_container(pod, ctx)
    security = container.setdefault("securityContext", {})
    security.setdefault("allowPrivilegeEscalation", False)
    security.setdefault("capabilities", {"drop": ["ALL"]})
    if "seccompProfile" not in security and "seccompProfile" not in pod_security:
        security["seccompProfile"] = {"type": "RuntimeDefault"}
    user = security.get("runAsUser", pod_security.get("runAsUser"))
    if isinstance(user, int) and user > 0 and "runAsNonRoot" not in security and "runAsNonRoot" not in pod_security:
        security["runAsNonRoot"] = True
    return pod


def tls_step(pod: Pod, ctx: ExecutorPodContext) -> Pod:
    """With ``k8s-backend.security.tls``: the worker reads the app's TLS Secret into distributed's config."""
    if not ctx.settings.security.tls:
        return pod
    pod = _clone(pod)
    container = worker_container(pod, ctx)
    container["env"] = _set_env(container.get("env") or [], tls_env(ctx.app))
    return pod


FEATURE_STEPS: tuple[FeatureStep, ...] = (
    basic_step,
    image_step,
    worker_command_step,
    env_step,
    resources_step,
    scheduling_step,
    service_account_step,
    owner_reference_step,
    app_owner_step,
    security_context_step,
    tls_step,
)


# --------------------------------------------------------------------------- builder
def base_pod(template: dict[str, Any] | None, settings: Settings) -> tuple[Pod, int]:
    """The starting pod and the worker container's index: the template's, or an empty worker pod."""
    container_name = settings.worker.pod_template_container_name
    if template is not None:
        validate_pod_template(template, "the pod template given as a dict", container_name)
        pod = template
    elif settings.worker.pod_template:
        pod = load_pod_template(settings.worker.pod_template, container_name)
    else:
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {}, "spec": {"containers": [{"name": DEFAULT_CONTAINER_NAME}]}}, 0
    return pod, worker_container_index(pod, container_name)


def build_executor_pod(
    *,
    executor_id: int,
    app: AppSpec,
    settings: Settings,
    scheduler_address: str,
    group: str = labels.DEFAULT_GROUP,
    template: dict | None = None,
    owner: dict | None = None,
    app_owners: Sequence[dict] = (),
    worker_args: Sequence[str] = (),
    steps: Sequence[FeatureStep] = FEATURE_STEPS,
) -> dict:
    """The pod to create for one executor (a new dict; the template is never modified).

    ``template`` (a dict) wins over ``settings.worker.pod_template`` (a file, cached by mtime);
    ``owner`` is the scheduler pod or an ownerReference to it; ``app_owners`` are ownerReferences to
    the app's Lease (added as they are: the caller decides which one is the controller); ``worker_args`` are appended to
    the ``dask worker`` command line.
    """
    if isinstance(executor_id, bool) or not isinstance(executor_id, int) or executor_id < 0:
        raise ValueError(f"executor_id must be a whole number >= 0, got {executor_id!r}.")
    pod, index = base_pod(template, settings)
    ctx = ExecutorPodContext(
        executor_id=executor_id, app=app, settings=settings, scheduler_address=scheduler_address,
        group=group, owner=owner, app_owners=tuple(app_owners), container_index=index, worker_args=tuple(worker_args),
    )
    for step in steps:
        pod = step(pod, ctx)
    return pod


def check_executor_pod(*, app: AppSpec, settings: Settings, template: dict | None = None) -> dict:
    """Build one sample pod now, so a bad template or worker setting fails before any pod is created.

    Call it when a cluster (or a worker group) is configured; it raises the same ``ValueError``
    the first real pod would, and reads nothing but the template file.
    """
    return build_executor_pod(executor_id=1, app=app, settings=settings, scheduler_address="tcp://scheduler:8786",
                              template=template)
