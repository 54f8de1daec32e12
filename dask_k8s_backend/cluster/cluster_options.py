"""KubeSparkCluster's options: the user's arguments checked and turned into settings, before anything exists.

Every refusal of a bad argument happens here, in the constructor or in ``add_worker_group``, before a
connection, a scheduler or a pod is made. Data flow::

    KubeSparkCluster(master=..., worker_cores=..., **config)
        ─> kwargs_to_overrides + flatten_overrides ─> dotted k8s-backend.* keys ─> config.load_settings
        ─> new_app_spec (the app's id and name) ─> refuse_outliving_embedded
    add_worker_group(name, worker_cores=..., image=...)
        ─> group_options (worker.* keys, deprecated names) ─> validate_group_image ─> check_group_template_image

Worker counts (``n_workers``, ``scale(n)``, ``adapt(minimum, maximum)``) go through :func:`validate_worker_count`.
"""

from __future__ import annotations

import uuid
import warnings
from typing import Any

from ..config import Settings
from ..pods.builder import AppSpec, base_pod


def kwargs_to_overrides(**kwargs: Any) -> dict[str, Any]:
    """Map the explicit constructor arguments to dotted configuration keys (None = unset)."""
    mapping = {
        "master": "master",
        "namespace": "namespace",
        "image": "image",
        "name": "name",
        "deploy_mode": "deploy-mode",
        "worker_cores": "worker.cores",
        "worker_memory": "worker.memory",
        "env": "worker.env",
        "labels": "worker.labels",
        "annotations": "worker.annotations",
        "node_selector": "worker.node-selector",
        "tolerations": "worker.tolerations",
        "service_account": "worker.service-account",
        "pod_template": "worker.pod-template",
    }
    return {mapping[k]: v for k, v in kwargs.items() if v is not None}


SECTIONS = ("scheduler", "worker", "allocation", "adaptive", "executor", "api", "authenticate", "security")


def flatten_overrides(config: dict[str, Any]) -> dict[str, Any]:
    """{"worker": {"memory": "2GiB"}, "image_pull_policy": "Always"} -> dotted kebab-case keys.

    Only the configuration's sections are descended into: mapping-valued options such as
    ``worker.env`` stay whole.
    """
    flat: dict[str, Any] = {}
    for key, value in config.items():
        key = key.replace("_", "-")
        if key in SECTIONS and isinstance(value, dict):
            flat.update({f"{key}.{k.replace('_', '-')}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


# add_worker_group's arguments -> the group's worker.* keys (the constructor's names, minus the app-wide ones)
GROUP_OPTIONS = {
    "worker_cores": "cores", "worker_memory": "memory", "resources": "resources", "node_selector": "node-selector",
    "tolerations": "tolerations", "pod_template": "pod-template", "env": "env", "labels": "labels",
    "annotations": "annotations",
}
DEPRECATED_GROUP_OPTIONS = {"cores": "worker_cores", "memory": "worker_memory"}


def group_options(group: str, given: dict[str, Any], deprecated: dict[str, Any]) -> dict[str, Any]:
    """``add_worker_group``'s explicit arguments as worker.* keys (a template dict travels apart).

    The old names ``cores=``/``memory=`` still work, with a FutureWarning naming the new one; giving
    both names of one option is refused, since which one wins would be a guess.
    """
    options = dict(given)
    for old, value in deprecated.items():
        if value is None:
            continue
        new = DEPRECATED_GROUP_OPTIONS[old]
        if options.get(new) is not None:
            raise ValueError(f"add_worker_group({group!r}, {old}={value!r}, {new}={options[new]!r}): {old} is the "
                             f"deprecated name of {new}; pass only {new}=...")
        warnings.warn(f"add_worker_group({old}=...) is deprecated and will be removed; use {new}={value!r}, the "
                      "name KubeSparkCluster(...) uses", FutureWarning, stacklevel=3)
        options[new] = value
    if isinstance(options.get("pod_template"), dict):
        options["pod_template"] = None
    return {GROUP_OPTIONS[k]: v for k, v in options.items() if v is not None}


def validate_group_image(group: str, image: Any) -> str | None:
    """The group's own image, or None to use the cluster's; refused before anything is created when blank."""
    if image is not None and (not isinstance(image, str) or not image.strip() or image != image.strip()):
        raise ValueError(f"add_worker_group({group!r}, image={image!r}): expected an image reference such as "
                         "'ghcr.io/dask/dask:latest'; leave image out to use the cluster's image")
    return image


def check_group_template_image(group: str, image: str | None, template: dict | None, settings: Settings) -> None:
    """A group's ``image=`` and an image pinned by its pod template contradict each other (the template's
    would win, silently): refuse the pair and say which to drop."""
    if image is None:
        return
    pod, index = base_pod(template, settings)
    pinned = pod["spec"]["containers"][index].get("image")
    if pinned and pinned != image:
        raise ValueError(f"add_worker_group({group!r}, image={image!r}): the group's pod_template already sets the "
                         f"worker container's image to {pinned!r}, which would win; pass only one of them")


def refuse_outliving_embedded(settings: Settings, shutdown_on_close: bool) -> None:
    """Cluster deploy mode with shutdown_on_close=False keeps the scheduler pod after this process ends; on
    the in-process embedded Kubernetes that pod would outlive the Kubernetes that runs it. Refused before
    anything is created, pointing to an embedded Kubernetes in a process of its own."""
    if settings.deploy_mode != "cluster" or shutdown_on_close or not settings.master.startswith("embedded://"):
        return
    raise ValueError(
        f"KubeSparkCluster(deploy_mode='cluster', shutdown_on_close=False) on master {settings.master!r}: the embedded "
        "Kubernetes runs inside this Python process, so the scheduler pod meant to outlive it would lose its "
        "Kubernetes (and keep running unmanaged) when this process exits; nothing was created. Run the embedded "
        "Kubernetes in a process of its own, `python -m dask_k8s_backend embedded --kubeconfig F`, and connect with "
        "KubeSparkCluster(master=\"k8s://\", authenticate={\"kubeconfig\": F}, deploy_mode=\"cluster\", "
        "shutdown_on_close=False) (or export KUBECONFIG=F); or keep shutdown_on_close=True."
    )


def validate_worker_count(value: Any, option: str) -> int:
    """Worker counts must be whole numbers >= 0; reject before anything is created."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{option}: expected a whole number of workers >= 0, got {value!r}; pass an int such as 4")
    return value


def new_app_spec(settings: Settings) -> AppSpec:
    """The app's identity: a fresh id, the configured name (or ``dask-<random>``) and the namespace."""
    return AppSpec(
        app_id=uuid.uuid4().hex[:10],
        app_name=settings.name or f"dask-{uuid.uuid4().hex[:6]}",
        namespace=settings.namespace,
    )
