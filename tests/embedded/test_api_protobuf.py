"""The protobuf request bodies kubectl v1.32 sends for ``kubectl create <namespace|secret|...>``.

Unit tests feed :func:`dask_k8s_backend.embedded.api.protobuf.decode` bodies captured from kubectl
(``-v=8`` prints them as hex) and bodies built by the tiny encoder below; the HTTP tests post them
to the embedded server; the kubectl tests run the six ``kubectl create`` subcommands that send
protobuf and read the objects back with the official client.
"""

from __future__ import annotations

import base64
import json

import pytest
import urllib3

from dask_k8s_backend.embedded.api import protobuf
from dask_k8s_backend.embedded.status import StatusError

pytestmark = pytest.mark.timeout(60)

# `kubectl create configmap c1 --from-literal=a=b -v=8` and `kubectl create service clusterip svc1 --tcp=80:8080`
KUBECTL_CONFIGMAP = bytes.fromhex(
    "6b3873000a0f0a0276311209436f6e6669674d6170121c0a120a02633112001a"
    "0022002a0032003800420012060a01611201621a002200")
KUBECTL_SERVICE = bytes.fromhex(
    "6b3873000a0d0a027631120753657276696365126c0a210a047376633112001a"
    "0022002a003200380042005a0b0a0361707012047376633112430a1b0a073830"
    "2d38303830120354435018502207080010903f1a002800120b0a036170701204"
    "737663311a002209436c757374657249503a00420052005a00600068001a020a"
    "001a002200")


# ------------------------------------------------------------------ a test-only protobuf encoder

def varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative ints: 64-bit two's complement, as Go sends int32/int64
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def fld(number: int, value: int | bool | str | bytes) -> bytes:
    """One field: ints/bools as varints, str/bytes length-delimited (messages are bytes)."""
    if isinstance(value, (bool, int)):
        return varint(number << 3) + varint(int(value))
    raw = value.encode() if isinstance(value, str) else value
    return varint(number << 3 | 2) + varint(len(raw)) + raw


def msg(*fields: bytes) -> bytes:
    return b"".join(fields)


def entries(number: int, mapping: dict) -> bytes:
    """A ``map<string, V>`` field: one {key: 1, value: 2} message per entry."""
    return msg(*(fld(number, fld(1, k) + fld(2, v)) for k, v in mapping.items()))


def envelope(kind: str, raw: bytes, api_version: str = "v1", encoding: str = "") -> bytes:
    return protobuf.MAGIC + fld(1, fld(1, api_version) + fld(2, kind)) + fld(2, raw) + fld(3, encoding) + fld(4, "")


def meta(name: str, **extra: bytes) -> bytes:
    """ObjectMeta as Go writes it: every non-pointer field, zero or not, plus ``extra`` fields."""
    return fld(1, msg(fld(1, name), fld(2, ""), fld(3, ""), fld(5, ""), fld(6, ""), fld(7, 0), fld(8, b""),
                      *extra.values()))


def quantity(text: str) -> bytes:
    return fld(1, text)


# ------------------------------------------------------------------ decoding bodies kubectl sent

def test_kubectl_configmap_body_decodes_as_its_json_would():
    assert protobuf.decode(KUBECTL_CONFIGMAP) == {
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c1", "creationTimestamp": None},
        "data": {"a": "b"}}


def test_kubectl_service_body_drops_go_zero_values_as_json_omitempty_does():
    service = protobuf.decode(KUBECTL_SERVICE)
    assert service["metadata"] == {"name": "svc1", "labels": {"app": "svc1"}, "creationTimestamp": None}
    assert service["spec"] == {"ports": [{"name": "80-8080", "protocol": "TCP", "port": 80, "targetPort": 8080}],
                               "selector": {"app": "svc1"}, "type": "ClusterIP"}
    assert service["status"] == {}


# ------------------------------------------------------------------ decoding built bodies

def test_secret_data_is_base64_as_in_json_and_pointer_fields_keep_their_zero():
    binary = b"\x00\xff\xfe"
    body = envelope("Secret", msg(meta("s1"), entries(2, {"bin": binary, "empty": b""}), fld(3, "Opaque"),
                                  entries(4, {"plain": "text"}), fld(5, False)))
    secret = protobuf.decode(body)
    assert secret["data"] == {"bin": base64.b64encode(binary).decode(), "empty": ""}
    assert secret["stringData"] == {"plain": "text"} and secret["type"] == "Opaque"
    assert secret["immutable"] is False  # *bool: present means set, even to false


def test_configmap_binary_data_and_immutable():
    body = envelope("ConfigMap", msg(meta("c1"), entries(2, {"k": "v"}), entries(3, {"b": b"\x01\x02"}),
                                     fld(4, True)))
    assert protobuf.decode(body) == {
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c1", "creationTimestamp": None},
        "data": {"k": "v"}, "binaryData": {"b": "AQI="}, "immutable": True}


