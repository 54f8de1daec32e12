"""Decode the protobuf request bodies kubectl sends into the dict a JSON body would have given.

kubectl v1.32 sends the objects of ``kubectl create namespace|secret|configmap|serviceaccount|
service|quota`` as ``application/vnd.kubernetes.protobuf`` and does not retry as JSON when the
server refuses that media type, so the embedded API server has to read them. A body is the
4-byte magic ``k8s\\0`` followed by a ``runtime.Unknown`` message (typeMeta{apiVersion: 1,
kind: 2}: 1, raw: 2, contentEncoding: 3, contentType: 4) whose ``raw`` is the object itself.

Only the kinds in :data:`KINDS` are understood; the field numbers in :data:`MESSAGES` are the
ones of Kubernetes' generated.proto files (core/v1, meta/v1, resource, intstr). The result is
JSON-shaped, so the rest of the server cannot tell which encoding the client used: camelCase
keys, maps as dicts, ``bytes`` as base64 strings, Quantity as its string, IntOrString as an int
or a str. Go's protobuf marshaller writes every non-pointer field even when it is the zero value,
where JSON's ``omitempty`` leaves it out, so zero scalars are dropped unless the Go field is a
pointer (``pointer=True``), for which presence itself is meaningful. Unknown fields (including
``managedFields``) are skipped. Malformed bytes are a 400 BadRequest; a kind outside the table
is a 415 UnsupportedMediaType that asks for JSON.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass
from typing import Any, Iterator

from ..podstatus import rfc3339
from ..status import StatusError, bad_request

logger = logging.getLogger(__name__)

MEDIA_TYPE = "application/vnd.kubernetes.protobuf"
MAGIC = b"k8s\x00"

_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5
_SCALARS = ("string", "bytes", "bool", "int")
_ZERO: dict[str, Any] = {"string": "", "bytes": "", "bool": False, "int": 0}


class ProtobufError(ValueError):
    """The bytes are not a well-formed protobuf message of the expected shape."""


@dataclass(frozen=True)
class Field:
    """One field of a message: its JSON name, its type, and how it repeats.

    ``kind`` is a scalar (string, bytes, bool, int), a special message (Time, Quantity,
    IntOrString) or the name of a message in :data:`MESSAGES`. ``is_map`` fields are
    ``map<string, kind>``.
    """

    name: str
    kind: str = "string"
    repeated: bool = False
    is_map: bool = False
    pointer: bool = False


def _m(name: str, kind: str = "string") -> Field:
    return Field(name, kind, is_map=True)


def _r(name: str, kind: str = "string") -> Field:
    return Field(name, kind, repeated=True)


def _p(name: str, kind: str = "string") -> Field:
    return Field(name, kind, pointer=True)


_META = Field("metadata", "ObjectMeta")

MESSAGES: dict[str, dict[int, Field]] = {
    # k8s.io/apimachinery/pkg/apis/meta/v1 (managedFields = 17 is deliberately absent: skipped)
    "ObjectMeta": {
        1: Field("name"), 2: Field("generateName"), 3: Field("namespace"), 4: Field("selfLink"),
        5: Field("uid"), 6: Field("resourceVersion"), 7: Field("generation", "int"),
        8: Field("creationTimestamp", "Time"), 9: _p("deletionTimestamp", "Time"),
        10: _p("deletionGracePeriodSeconds", "int"), 11: _m("labels"), 12: _m("annotations"),
        13: _r("ownerReferences", "OwnerReference"), 14: _r("finalizers"),
    },
    "OwnerReference": {
        5: Field("apiVersion"), 1: Field("kind"), 3: Field("name"), 4: Field("uid"),
        6: _p("controller", "bool"), 7: _p("blockOwnerDeletion", "bool"),
    },
    # k8s.io/api/core/v1
    "Namespace": {1: _META, 2: Field("spec", "NamespaceSpec"), 3: Field("status", "NamespaceStatus")},
    "NamespaceSpec": {1: _r("finalizers")},
    "NamespaceStatus": {1: Field("phase")},
    "Secret": {1: _META, 2: _m("data", "bytes"), 3: Field("type"), 4: _m("stringData"), 5: _p("immutable", "bool")},
    "ConfigMap": {1: _META, 2: _m("data"), 3: _m("binaryData", "bytes"), 4: _p("immutable", "bool")},
    "ServiceAccount": {
        1: _META, 2: _r("secrets", "ObjectReference"), 3: _r("imagePullSecrets", "LocalObjectReference"),
        4: _p("automountServiceAccountToken", "bool"),
    },
    "ObjectReference": {
        1: Field("kind"), 2: Field("namespace"), 3: Field("name"), 4: Field("uid"), 5: Field("apiVersion"),
        6: Field("resourceVersion"), 7: Field("fieldPath"),
    },
    "LocalObjectReference": {1: Field("name")},
    "Service": {1: _META, 2: Field("spec", "ServiceSpec"), 3: Field("status", "ServiceStatus")},
    "ServiceSpec": {
        1: _r("ports", "ServicePort"), 2: _m("selector"), 3: Field("clusterIP"), 18: _r("clusterIPs"),
        4: Field("type"), 5: _r("externalIPs"), 7: Field("sessionAffinity"), 8: Field("loadBalancerIP"),
        9: _r("loadBalancerSourceRanges"), 10: Field("externalName"), 11: Field("externalTrafficPolicy"),
        12: Field("healthCheckNodePort", "int"), 13: Field("publishNotReadyAddresses", "bool"),
        14: _p("sessionAffinityConfig", "SessionAffinityConfig"), 19: _r("ipFamilies"),
        17: _p("ipFamilyPolicy"), 20: _p("allocateLoadBalancerNodePorts", "bool"),
        21: _p("loadBalancerClass"), 22: _p("internalTrafficPolicy"), 23: _p("trafficDistribution"),
    },
    "ServicePort": {
        1: Field("name"), 2: Field("protocol"), 6: _p("appProtocol"), 3: Field("port", "int"),
        4: Field("targetPort", "IntOrString"), 5: Field("nodePort", "int"),
    },
    "SessionAffinityConfig": {1: _p("clientIP", "ClientIPConfig")},
    "ClientIPConfig": {1: _p("timeoutSeconds", "int")},
    "ServiceStatus": {},  # status is the server's to write: whatever a client sends is skipped
    "ResourceQuota": {1: _META, 2: Field("spec", "ResourceQuotaSpec"), 3: Field("status", "ResourceQuotaStatus")},
    "ResourceQuotaSpec": {1: _m("hard", "Quantity"), 2: _r("scopes"), 3: _p("scopeSelector", "ScopeSelector")},
    "ScopeSelector": {1: _r("matchExpressions", "ScopedResourceSelectorRequirement")},
    "ScopedResourceSelectorRequirement": {1: Field("scopeName"), 2: Field("operator"), 3: _r("values")},
    "ResourceQuotaStatus": {1: _m("hard", "Quantity"), 2: _m("used", "Quantity")},
    # k8s.io/api/authorization/v1 (kubectl auth can-i); field and label selectors (8, 9) are skipped
    "SelfSubjectAccessReview": {1: _META, 2: Field("spec", "SelfSubjectAccessReviewSpec")},
    "SelfSubjectAccessReviewSpec": {1: _p("resourceAttributes", "ResourceAttributes"),
                                    2: _p("nonResourceAttributes", "NonResourceAttributes")},
    "ResourceAttributes": {1: Field("namespace"), 2: Field("verb"), 3: Field("group"), 4: Field("version"),
                           5: Field("resource"), 6: Field("subresource"), 7: Field("name")},
    "NonResourceAttributes": {1: Field("path"), 2: Field("verb")},
    # kubectl auth can-i --list
    "SelfSubjectRulesReview": {1: _META, 2: Field("spec", "SelfSubjectRulesReviewSpec")},
    "SelfSubjectRulesReviewSpec": {1: Field("namespace")},
}

# (apiVersion, kind) of the top-level objects this module decodes
KINDS = frozenset([("v1", kind) for kind in
                   ("Namespace", "Secret", "ConfigMap", "ServiceAccount", "Service", "ResourceQuota")]
                  + [("authorization.k8s.io/v1", kind) for kind in ("SelfSubjectAccessReview", "SelfSubjectRulesReview")])


# ------------------------------------------------------------------------ wire format

def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """The unsigned varint at ``pos`` and the position after it."""
    value = shift = 0
    while pos < len(data):
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift >= 70:
            raise ProtobufError("varint longer than 10 bytes")
    raise ProtobufError("truncated varint")


def _skip(data: bytes, pos: int, size: int) -> int:
    if pos + size > len(data):
        raise ProtobufError(f"truncated field: {size} bytes announced, {len(data) - pos} left")
    return pos + size


def iter_fields(data: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """``(field number, wire type, value)`` for each field: an int for varints, bytes when
    length-delimited. Fixed 32/64-bit fields are skipped: no field we decode uses them."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ProtobufError("field number 0")
        if wire == _VARINT:
            value, pos = _varint(data, pos)
            yield number, wire, value
        elif wire == _LENGTH:
            size, start = _varint(data, pos)
            pos = _skip(data, start, size)
            yield number, wire, data[start:pos]
        elif wire in (_FIXED64, _FIXED32):
            pos = _skip(data, pos, 8 if wire == _FIXED64 else 4)
        else:
            raise ProtobufError(f"unsupported wire type {wire} (field {number})")


