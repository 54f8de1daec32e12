"""How a stored version is held: the immutable :class:`Entry` and the :class:`WatchEvent` that announces it.

Apart from the store's logic because the API server's LIST, GET and WATCH paths serve these
objects' cached JSON bytes directly, and because freezing (bytes plus a selector view instead of
the parsed dict) is the store's memory model on its own.
"""

from __future__ import annotations

import json
from typing import Any, Iterable

from .resource_table import Key
from .selectors import FIELDS


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


class Entry:
    """One stored version of an object; never mutated after it is committed.

    Like etcd, the store keeps objects serialized: once a version is committed and its
    subscribers have seen it, :meth:`freeze` keeps only its JSON bytes (what LIST and WATCH
    send anyway) and a small view (metadata plus the fields selectors read), and drops the
    parsed dict, which costs six times the bytes. That is what keeps 10,000 busy pods small.
    ``obj`` of a frozen entry is parsed on each call: hot paths read :attr:`meta` or
    :attr:`view`, which never parse.
    """

    __slots__ = ("_obj", "_json", "_view")

    def __init__(self, obj: dict) -> None:
        self._obj: dict | None = obj
        self._json: bytes | None = None
        self._view: dict | None = None

    @property
    def obj(self) -> dict:
        """The object (read-only; parsed anew on each call once frozen)."""
        obj = self._obj
        return obj if obj is not None else json.loads(self._json)  # type: ignore[arg-type]

    @property
    def view(self) -> dict:
        """Enough of the object for label and field selectors (read-only)."""
        obj = self._obj
        return obj if obj is not None else self._view  # type: ignore[return-value]

    @property
    def meta(self) -> dict:
        """The object's metadata (read-only)."""
        return self.view["metadata"]

    def json(self) -> bytes:
        """The object's JSON bytes, serialized once (racing threads compute the same bytes)."""
        data = self._json
        if data is None:
            data = self._json = dumps(self._obj)
        return data

    def copy(self) -> dict:
        return json.loads(self.json())

    def freeze(self, resource: str) -> None:
        """Keep the bytes and a selector view, drop the dict."""
        obj = self._obj
        if obj is None:
            return
        self.json()
        view: dict = {"metadata": obj.get("metadata") or {}}
        for parts in _FIELD_PATHS.get(resource, ()):
            value: Any = obj
            for part in parts:
                value = value.get(part) if isinstance(value, dict) else None
            if value is not None:
                node = view
                for part in parts[:-1]:
                    node = node.setdefault(part, {})
                node[parts[-1]] = value
        self._view = view
        self._obj = None


_FIELD_PATHS: dict[str, tuple[tuple[str, ...], ...]] = {
    resource: tuple(tuple(path.split(".")) for path in sorted(paths)) for resource, paths in FIELDS.items()}


class WatchEvent:
    """A committed change: ``old`` is the previous version (None for ADDED)."""

    __slots__ = ("type", "resource", "entry", "old", "rv")

    def __init__(self, type_: str, resource: str, entry: Entry, old: Entry | None, rv: int) -> None:
        self.type = type_
        self.resource = resource
        self.entry = entry
        self.old = old
        self.rv = rv



def entry_key(entry: Entry) -> Key:
    meta = entry.meta
    return (meta.get("namespace"), meta["name"])


def iter_events(events: Iterable[WatchEvent], resource: str) -> Iterable[WatchEvent]:
    """The events of one resource."""
    return (e for e in events if e.resource == resource)
