"""LIST and WATCH query options of the embedded API server, read and checked as kube-apiserver does.

Data flow: the API server hands the request's query to :func:`parse_list_options`, which returns a
frozen :class:`ListOptions` after upstream's defaulting and validation (a bad combination is the
same 422 ``ListOptions.meta.k8s.io`` Invalid); :meth:`ListOptions.list_plan` then says which
resourceVersion a LIST is served at and whether ``limit`` applies, and
:meth:`ListOptions.initial_events` what a WATCH sends first. Continue tokens are encoded and
decoded here in upstream's format, so a client sees the same opaque strings. Nothing here touches
the store.

Upstream references (kubernetes v1.36): ``SetListOptionsDefaults`` and ``ValidateListOptions``
(apimachinery pkg/apis/meta/internalversion), ``storage.ValidateListOptions`` and
``continue.go`` (apiserver pkg/storage), ``delegator.ShouldDelegateList`` and
``computeListLimit`` (apiserver pkg/storage/cacher).
"""

from __future__ import annotations

import base64
import binascii
import json
import posixpath
from dataclasses import dataclass
from typing import Callable

from ..status import StatusError, bad_request, invalid

NOT_OLDER_THAN = "NotOlderThan"
EXACT = "Exact"
_TOKEN_VERSION = "meta.k8s.io/v1"
_KEY_INVALID = "continue key is not valid"


@dataclass(frozen=True)
class ListOptions:
    """The options of one LIST or WATCH request, defaulted and validated."""

    watch: bool
    resource_version: str = ""
    resource_version_match: str = ""
    limit: int = 0
    continue_token: str = ""
    send_initial_events: bool | None = None
    allow_watch_bookmarks: bool = False

    def list_plan(self) -> tuple[int | None, int, int]:
        """``(exact resourceVersion or None for the latest, effective limit, minimum resourceVersion)`` of a LIST.

        As upstream: ``resourceVersion=0`` is served from the watch cache, which ignores ``limit``;
        ``Exact``, or a legacy ``limit`` with a positive resourceVersion, lists at that version;
        any other resourceVersion is the least the answer must show (a server behind it answers
        504, see :func:`too_large_resource_version`). A continue token carries its own version.
        """
        if self.continue_token:
            if self.resource_version not in ("", "0"):
                raise bad_request("specifying resource version is not allowed when using continue")
            return None, self.limit, 0
        rv = parse_resource_version(self.resource_version)
        limit = 0 if self.resource_version == "0" and self.resource_version_match != EXACT else self.limit
        exact = self.resource_version_match == EXACT or (
            not self.resource_version_match and self.limit > 0 and self.resource_version not in ("", "0"))
        return (rv if exact else None), limit, rv

    def initial_events(self) -> bool:
        """Whether a WATCH starts with ADDED events for every existing object.

        ``sendInitialEvents=true``, which upstream also defaults for legacy watches from ""/"0".
        """
        return bool(self.send_initial_events)

    def initial_events_bookmark(self) -> bool:
        """Whether the initial events end with the ``k8s.io/initial-events-end`` BOOKMARK (upstream's isListWatchRequest)."""
        return bool(self.send_initial_events) and self.allow_watch_bookmarks


def _bool(name: str, value: str | None) -> bool | None:
    """A query boolean as Go's strconv.ParseBool reads it; None when absent."""
    if value is None:
        return None
    if value in ("1", "t", "T", "true", "TRUE", "True"):
        return True
    if value in ("0", "f", "F", "false", "FALSE", "False"):
        return False
    raise bad_request(f'{name}: strconv.ParseBool: parsing "{value}": invalid syntax')


def _int(value: str | None) -> int:
    if value in (None, ""):
        return 0
    try:
        return int(value)  # type: ignore[arg-type]
    except ValueError:
        raise bad_request(f'strconv.ParseInt: parsing "{value}": invalid syntax') from None


def parse_resource_version(value: str) -> int:
    """A LIST's resourceVersion as an integer; 400 in upstream's words (its versioner's ParseUint) otherwise."""
    if not value:
        return 0
    if value.isdigit() and value.isascii():
        return int(value)
    raise bad_request(f'invalid resource version: resourceVersion: Invalid value: "{value}": strconv.ParseUint: '
                      f'parsing "{value}": invalid syntax')


def too_large_resource_version(asked: int, current: int) -> StatusError:
    """Upstream's 504 for a LIST at a resourceVersion the server has not reached (storage.NewTooLargeResourceVersionError)."""
    return StatusError(504, "Timeout", f"Timeout: Too large resource version: {asked}, current: {current}",
                       {"causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
                        "retryAfterSeconds": 1})