def test_object_meta_fields_and_skipped_managed_fields():
    owner = msg(fld(5, "v1"), fld(1, "ConfigMap"), fld(3, "owner"), fld(4, "uid-1"), fld(6, True))
    body = envelope("Namespace", msg(
        fld(1, msg(fld(1, ""), fld(2, "gen-"), fld(5, "u-1"), fld(6, "42"), fld(8, fld(1, 1_700_000_000)),
                   entries(11, {"app": "web"}), entries(12, {"note": "x"}), fld(13, owner),
                   fld(14, "f1"), fld(14, "f2"), fld(17, msg(fld(1, "kubectl"), fld(2, "Update"))))),
        fld(2, fld(1, "kubernetes")), fld(3, fld(1, ""))))
    namespace = protobuf.decode(body)
    assert namespace["metadata"] == {
        "generateName": "gen-", "uid": "u-1", "resourceVersion": "42", "creationTimestamp": "2023-11-14T22:13:20Z",
        "labels": {"app": "web"}, "annotations": {"note": "x"}, "finalizers": ["f1", "f2"],
        "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": "uid-1",
                             "controller": True}]}
    assert namespace["spec"] == {"finalizers": ["kubernetes"]} and namespace["status"] == {}


def test_service_account_references_and_automount():
    body = envelope("ServiceAccount", msg(meta("sa1"), fld(2, msg(fld(1, "Secret"), fld(3, "tok"))),
                                          fld(3, fld(1, "regcred")), fld(4, False)))
    account = protobuf.decode(body)
    assert account["secrets"] == [{"kind": "Secret", "name": "tok"}]
    assert account["imagePullSecrets"] == [{"name": "regcred"}]
    assert account["automountServiceAccountToken"] is False


def test_service_ports_with_named_target_port_node_port_and_affinity():
    port = msg(fld(1, "http"), fld(2, "TCP"), fld(3, 80), fld(4, msg(fld(1, 1), fld(2, 0), fld(3, "web"))),
               fld(5, 30080))
    spec = msg(fld(1, port), fld(3, ""), fld(4, "NodePort"), fld(7, "ClientIP"), fld(12, 0), fld(13, False),
               fld(14, fld(1, fld(1, 600))), fld(19, "IPv4"), fld(17, "SingleStack"))
    service = protobuf.decode(envelope("Service", msg(meta("svc"), fld(2, spec), fld(3, b""))))
    assert service["spec"] == {
        "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": "web", "nodePort": 30080}],
        "type": "NodePort", "sessionAffinity": "ClientIP",
        "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 600}}, "ipFamilies": ["IPv4"],
        "ipFamilyPolicy": "SingleStack"}


def test_resource_quota_hard_quantities_and_scopes():
    spec = msg(entries(1, {"cpu": quantity("2"), "pods": quantity("10"), "memory": quantity("1Gi")}),
               fld(2, "NotBestEffort"))
    quota = protobuf.decode(envelope("ResourceQuota", msg(meta("q1"), fld(2, spec), fld(3, b""))))
    assert quota["spec"] == {"hard": {"cpu": "2", "pods": "10", "memory": "1Gi"}, "scopes": ["NotBestEffort"]}


def test_unknown_fields_of_every_wire_type_are_skipped_and_negative_ints_kept():
    fixed64 = varint(40 << 3 | 1) + b"\x00" * 8
    fixed32 = varint(41 << 3 | 5) + b"\x00" * 4
    port = msg(fld(3, 80), fld(4, msg(fld(1, 0), fld(2, -1))), fld(99, 7), fld(98, "x"))
    body = envelope("Service", msg(meta("svc", extra=fixed64 + fixed32), fld(2, fld(1, port)), fld(50, "future")))
    service = protobuf.decode(body)
    assert service["metadata"] == {"name": "svc", "creationTimestamp": None}
    assert service["spec"]["ports"] == [{"port": 80, "targetPort": -1}]


@pytest.mark.parametrize("body, words", [
    (KUBECTL_CONFIGMAP[:-3], "truncated"),
    (KUBECTL_SERVICE[:40], "truncated"),
    (protobuf.MAGIC + b"\x0a\xff", "truncated"),
    (protobuf.MAGIC + b"\x0b\x00", "wire type 3"),
    (envelope("ConfigMap", fld(1, fld(1, b"\xff\xfe"))), "UTF-8"),
    (envelope("ConfigMap", fld(1, 5)), "length-delimited"),
    (envelope("ConfigMap", fld(4, "yes")), "varint"),
    (envelope("ConfigMap", b"\x08" + b"\xff" * 11), "varint"),
    (b'{"kind": "ConfigMap"}', "magic"),
])
def test_garbled_bodies_are_400_bad_request_with_the_reason(body, words):
    with pytest.raises(StatusError) as raised:
        protobuf.decode(body)
    assert raised.value.code == 400 and raised.value.reason == "BadRequest"
    assert words in raised.value.message


