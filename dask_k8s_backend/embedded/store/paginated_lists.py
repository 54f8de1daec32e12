"""LIST at one resourceVersion, page by page, as kube-apiserver serves it (a mixin of :class:`ObjectStore`).

Every page of a list is cut from one snapshot: an older version is rebuilt from the current
objects and the store's event history, so no page copies the store. Separate from the store's
writes because it only reads the history, and its continue tokens and 410 answers follow
upstream's storage layer rather than the registry's.
"""

from __future__ import annotations

from typing import Iterable

from ..status import gone
from .entries import Entry, entry_key
from .listoptions import decode_continue, encode_continue
from .resource_table import Key, key_string, resource_info
from .selectors import Selector, parse_field_selector, parse_label_selector

# upstream's messages (apiserver pkg/storage/etcd3/errors.go)
_LIST_EXPIRED = "The resourceVersion for the provided list is too old."
_CONTINUE_EXPIRED = ("The provided continue parameter is too old to display a consistent list result. You can start "
                     "a new list without the continue parameter, or use the continue token in this response to "
                     "retrieve the remainder of the results. Continuing with the provided token results in an "
                     "inconsistent list - objects that were created, modified, or deleted between the time the "
                     "first chunk was returned and now may show up in the list.")



class PaginatedLists:
    """``list_entries`` of :class:`~.object_store.ObjectStore`: reads its lock, objects, resourceVersion and history."""

    def list_entries(self, resource: str, namespace: str | None = None, *, label_selector: str | None = None,
                     field_selector: str | None = None, limit: int | None = None, continue_token: str | None = None,
                     resource_version: int | None = None) -> tuple[list[Entry], str, str | None, int | None]:
        """Like :meth:`list` but read-only entries, plus the remaining item count when paginated.

        Every page of a list comes from one snapshot, as kube-apiserver serves them: the first at
        ``resource_version`` (None: now), later ones at the version their continue token carries.
        An older version is rebuilt from the current objects and the event history after it
        (objects created, changed or deleted since show as they were), so no page copies the
        store. A version the history no longer covers is 410 Expired; for a continue token the
        answer carries a fresh token that continues at the latest version, as upstream's does.
        Items are in etcd key order (``namespace/name``).
        """
        info = resource_info(resource)
        labels = parse_label_selector(label_selector)
        fields = parse_field_selector(field_selector, resource)
        prefix = f"{namespace}/" if namespace is not None and info.namespaced else ""
        at, start = resource_version, prefix
        if continue_token:
            at, relative = decode_continue(continue_token)
            at, start = (None if at < 0 else at), prefix + relative
        with self._lock:
            at = self._rv if at is None else min(at, self._rv)  # the API server answers 504 for a future version
            changed = self._versions_at(resource, at, start[len(prefix):] if continue_token else None)
            items = self._snapshot_items(resource, changed, prefix, start)
        return _page(items, labels, fields, limit or 0, at, prefix)

    def _versions_at(self, resource: str, rv: int, continue_start: str | None) -> dict[Key, Entry | None]:
        """The version at ``rv`` of each ``resource`` object changed since (None: it did not exist then)."""
        if rv < self._history_floor:
            if continue_start is not None:
                raise gone(_CONTINUE_EXPIRED, encode_continue(-1, continue_start))
            raise gone(_LIST_EXPIRED)
        before: dict[Key, Entry | None] = {}
        for event in self._history_after(rv):
            if event.resource == resource:
                before.setdefault(entry_key(event.entry), event.old)
        return before

    def _snapshot_items(self, resource: str, changed: dict[Key, Entry | None], prefix: str, start: str
                        ) -> list[tuple[str, Entry]]:
        """``(key string, entry)`` of the snapshot's objects under ``prefix`` from ``start`` on, in key order."""
        objects = self._objects[resource]
        keys: Iterable[Key] = objects.keys() | changed.keys() if changed else objects.keys()
        items = []
        for key in keys:
            text = key_string(key)
            if text < start or not text.startswith(prefix):
                continue
            entry = changed[key] if key in changed else objects[key]
            if entry is not None:
                items.append((text, entry))
        items.sort(key=lambda item: item[0])
        return items


def _matches(obj: dict, labels: Selector, fields: Selector) -> bool:
    return labels(obj) and fields(obj)


def _page(items: list[tuple[str, Entry]], labels: Selector, fields: Selector, limit: int, rv: int, prefix: str
          ) -> tuple[list[Entry], str, str | None, int | None]:
    """The matching entries of one page, its continue token and remaining count, as upstream builds them.

    Upstream (apiserver pkg/storage/cacher GetList, continue.go PrepareContinueToken): a token
    whenever objects follow the page's last one, matching or not; ``remainingItemCount`` only
    without selectors (a count of objects that might not match would be wrong).
    """
    selected: list[Entry] = []
    for index, (key, entry) in enumerate(items):
        if not _matches(entry.view, labels, fields):
            continue
        selected.append(entry)
        if limit > 0 and len(selected) == limit:
            if index == len(items) - 1:
                break
            token = encode_continue(rv, key[len(prefix):] + "\x00")
            remaining = len(items) - limit if labels.empty and fields.empty else None
            return selected, str(rv), token, remaining
    return selected, str(rv), None, None
