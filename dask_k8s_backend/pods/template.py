"""Load and validate worker pod templates (``k8s-backend.worker.pod-template``).

Data flow: a path (YAML or JSON file) or a dict -> :func:`load_pod_template` -> a validated,
deep-copied pod dict -> :func:`worker_container_index` picks the container that runs the
worker (``pod-template-container-name``, else the first) -> the pod builder's template step
starts from that pod. Every problem raises ``ValueError`` naming the option, the file, what is
wrong and how to fix it, so a bad template is refused before any pod is created.

Files are cached by (path, modification time, size): the builder may ask for the template of
every pod it creates without re-reading the file, and an edited file is picked up.
"""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path
from typing import Any

import yaml

logger = logging.getLogger(__name__)

OPTION = "k8s-backend.worker.pod-template"
CONTAINER_OPTION = "k8s-backend.worker.pod-template-container-name"

_CACHE_SIZE = 16
_cache: dict[tuple[str, float, int], Any] = {}


def load_pod_template(source: str | os.PathLike[str] | dict[str, Any], container_name: str | None = None) -> dict[str, Any]:
    """Return a validated deep copy of the pod template at ``source`` (a path or a dict).

    ``container_name`` is checked to exist in the template, so a typo fails here and not
    when the first pod is built.
    """
    if isinstance(source, dict):
        where = "the pod template given as a dict"
        pod = copy.deepcopy(source)
    else:
        path = Path(source).expanduser()
        where = f"the pod template file {str(path)!r}"
        pod = _read_file(path, where)
    validate_pod_template(pod, where, container_name)
    return pod


def validate_pod_template(pod: Any, where: str, container_name: str | None = None) -> None:
    """Raise ``ValueError`` unless ``pod`` is a Pod with containers (and ``container_name`` among them)."""
    fix = "give a Pod manifest such as deploy/pod-template.yaml"
    if not isinstance(pod, dict):
        raise ValueError(
            f"{OPTION}: {where} must be a mapping (a Pod manifest), got {type(pod).__name__}; {fix}."
        )
    kind = pod.get("kind", "Pod")
    if kind != "Pod":
        raise ValueError(f"{OPTION}: {where} has kind {kind!r}, expected 'Pod'; {fix} (not a Deployment or Job).")
    spec = pod.get("spec")
    if spec is None:
        raise ValueError(f"{OPTION}: {where} has no spec; {fix} with spec.containers.")
    if not isinstance(spec, dict):
        raise ValueError(f"{OPTION}: {where} has a spec that is not a mapping; {fix}.")
    containers = spec.get("containers")
    if not containers or not isinstance(containers, list):
        raise ValueError(
            f"{OPTION}: {where} has no spec.containers; add at least one container "
            "(its command, args and resources are set by the backend)."
        )
    for i, container in enumerate(containers):
        if not isinstance(container, dict):
            raise ValueError(f"{OPTION}: {where}: spec.containers[{i}] is not a mapping; {fix}.")
    metadata = pod.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise ValueError(f"{OPTION}: {where} has metadata that is not a mapping; {fix}.")
    worker_container_index(pod, container_name, where)


def worker_container_index(pod: dict[str, Any], container_name: str | None, where: str = "the pod template") -> int:
    """Index of the container that runs the worker: the one named ``container_name``, else the first."""
    containers = pod["spec"]["containers"]
    if container_name is None:
        return 0
    names = [c.get("name") for c in containers]
    if container_name in names:
        return names.index(container_name)
    raise ValueError(
        f"{CONTAINER_OPTION}: container {container_name!r} is not in {where} "
        f"(its containers are {names}); set {CONTAINER_OPTION} to one of them, or to null for the first."
    )


def _read_file(path: Path, where: str) -> Any:
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise ValueError(
            f"{OPTION}: {where} does not exist; check the path (relative paths are resolved from "
            f"{os.getcwd()!r}) or set {OPTION} to null."
        ) from None
    except OSError as e:
        raise ValueError(f"{OPTION}: {where} cannot be read ({e.strerror}); check the path and its permissions.") from e
    if path.is_dir():
        raise ValueError(f"{OPTION}: {where} is a directory; give the path of a YAML or JSON file.")
    key = (str(path.resolve()), stat.st_mtime, stat.st_size)
    cached = _cache.get(key)
    if cached is not None:
        return copy.deepcopy(cached)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{OPTION}: {where} cannot be read as UTF-8 text ({e}); check the file.") from e
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]  # JSON is YAML too
    except yaml.YAMLError as e:
        raise ValueError(f"{OPTION}: {where} is not valid YAML or JSON: {_yaml_problem(e)}; fix the syntax.") from e
    if not docs:
        raise ValueError(f"{OPTION}: {where} is empty; give a Pod manifest such as deploy/pod-template.yaml.")
    if len(docs) > 1:
        raise ValueError(f"{OPTION}: {where} holds {len(docs)} YAML documents; keep only the Pod.")
    logger.debug("loaded pod template %s", path)
    if len(_cache) >= _CACHE_SIZE:  # a few templates (one per worker group) in practice
        _cache.clear()
    _cache[key] = docs[0]
    return copy.deepcopy(docs[0])


def _yaml_problem(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    if mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return str(problem)