@pytest.mark.parametrize("body, named", [
    (envelope("Deployment", fld(1, fld(1, "d")), api_version="apps/v1"), "'Deployment'"),
    (envelope("SubjectAccessReview", b"", api_version="authorization.k8s.io/v1"), "'SubjectAccessReview'"),
    (envelope("Pod", fld(1, fld(1, "p"))), "'Pod'"),
    (envelope("ConfigMap", meta("c"), encoding="gzip"), "'gzip'"),
])
def test_kinds_outside_the_table_are_415_asking_for_json(body, named):
    with pytest.raises(StatusError) as raised:
        protobuf.decode(body)
    assert raised.value.code == 415 and raised.value.reason == "UnsupportedMediaType"
    assert named in raised.value.message and "application/json" in raised.value.message


# ------------------------------------------------------------------ over HTTP

def post(kube, path: str, body: bytes) -> tuple[int, dict]:
    """POST a protobuf body as kubectl does; returns (status, parsed JSON answer)."""
    http = urllib3.PoolManager(ca_certs=kube.ca_file, cert_reqs="CERT_REQUIRED" if kube.ca_file else "CERT_NONE")
    headers = {"Content-Type": protobuf.MEDIA_TYPE, "Accept": f"{protobuf.MEDIA_TYPE},application/json"}
    if kube.token:
        headers["Authorization"] = f"Bearer {kube.token}"
    response = http.request("POST", kube.url + path, body=body, headers=headers, timeout=10, retries=False)
    http.clear()
    return response.status, json.loads(response.data)


def test_http_protobuf_create_answers_json(kube, core_v1):
    code, answer = post(kube, "/api/v1/namespaces/default/configmaps", KUBECTL_CONFIGMAP)
    assert code == 201 and answer["kind"] == "ConfigMap" and answer["data"] == {"a": "b"}
    assert core_v1.read_namespaced_config_map("c1", "default").data == {"a": "b"}


def test_http_garbage_is_400_and_unknown_kind_415_and_nothing_is_created(kube, core_v1):
    code, answer = post(kube, "/api/v1/namespaces/default/configmaps", KUBECTL_CONFIGMAP[:-3])
    assert code == 400 and answer["reason"] == "BadRequest"
    code, answer = post(kube, "/api/v1/namespaces/default/pods", envelope("Pod", fld(1, fld(1, "p"))))
    assert code == 415 and answer["reason"] == "UnsupportedMediaType" and "'Pod'" in answer["message"]
    assert core_v1.list_namespaced_config_map("default").items == []
    assert core_v1.list_namespaced_pod("default").items == []


# ------------------------------------------------------------------ kubectl create

@pytest.mark.kubectl
@pytest.mark.timeout(120)
def test_kubectl_create_subcommands_that_send_protobuf(kubectl, core_v1):
    commands = [("namespace", "n1"), ("secret", "generic", "s1", "--from-literal=a=b"),
                ("configmap", "c1", "--from-literal=a=b"), ("serviceaccount", "sa1"),
                ("service", "clusterip", "svc1", "--tcp=80:8080"), ("quota", "q1", "--hard=pods=10,cpu=2")]
    for command in commands:
        result = kubectl("create", *command)
        assert result.returncode == 0 and " created" in result.stdout, (command, result.stderr)
    assert core_v1.read_namespace("n1").status.phase == "Active"
    secret = core_v1.read_namespaced_secret("s1", "default")
    assert base64.b64decode(secret.data["a"]) == b"b" and secret.type == "Opaque"
    assert core_v1.read_namespaced_config_map("c1", "default").data == {"a": "b"}
    assert core_v1.read_namespaced_service_account("sa1", "default").metadata.name == "sa1"
    service = core_v1.read_namespaced_service("svc1", "default")
    assert service.spec.type == "ClusterIP" and service.spec.selector == {"app": "svc1"}
    assert [(p.name, p.protocol, p.port, p.target_port) for p in service.spec.ports] == [("80-8080", "TCP", 80, 8080)]
    assert service.spec.cluster_ip not in (None, "", "None")
    assert core_v1.read_namespaced_resource_quota("q1", "default").spec.hard == {"pods": "10", "cpu": "2"}


@pytest.mark.kubectl
@pytest.mark.timeout(120)
def test_kubectl_create_in_a_namespace_created_by_kubectl(kubectl, core_v1):
    for command in (("namespace", "team"), ("configmap", "c2", "-n", "team", "--from-literal=k=v")):
        result = kubectl("create", *command)
        assert result.returncode == 0, (command, result.stderr)
    assert core_v1.read_namespaced_config_map("c2", "team").data == {"k": "v"}
    assert kubectl("auth", "can-i", "create", "configmaps").stdout.strip() == "yes"  # protobuf review: still authz's