def _signed(value: int) -> int:
    """Go's int32/int64 are sent as the 64-bit two's complement varint, negative ones included."""
    return value - (1 << 64) if value >= 1 << 63 else value


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ProtobufError(f"string field is not UTF-8: {e}") from None


# ------------------------------------------------------------------------ messages

def decode_message(message: str, data: bytes) -> dict[str, Any]:
    """The JSON form of ``data`` read as the message ``message`` of :data:`MESSAGES`."""
    schema = MESSAGES[message]
    out: dict[str, Any] = {}
    for number, wire, value in iter_fields(data):
        field = schema.get(number)
        if field is None:
            continue  # managedFields, status details, fields newer than this table
        if field.is_map:
            key, item = _map_entry(field, _expect_bytes(field, wire, value))
            out.setdefault(field.name, {})[key] = item
        elif field.repeated:
            out.setdefault(field.name, []).append(_value(field, wire, value))
        else:
            decoded = _value(field, wire, value)
            if _omitted(field, decoded):
                out.pop(field.name, None)  # the last occurrence wins, as in protobuf
            else:
                out[field.name] = decoded
    return out


def _omitted(field: Field, value: Any) -> bool:
    """Zero scalars of non-pointer fields: Go's marshaller writes them, JSON's omitempty would not."""
    if field.pointer or field.kind not in _SCALARS:
        return False
    return value == _ZERO[field.kind] and type(value) is type(_ZERO[field.kind])


