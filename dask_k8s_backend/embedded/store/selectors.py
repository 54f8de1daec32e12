"""Label and field selectors of the embedded API server, parsed once into predicates.

A selector string from a list/watch/deletecollection request (``app=x,tier in (a,b),!canary``
or ``status.phase!=Running,spec.nodeName=n1``) is parsed by :func:`parse_label_selector` /
:func:`parse_field_selector` into a :class:`Selector`: a callable ``obj -> bool`` that the
object store applies to each stored object. Malformed selectors raise a 400 ``StatusError``
with the message kube-apiserver would give, so clients see the same failure as on a real cluster.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping

from ..status import bad_request

Predicate = Callable[[Mapping[str, Any]], bool]

_KEY = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                  r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_SET_TERM = re.compile(r"^\s*(\S+)\s+(in|notin)\s+\((.*)\)\s*$")
_EQ_TERM = re.compile(r"^\s*([^=!\s]+)\s*(==|!=|=)\s*(\S*)\s*$")

# Fields each resource can be selected by, besides metadata.name and metadata.namespace.
FIELDS: dict[str, frozenset[str]] = {
    "pods": frozenset({"spec.nodeName", "spec.restartPolicy", "spec.schedulerName", "spec.serviceAccountName",
                       "status.phase", "status.podIP", "status.nominatedNodeName", "spec.hostNetwork"}),
    "events": frozenset({"involvedObject.kind", "involvedObject.namespace", "involvedObject.name",
                         "involvedObject.uid", "involvedObject.apiVersion", "involvedObject.resourceVersion",
                         "involvedObject.fieldPath", "reason", "reportingComponent", "source", "type"}),
    "secrets": frozenset({"type"}),
    "namespaces": frozenset({"status.phase"}),
    "nodes": frozenset({"spec.unschedulable"}),
}


class Selector:
    """A parsed selector: ``selector(obj)`` tells whether ``obj`` matches; empty matches all."""

    def __init__(self, text: str, predicates: list[Predicate]) -> None:
        self.text = text
        self._predicates = predicates

    @property
    def empty(self) -> bool:
        return not self._predicates

    def __call__(self, obj: Mapping[str, Any]) -> bool:
        return all(p(obj) for p in self._predicates)

    def __repr__(self) -> str:
        return f"Selector({self.text!r})"


MATCH_ALL = Selector("", [])


def _split_terms(text: str) -> list[str]:
    """Split on commas that are not inside ``( )``."""
    terms, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            terms.append(text[start:i])
            start = i + 1
    terms.append(text[start:])
    return [t.strip() for t in terms if t.strip()]


def _labels(obj: Mapping[str, Any]) -> Mapping[str, str]:
    return (obj.get("metadata") or {}).get("labels") or {}


def _check_key(key: str, text: str) -> None:
    if not _KEY.match(key) or len(key.split("/")[-1]) > 63:
        raise bad_request(f"unable to parse requirement: invalid label key {key!r} in selector {text!r}: "
                          "name part must consist of alphanumeric characters, '-', '_' or '.'")


def _check_value(value: str, text: str) -> None:
    if len(value) > 63 or not _VALUE.match(value):
        raise bad_request(f"unable to parse requirement: invalid label value {value!r} in selector {text!r}: "
                          "a valid label must be an empty string or consist of alphanumeric characters, "
                          "'-', '_' or '.'")


def _label_term(term: str, text: str) -> Predicate:
    match = _SET_TERM.match(term)
    if match:
        key, op, raw = match.groups()
        _check_key(key, text)
        values = frozenset(v.strip() for v in raw.split(",") if v.strip())
        for value in values:
            _check_value(value, text)
        if op == "in":
            return lambda o: _labels(o).get(key) in values
        return lambda o: _labels(o).get(key) not in values
    match = _EQ_TERM.match(term)
    if match:
        key, op, value = match.groups()
        _check_key(key, text)
        _check_value(value, text)
        if op == "!=":
            return lambda o: _labels(o).get(key) != value
        return lambda o: _labels(o).get(key) == value
    if term.startswith("!"):
        key = term[1:].strip()
        _check_key(key, text)
        return lambda o: key not in _labels(o)
    _check_key(term, text)
    return lambda o: term in _labels(o)


def parse_label_selector(text: str | None) -> Selector:
    """Equality (``a=b``, ``a==b``, ``a!=b``) and set-based (``a in (x,y)``, ``a notin (x)``, ``a``, ``!a``)."""
    if not text or not text.strip():
        return MATCH_ALL
    return Selector(text, [_label_term(term, text) for term in _split_terms(text)])


def field_value(obj: Mapping[str, Any], path: str) -> str:
    """The value of a dotted field as the API server compares it: a string, '' when absent."""
    value: Any = obj
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return ""
        value = value.get(part)
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def parse_field_selector(text: str | None, resource: str) -> Selector:
    """``field=value``, ``field==value``, ``field!=value`` terms for the fields ``resource`` supports."""
    if not text or not text.strip():
        return MATCH_ALL
    allowed = FIELDS.get(resource, frozenset()) | {"metadata.name", "metadata.namespace"}
    predicates: list[Predicate] = []
    for term in _split_terms(text):
        match = re.match(r"^\s*([^=!\s]+)\s*(==|!=|=)\s*(.*?)\s*$", term)
        if not match:
            raise bad_request(f"invalid selector: {text!r}; can't understand {term!r}")
        field, op, value = match.groups()
        if field not in allowed:
            raise bad_request(f'field label not supported: {field}')
        if op == "!=":
            predicates.append(lambda o, f=field, v=value: field_value(o, f) != v)
        else:
            predicates.append(lambda o, f=field, v=value: field_value(o, f) == v)
    return Selector(text, predicates)
