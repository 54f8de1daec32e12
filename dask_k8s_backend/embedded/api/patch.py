"""PATCH bodies applied to stored objects: JSON merge, strategic merge and JSON patch.

The API server reads the current object, calls :func:`apply_patch` with the request's
Content-Type and parsed body, and writes the result back with the store's ``replace`` (so the
usual validation and optimistic concurrency apply). Nothing here touches the store.

Strategic merge follows Kubernetes' rules for core/v1 objects: lists of objects with a merge key
(``containers`` by ``name``, ``ports`` by ``containerPort``, ``conditions`` by ``type``, ...) are
merged element by element, ``$patch: delete`` / ``$patch: replace`` directives are honoured,
``$deleteFromPrimitiveList/<field>`` removes values from merged primitive lists (``finalizers``),
and other lists are replaced as in a JSON merge patch.
"""

from __future__ import annotations

import copy
from typing import Any

from ..status import StatusError, bad_request, unsupported_media_type

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
PATCH_TYPES = (JSON_PATCH, MERGE_PATCH, STRATEGIC_MERGE_PATCH)

# field name -> merge key for lists of objects merged element by element (core/v1 patchMergeKey)
MERGE_KEYS: dict[str, str] = {
    "containers": "name", "initContainers": "name", "ephemeralContainers": "name", "volumes": "name",
    "env": "name", "imagePullSecrets": "name", "volumeMounts": "mountPath", "volumeDevices": "devicePath",
    "ports": "containerPort", "conditions": "type", "ownerReferences": "uid", "hostAliases": "ip",
    "containerStatuses": "name", "initContainerStatuses": "name", "podIPs": "ip", "addresses": "type",
    "topologySpreadConstraints": "topologyKey", "resourceClaims": "name", "readinessGates": "conditionType",
}
# primitive lists merged as sets rather than replaced
MERGED_PRIMITIVE_LISTS = frozenset({"finalizers"})
_DELETE_PRIMITIVE = "$deleteFromPrimitiveList/"
_SET_ORDER = "$setElementOrder/"


def apply_patch(content_type: str, current: dict, patch: Any) -> dict:
    """The object ``current`` becomes after ``patch``; 415 for unknown patch types, 422/400 for bad patches."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media == JSON_PATCH:
        return json_patch(current, patch)
    if media == MERGE_PATCH:
        _require_object(patch)
        return merge_patch(current, patch)
    if media == STRATEGIC_MERGE_PATCH:
        _require_object(patch)
        return strategic_merge(current, patch)
    raise unsupported_media_type(content_type)


def _require_object(patch: Any) -> None:
    if not isinstance(patch, dict):
        raise bad_request(f"a merge patch must be a JSON object, got {type(patch).__name__}")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, ``null`` deletes, everything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def strategic_merge(target: Any, patch: Any, field: str = "") -> Any:
    """Kubernetes strategic merge patch of ``patch`` onto ``target`` (see module docstring)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    directive = patch.get("$patch")
    if directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if directive == "delete":
        return None
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys") or key.startswith(_SET_ORDER):
            continue
        if key.startswith(_DELETE_PRIMITIVE):
            name = key[len(_DELETE_PRIMITIVE):]
            result[name] = [v for v in result.get(name) or [] if v not in (value or [])]
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list):
            result[key] = _merge_list(key, result.get(key), value)
        else:
            merged = strategic_merge(result.get(key), value, key)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
    return result


def _merge_list(field: str, current: Any, patch: list) -> list:
    current = current if isinstance(current, list) else []
    if field in MERGED_PRIMITIVE_LISTS:
        return list(current) + [v for v in patch if v not in current]
    key = MERGE_KEYS.get(field)
    if key is None or not all(isinstance(v, dict) for v in patch):
        return copy.deepcopy(patch)
    if any(v.get("$patch") == "replace" for v in patch):
        return [copy.deepcopy(v) for v in patch if v.get("$patch") != "replace"]
    result = [copy.deepcopy(v) for v in current]
    for item in patch:
        index = next((i for i, v in enumerate(result) if isinstance(v, dict) and v.get(key) == item.get(key)), None)
        if item.get("$patch") == "delete":
            if index is not None:
                del result[index]
        elif index is None:
            result.append({k: copy.deepcopy(v) for k, v in item.items() if k != "$patch"})
        else:
            result[index] = strategic_merge(result[index], item, field)
    return result