def _expect_bytes(field: Field, wire: int, value: int | bytes) -> bytes:
    if wire != _LENGTH or not isinstance(value, bytes):
        raise ProtobufError(f"field {field.name!r} should be length-delimited, got wire type {wire}")
    return value


def _map_entry(field: Field, data: bytes) -> tuple[str, Any]:
    """A ``map<string, kind>`` entry is a message {key: 1, value: 2}; both may be absent (zero)."""
    key, item = "", _ZERO.get(field.kind)
    value_field = Field(field.name, field.kind)
    for number, wire, value in iter_fields(data):
        if number == 1:
            key = _text(_expect_bytes(field, wire, value))
        elif number == 2:
            item = _value(value_field, wire, value)
    if item is None:  # a message-valued entry without its value: the message's zero
        item = _value(value_field, _LENGTH, b"")
    return key, item


def _value(field: Field, wire: int, value: int | bytes) -> Any:
    if field.kind in ("bool", "int"):
        if wire != _VARINT or not isinstance(value, int):
            raise ProtobufError(f"field {field.name!r} should be a varint, got wire type {wire}")
        return bool(value) if field.kind == "bool" else _signed(value)
    raw = _expect_bytes(field, wire, value)
    if field.kind == "string":
        return _text(raw)
    if field.kind == "bytes":
        return base64.b64encode(raw).decode("ascii")  # as JSON carries []byte
    if field.kind == "Time":
        return _time(raw)
    if field.kind == "Quantity":
        return _text(dict(_length_fields(raw)).get(1, b""))
    if field.kind == "IntOrString":
        return _int_or_string(raw)
    return decode_message(field.kind, raw)


