"""A container's environment and command line, resolved the way a kubelet resolves them.

Data flow: the process kubelet calls :func:`container_env` with the pod (already holding its
pod IP), the container and a ``lookup(resource, namespace, name)`` for Secrets and ConfigMaps;
then :func:`command_line` expands ``$(VAR)`` references in command and args with that env and
maps ``dask``/``python``/``python3`` to this interpreter's environment (the image is not run,
so the tools installed next to ``sys.executable`` stand in for it).

Rules followed (Kubernetes ``expansion`` and ``envvars`` packages): ``envFrom`` first, then
``env`` in order, each value may refer to variables defined before it; ``$(VAR)`` of an
undefined variable is left as is and ``$$`` is an escaped ``$``; downward-API ``fieldRef`` and
``resourceFieldRef``; a missing Secret/ConfigMap key that is not optional is a
CreateContainerConfigError (raised as :class:`ContainerConfigError`).
"""

from __future__ import annotations

import base64
import math
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Callable, Mapping

from dask_k8s_backend.kube import resources as res

Lookup = Callable[[str, str, str], "dict[str, Any] | None"]

#: Host variables a local process needs to run at all (a real container gets them from its image).
_HOST_PASSTHROUGH = ("HOME", "LANG", "LC_ALL", "TMPDIR", "PYTHONPATH", "SYSTEMROOT", "USER")


class ContainerConfigError(Exception):
    """The container cannot be configured (missing Secret/ConfigMap key, bad field path)."""


def interpreter_bin() -> Path:
    """The directory holding this interpreter and the scripts installed with it (``dask``)."""
    return Path(sys.executable).parent


def base_env(pod: Mapping[str, Any]) -> dict[str, str]:
    """What every container starts with: PATH with this environment's bin first, HOSTNAME, host basics."""
    env = {k: os.environ[k] for k in _HOST_PASSTHROUGH if k in os.environ}
    env["PATH"] = os.pathsep.join([str(interpreter_bin()), os.environ.get("PATH", os.defpath)])
    spec, meta = pod.get("spec") or {}, pod.get("metadata") or {}
    env["HOSTNAME"] = spec.get("hostname") or meta.get("name", "")
    return env


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: defined variables replaced, ``$$`` -> ``$``, the rest kept."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch != "$" or i + 1 >= n:
            out.append(ch)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "(":
            end = text.find(")", i + 2)
            if end < 0:
                out.append(text[i:])
                break
            name = text[i + 2:end]
            out.append(env[name] if name in env else text[i:end + 1])
            i = end + 1
        else:
            out.append("$")
            i += 1
    return "".join(out)


def field_ref(pod: Mapping[str, Any], path: str) -> str:
    """The value of a downward-API ``fieldRef.fieldPath``."""
    meta, spec, status = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
    simple = {
        "metadata.name": meta.get("name"), "metadata.namespace": meta.get("namespace") or "default",
        "metadata.uid": meta.get("uid"), "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName") or "default",
        "status.podIP": status.get("podIP"), "status.hostIP": status.get("hostIP"),
        "status.podIPs": ",".join(ip["ip"] for ip in status.get("podIPs") or []),
        "status.hostIPs": ",".join(ip["ip"] for ip in status.get("hostIPs") or []),
    }
    if path in simple:
        return str(simple[path] or "")
    for prefix, source in (("metadata.labels", meta.get("labels")), ("metadata.annotations", meta.get("annotations"))):
        if path.startswith(prefix + "['") and path.endswith("']"):
            return str((source or {}).get(path[len(prefix) + 2:-2], ""))
    raise ContainerConfigError(f"unsupported fieldPath {path!r} in a downward-API fieldRef")


def resource_field_ref(pod: Mapping[str, Any], container: Mapping[str, Any], ref: Mapping[str, Any]) -> str:
    """``resourceFieldRef`` (``limits.memory``, ``requests.cpu``, ...), divided by ``divisor`` and rounded up."""
    target = container
    if ref.get("containerName"):
        for c in (pod.get("spec") or {}).get("containers") or []:
            if c.get("name") == ref["containerName"]:
                target = c
    kind, _, name = str(ref.get("resource", "")).partition(".")
    value = ((target.get("resources") or {}).get(kind) or {}).get(name)
    if value is None:
        return "0"
    quantity = res.parse_quantity(value, what=f"resourceFieldRef {ref.get('resource')}")
    divisor = res.parse_quantity(ref.get("divisor") or "1", what="resourceFieldRef.divisor")
    return str(int(math.ceil(quantity / divisor)))