def parse_list_options(get: Callable[[str], str | None], *, watch: bool) -> ListOptions:
    """The request's options (``get(name)`` reads one query argument), defaulted and validated as upstream."""
    options = ListOptions(
        watch=watch, resource_version=get("resourceVersion") or "",
        resource_version_match=get("resourceVersionMatch") or "", limit=_int(get("limit")),
        continue_token=get("continue") or "", send_initial_events=_bool("sendInitialEvents", get("sendInitialEvents")),
        allow_watch_bookmarks=bool(_bool("allowWatchBookmarks", get("allowWatchBookmarks"))))
    options = _with_watch_list_defaults(options)
    causes = _watch_causes(options) if watch else _list_causes(options)
    if causes:
        raise invalid("ListOptions", "", causes, group="meta.k8s.io")
    return options


def _with_watch_list_defaults(options: ListOptions) -> ListOptions:
    """Upstream SetListOptionsDefaults (WatchList on in v1.36): a legacy watch from ""/"0" sends initial events."""
    if not options.watch or options.send_initial_events is not None or options.resource_version_match:
        return options
    if options.resource_version not in ("", "0"):
        return options
    return ListOptions(**{**options.__dict__, "send_initial_events": True, "resource_version_match": NOT_OLDER_THAN})


def _list_causes(options: ListOptions) -> list[tuple[str, str]]:
    causes = []
    match = options.resource_version_match
    if match:
        if not options.resource_version:
            causes.append(("resourceVersionMatch", "Forbidden: resourceVersionMatch is forbidden unless "
                                                   "resourceVersion is provided"))
        if options.continue_token:
            causes.append(("resourceVersionMatch", "Forbidden: resourceVersionMatch is forbidden when continue "
                                                   "is provided"))
        if match not in (EXACT, NOT_OLDER_THAN):
            causes.append(("resourceVersionMatch", f'Unsupported value: "{match}": supported values: "Exact", '
                                                   '"NotOlderThan", ""'))
        if match == EXACT and options.resource_version == "0":
            causes.append(("resourceVersionMatch", 'Forbidden: resourceVersionMatch "exact" is forbidden for '
                                                   'resourceVersion "0"'))
    if options.send_initial_events is not None:
        causes.append(("sendInitialEvents", "Forbidden: sendInitialEvents is forbidden for list"))
    return causes


def _watch_causes(options: ListOptions) -> list[tuple[str, str]]:
    causes = []
    match = options.resource_version_match
    if options.send_initial_events is not None and match != NOT_OLDER_THAN:
        causes.append(("resourceVersionMatch", "Forbidden: sendInitialEvents requires setting "
                                               f"resourceVersionMatch to {NOT_OLDER_THAN}"))
    if match:
        if options.send_initial_events is None:
            causes.append(("resourceVersionMatch", "Forbidden: resourceVersionMatch is forbidden for watch unless "
                                                   "sendInitialEvents is provided"))
        if match != NOT_OLDER_THAN:
            causes.append(("resourceVersionMatch", f'Unsupported value: "{match}": supported values: '
                                                   f'"{NOT_OLDER_THAN}"'))
        if options.continue_token:
            causes.append(("resourceVersionMatch", "Forbidden: resourceVersionMatch is forbidden when continue "
                                                   "is provided"))
    return causes


# ------------------------------------------------------------------ continue tokens


def encode_continue(rv: int, start: str) -> str:
    """Upstream's token: unpadded URL-safe base64 of ``{"v","rv","start"}``; rv -1 means "the latest"."""
    data = json.dumps({"v": _TOKEN_VERSION, "rv": rv, "start": start}, separators=(",", ":"))
    return base64.urlsafe_b64encode(data.encode()).rstrip(b"=").decode()


def decode_continue(token: str) -> tuple[int, str]:
    """``(rv, start key relative to the list's prefix)``; 400 with upstream's reasons for a bad token."""
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        version, rv, start = data.get("v"), int(data.get("rv") or 0), str(data.get("start") or "")
    except (ValueError, TypeError, AttributeError, binascii.Error) as e:
        raise _bad_token(f"{_KEY_INVALID}: {e}") from None
    if version != _TOKEN_VERSION:
        raise _bad_token(f"{_KEY_INVALID}: server does not recognize this encoded version {version}")
    if rv == 0:
        raise _bad_token(f"{_KEY_INVALID}: incorrect encoded start resourceVersion (version {_TOKEN_VERSION})")
    if not start:
        raise _bad_token(f"{_KEY_INVALID}: encoded start key empty (version {_TOKEN_VERSION})")
    rooted = start if start.startswith("/") else "/" + start
    if posixpath.normpath(rooted) != rooted or "//" in rooted:  # no climbing out of the list's prefix
        raise _bad_token(f"{_KEY_INVALID}: {start}")
    return rv, rooted[1:]


def _bad_token(message: str):
    return bad_request(f"invalid continue token: {message}")