# ------------------------------------------------------------------------- JSON patch (RFC 6902)


def _pointer(path: Any) -> list[str]:
    if not isinstance(path, str) or (path and not path.startswith("/")):
        raise _invalid_patch(f"the JSON pointer {path!r} must be empty or start with '/'")
    return [p.replace("~1", "/").replace("~0", "~") for p in path.split("/")[1:]]


def _invalid_patch(message: str) -> StatusError:
    return StatusError(422, "Invalid", f"the JSON patch is invalid: {message}")


def _parent(doc: Any, parts: list[str], path: str) -> tuple[Any, str]:
    node = doc
    for part in parts[:-1]:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise _invalid_patch(f"doc is missing path: {path!r}")
    return node, parts[-1]


def _get(doc: Any, path: str) -> Any:
    parts = _pointer(path)
    if not parts:
        return doc
    parent, last = _parent(doc, parts, path)
    if isinstance(parent, dict) and last in parent:
        return parent[last]
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return parent[int(last)]
    raise _invalid_patch(f"doc is missing path: {path!r}")


def _remove(doc: Any, path: str) -> Any:
    parent, last = _parent(doc, _pointer(path), path)
    if isinstance(parent, dict) and last in parent:
        return parent.pop(last)
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return parent.pop(int(last))
    raise _invalid_patch(f"unable to remove nonexistent key: {path!r}")


def _add(doc: Any, path: str, value: Any, replace: bool = False) -> Any:
    parts = _pointer(path)
    if not parts:
        return copy.deepcopy(value)
    parent, last = _parent(doc, parts, path)
    if isinstance(parent, dict):
        if replace and last not in parent:
            raise _invalid_patch(f"replace operation does not apply: doc is missing key: {path!r}")
        parent[last] = copy.deepcopy(value)
    elif isinstance(parent, list):
        if last == "-" and not replace:
            parent.append(copy.deepcopy(value))
        elif last.isdigit() and int(last) <= len(parent) - (1 if replace else 0):
            if replace:
                parent[int(last)] = copy.deepcopy(value)
            else:
                parent.insert(int(last), copy.deepcopy(value))
        else:
            raise _invalid_patch(f"index out of range in {path!r}")
    else:
        raise _invalid_patch(f"doc is missing path: {path!r}")
    return doc


def json_patch(current: dict, operations: Any) -> dict:
    """RFC 6902 operations (add, remove, replace, move, copy, test) applied in order."""
    if not isinstance(operations, list):
        raise bad_request("a JSON patch must be a JSON array of operations")
    doc: Any = copy.deepcopy(current)
    for op in operations:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise _invalid_patch(f"operation {op!r} needs 'op' and 'path'")
        kind, path = op["op"], op["path"]
        if kind in ("add", "replace", "test") and "value" not in op:
            raise _invalid_patch(f"operation {kind!r} on {path!r} needs a 'value'")
        if kind == "add":
            doc = _add(doc, path, op["value"])
        elif kind == "replace":
            doc = _add(doc, path, op["value"], replace=True)
        elif kind == "remove":
            _remove(doc, path)
        elif kind == "move":
            doc = _add(doc, path, _remove(doc, op.get("from", "")))
        elif kind == "copy":
            doc = _add(doc, path, _get(doc, op.get("from", "")))
        elif kind == "test":
            if _get(doc, path) != op["value"]:
                raise _invalid_patch(f"testing value {path!r} failed")
        else:
            raise _invalid_patch(f"unknown operation {kind!r}")
    if not isinstance(doc, dict):
        raise _invalid_patch("the patched document is not a JSON object")
    return doc