def _key_ref(lookup: Lookup, resource: str, namespace: str, ref: Mapping[str, Any]) -> str | None:
    obj = lookup(resource, namespace, ref.get("name", ""))
    kind = "secret" if resource == "secrets" else "configmap"
    optional = bool(ref.get("optional"))
    if obj is None:
        if optional:
            return None
        raise ContainerConfigError(f'{kind} "{ref.get("name", "")}" not found')
    data = _data(obj, resource)
    if ref.get("key") not in data:
        if optional:
            return None
        raise ContainerConfigError(f"couldn't find key {ref.get('key')} in {kind.capitalize()} {namespace}/{ref.get('name')}")
    return data[ref["key"]]


def _data(obj: Mapping[str, Any], resource: str) -> dict[str, str]:
    if resource == "secrets":
        out = {k: base64.b64decode(v).decode("utf-8", "replace") for k, v in (obj.get("data") or {}).items()}
        out.update(obj.get("stringData") or {})
        return out
    return {**(obj.get("binaryData") or {}), **(obj.get("data") or {})}


def container_env(pod: Mapping[str, Any], container: Mapping[str, Any], lookup: Lookup) -> dict[str, str]:
    """The environment the container's process sees (base env, envFrom, then env in order)."""
    namespace = (pod.get("metadata") or {}).get("namespace") or "default"
    env = base_env(pod)
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix") or ""
        for resource, key in (("configmaps", "configMapRef"), ("secrets", "secretRef")):
            ref = source.get(key)
            if not ref:
                continue
            obj = lookup(resource, namespace, ref.get("name", ""))
            if obj is None:
                if ref.get("optional"):
                    continue
                kind = "secret" if resource == "secrets" else "configmap"
                raise ContainerConfigError(f'{kind} "{ref.get("name", "")}" not found')
            env.update({prefix + k: v for k, v in _data(obj, resource).items()})
    for var in container.get("env") or []:
        value = _env_value(pod, container, var, env, lookup, namespace)
        if value is not None:
            env[var["name"]] = value
    here = str(interpreter_bin())
    if here not in env.get("PATH", "").split(os.pathsep):  # a pod's own PATH still finds `dask`
        env["PATH"] = os.pathsep.join(p for p in (here, env.get("PATH")) if p)
    return env


def _env_value(pod, container, var, env, lookup, namespace) -> str | None:
    if "value" in var or not var.get("valueFrom"):
        return expand(str(var.get("value") or ""), env)
    source = var["valueFrom"]
    if source.get("fieldRef"):
        return field_ref(pod, source["fieldRef"].get("fieldPath", ""))
    if source.get("resourceFieldRef"):
        return resource_field_ref(pod, container, source["resourceFieldRef"])
    if source.get("secretKeyRef"):
        return _key_ref(lookup, "secrets", namespace, source["secretKeyRef"])
    if source.get("configMapKeyRef"):
        return _key_ref(lookup, "configmaps", namespace, source["configMapKeyRef"])
    return ""


def resolve_program(name: str, path: str) -> str | None:
    """``python``/``python3`` -> this interpreter; other names looked up on the container's PATH."""
    if name in ("python", "python3", "python" + sys.version[:1]):
        return sys.executable
    if os.sep in name:
        return name if os.access(name, os.X_OK) and os.path.isfile(name) else None
    return shutil.which(name, path=path)


#: A container with neither command nor args runs until it is stopped, like a ``pause`` image.
IDLE_COMMAND = ("python", "-c", "import signal; signal.pause()")


def command_line(container: Mapping[str, Any], env: Mapping[str, str]) -> list[str]:
    """command + args with ``$(VAR)`` expanded; without a command the args are the command line.

    The args-only form matches images whose entrypoint runs ``"$@"`` (the official dask image).
    The first word is not resolved here: see :func:`resolve_program`.
    """
    command = [expand(str(c), env) for c in container.get("command") or []]
    args = [expand(str(a), env) for a in container.get("args") or []]
    argv = command + args
    return argv if argv else list(IDLE_COMMAND)