def _length_fields(data: bytes) -> Iterator[tuple[int, bytes]]:
    for number, _, value in iter_fields(data):
        if isinstance(value, bytes):
            yield number, value


def _time(data: bytes) -> str | None:
    """meta/v1 Time {seconds: 1, nanos: 2} -> RFC 3339; the zero time is JSON's null."""
    seconds = next((_signed(v) for n, _, v in iter_fields(data) if n == 1 and isinstance(v, int)), 0)
    return rfc3339(seconds) if seconds else None


def _int_or_string(data: bytes) -> int | str:
    """intstr IntOrString {type: 1 (0 = int, 1 = string), intVal: 2, strVal: 3}."""
    kind, number, text = 0, 0, ""
    for field, _, value in iter_fields(data):
        if field == 1 and isinstance(value, int):
            kind = value
        elif field == 2 and isinstance(value, int):
            number = _signed(value)
        elif field == 3 and isinstance(value, bytes):
            text = _text(value)
    return text if kind == 1 else number


# ------------------------------------------------------------------------ envelope

def _unknown(body: bytes) -> tuple[str, str, bytes, str]:
    """``(apiVersion, kind, raw, contentEncoding)`` of the runtime.Unknown after the magic."""
    api_version = kind = encoding = ""
    raw = b""
    for number, value in _length_fields(body[len(MAGIC):]):
        if number == 1:
            type_meta = dict(_length_fields(value))
            api_version, kind = _text(type_meta.get(1, b"")), _text(type_meta.get(2, b""))
        elif number == 2:
            raw = value
        elif number == 3:
            encoding = _text(value)
    return api_version, kind, raw, encoding


def decode(body: bytes) -> dict[str, Any]:
    """The JSON-shaped object of a ``application/vnd.kubernetes.protobuf`` request body.

    Raises a 400 StatusError when the bytes are not a well-formed envelope or object, and a
    415 one when the object is of a kind (or content encoding) this module does not decode.
    """
    if not body.startswith(MAGIC):
        raise bad_request("the protobuf body does not start with the Kubernetes magic number 'k8s\\x00'")
    try:
        api_version, kind, raw, encoding = _unknown(body)
        if (api_version, kind) not in KINDS or encoding:
            raise _unsupported(api_version, kind, encoding)
        obj = decode_message(kind, raw)
    except ProtobufError as e:
        raise bad_request(f"the protobuf body could not be decoded: {e}") from None
    logger.debug("decoded a protobuf %s/%s body (%d bytes)", api_version, kind, len(body))
    return {"apiVersion": api_version, "kind": kind, **obj}


def _unsupported(api_version: str, kind: str, encoding: str) -> StatusError:
    what = f"kind {kind or '<none>'!r} (apiVersion {api_version or '<none>'!r})"
    if encoding:
        what += f" with contentEncoding {encoding!r}"
    return StatusError(415, "UnsupportedMediaType",
                       f"the embedded API server cannot decode {what} from {MEDIA_TYPE}; "
                       "send it as application/json")
