"""Real kubectl against the embedded API server and, with ``--k8s-kubeconfig``, upstream's.

Every test runs through ``kubectl_matrix``: the oldest (1.27) and newest (1.33) versioned kubectl
installed beside the default one, and the default itself, each against the embedded server and
upstream's kube-apiserver (issue 14). What the user sees must match upstream's; stderr carries
kubectl's version-skew warning with a v1.36 server, so tests look for their own message in it.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from k8s_helpers import one_server_only_reason
from kubectl_binaries import find_kubectl

pytestmark = [pytest.mark.kubectl, pytest.mark.timeout(120)]

POD = """apiVersion: v1
kind: Pod
metadata:
  name: kp
  labels: {app: web}
spec:
  containers:
  - name: main
    image: busybox:1.36
"""


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_version_reports_the_servers_own_version(kubectl_matrix):
    # -o json: kubectl 1.27 prints a Go struct by default, 1.28 and later a short text; an older
    # kubectl drops fields it does not know (upstream's emulationMajor ...), so compare gitVersion
    code, version = kubectl_matrix.target.raw("GET", "/version")
    printed = json.loads(ok(kubectl_matrix("version", "-o", "json")))["serverVersion"]
    assert code == 200 and printed["gitVersion"] == version["gitVersion"]


def test_api_resources_lists_the_core_kinds(kubectl_matrix):
    rows = [line.split() for line in ok(kubectl_matrix("api-resources", "--api-group=")).splitlines()]
    assert rows[0][:3] == ["NAME", "SHORTNAMES", "APIVERSION"]
    assert ["pods", "po", "v1", "true", "Pod"] in rows and ["namespaces", "ns", "v1", "false", "Namespace"] in rows


def test_create_get_apply_label_delete(kubectl_matrix):
    kubectl = kubectl_matrix
    assert "pod/kp created" in ok(kubectl("create", "-f", "-", input=POD))
    table = ok(kubectl("get", "pods"))
    assert table.split()[:5] == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"] and "kp" in table
    assert "configured" in ok(kubectl("apply", "-f", "-", input=POD.replace("app: web", "app: api")))
    assert json.loads(ok(kubectl("get", "pod", "kp", "-o", "json")))["metadata"]["labels"] == {"app": "api"}
    ok(kubectl("label", "pod", "kp", "tier=front"))
    assert "kp" in ok(kubectl("get", "pods", "-l", "tier in (front),app=api"))
    assert "No resources found" in kubectl("get", "pods", "-l", "tier=back").stderr
    assert 'pod "kp" deleted' in ok(kubectl("delete", "pod", "kp"))


CONFIGMAP = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: kc}\ndata: {a: '1', b: '2'}\n"
SECRET = "apiVersion: v1\nkind: Secret\nmetadata: {name: ks}\nstringData: {a: '1'}\n"
SERVICE = ("apiVersion: v1\nkind: Service\nmetadata: {name: kv}\n"
           "spec: {selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}\n")
EVENT = ("apiVersion: v1\nkind: Event\nmetadata: {name: ke}\n"
         "involvedObject: {kind: Pod, name: kp, namespace: NAMESPACE}\n"
         "reason: Pulled\ntype: Normal\nmessage: pulled\nsource: {component: kubelet, host: node-9}\ncount: 3\n"
         "firstTimestamp: '2026-01-01T00:00:00Z'\nlastTimestamp: '2026-01-01T00:00:00Z'\n")
LEASE = "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata: {name: kl}\nspec: {holderIdentity: me}\n"
LIMITS = ("apiVersion: v1\nkind: LimitRange\nmetadata: {name: kr}\n"
          "spec: {limits: [{type: Container, max: {cpu: '2'}}]}\n")
QUOTA = "apiVersion: v1\nkind: ResourceQuota\nmetadata: {name: kq}\nspec: {hard: {pods: '10', limits.cpu: '2'}}\n"


# Upstream's columns (pkg/printers/internalversion/printers.go, v1.36); the embedded server printed
# pods -o wide without NOMINATED NODE and READINESS GATES, namespaces without STATUS, and configmaps
# and secrets, services, resourcequotas, events, leases and limitranges as NAME AGE.
@pytest.mark.parametrize("manifest, args, header, row", [
    (POD, ("pods", "-o", "wide"), "NAME READY STATUS RESTARTS AGE IP NODE NOMINATED NODE READINESS GATES",
     ["kp", None, None, "0", None, None, None, "<none>", "<none>"]),
    (None, ("namespaces", "default"), "NAME STATUS AGE", ["default", "Active", None]),
    (CONFIGMAP, ("configmaps", "kc"), "NAME DATA AGE", ["kc", "2", None]),
    (SECRET, ("secrets", "ks"), "NAME TYPE DATA AGE", ["ks", "Opaque", "1", None]),
    (SERVICE, ("services", "kv", "-o", "wide"), "NAME TYPE CLUSTER-IP EXTERNAL-IP PORT(S) AGE SELECTOR",
     ["kv", "ClusterIP", None, "<none>", "80/TCP", None, "app=web"]),
    (QUOTA, ("resourcequotas", "kq"), "NAME REQUEST LIMIT AGE", ["kq", "pods:", "0/10", "limits.cpu:", "0/2", None]),
    (EVENT, ("events", "ke", "-o", "wide"),
     "LAST SEEN TYPE REASON OBJECT SUBOBJECT SOURCE MESSAGE FIRST SEEN COUNT NAME",  # SUBOBJECT is empty
     [None, "Normal", "Pulled", "pod/kp", "kubelet,", "node-9", "pulled", None, "3", "ke"]),
    (LEASE, ("leases", "kl"), "NAME HOLDER AGE", ["kl", "me", None]),
    (LIMITS, ("limitranges", "kr"), "NAME CREATED AT", ["kr", None]),
], ids=["pods-wide", "namespaces", "configmaps", "secrets", "services-wide", "resourcequotas", "events-wide",
        "leases", "limitranges"])
def test_get_prints_upstreams_columns(kubectl_matrix, manifest, args, header, row):
    if manifest:
        ok(kubectl_matrix("create", "-f", "-", input=manifest.replace("NAMESPACE", kubectl_matrix.namespace)))
    header_line, first = ok(kubectl_matrix("get", *args)).splitlines()[:2]
    assert " ".join(header_line.split()) == header
    cells = first.split()
    assert len(cells) == len(row) and all(want in (None, got) for want, got in zip(row, cells)), cells


def register_a_node_where_none_is(kubectl_matrix) -> None:
    """The embedded fixture has no node agents: register a Node as one would; upstream has its own."""
    if kubectl_matrix.target.kube is not None:
        code, _ = kubectl_matrix.target.raw("POST", "/api/v1/nodes", body={"metadata": {"name": "kn"}, "status": {
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
            "nodeInfo": {"kubeletVersion": "v1.32.0", "osImage": "Linux", "kernelVersion": "6.1",
                         "containerRuntimeVersion": "process://1"}}})
        assert code == 201


def test_get_nodes_wide_prints_upstreams_columns(kubectl_matrix):
    register_a_node_where_none_is(kubectl_matrix)
    header = ok(kubectl_matrix("get", "nodes", "-o", "wide")).splitlines()[0]
    assert header.split() == ["NAME", "STATUS", "ROLES", "AGE", "VERSION", "INTERNAL-IP", "EXTERNAL-IP", "OS-IMAGE",
                              "KERNEL-VERSION", "CONTAINER-RUNTIME"]


def test_diff_of_an_unchanged_object_shows_nothing(kubectl_matrix):
    # kubectl diff's dry-run patch carries ``annotations: {}``; upstream drops the empty map (Go's
    # omitempty), the embedded server kept it and the diff showed ``+  annotations: {}``
    ok(kubectl_matrix("create", "-f", "-", input=POD))
    result = kubectl_matrix("diff", "-f", "-", input=POD)
    assert (result.returncode, result.stdout) == (0, ""), result.stdout + result.stderr


def client_minor(kubectl_matrix) -> int:
    version = json.loads(ok(kubectl_matrix("version", "--client", "-o", "json")))["clientVersion"]
    return int(version["minor"].rstrip("+"))


def test_auth_whoami_names_the_user_or_says_the_api_is_missing(kubectl_matrix):
    # kubectl 1.28+ asks authentication.k8s.io/v1 selfsubjectreviews; 1.27 only v1beta1/v1alpha1,
    # which a v1.36 server does not serve (404). The embedded server answered 405 to both.
    result = kubectl_matrix("auth", "whoami", "-o", "json")
    if client_minor(kubectl_matrix) < 28:
        assert result.returncode != 0 and "the selfsubjectreviews API is not enabled in the cluster" in result.stderr
        return
    user = json.loads(ok(result))["status"]["userInfo"]
    assert user["username"] and "system:authenticated" in user["groups"]


def test_create_validates_unknown_fields_on_the_server(kubectl_matrix):
    # kubectl 1.27 learns that the server validates fields from /openapi/v2 (protobuf only); without
    # that document the embedded server answered its ``create -f`` with NotFound
    bogus = POD.replace("image: busybox:1.36", "image: busybox:1.36\n    bogus: 1")
    result = kubectl_matrix("create", "-f", "-", input=bogus)
    assert result.returncode != 0 and 'unknown field "spec.containers[0].bogus"' in result.stderr


def test_invalid_pod_is_rejected_with_kube_apiserver_wording(kubectl_matrix):
    result = kubectl_matrix("create", "-f", "-", input=POD.replace("name: kp", "name: Not_Valid"))
    assert result.returncode != 0 and 'is invalid: metadata.name: Invalid value: "Not_Valid"' in result.stderr


def test_an_event_about_an_object_in_another_namespace_is_invalid(kubectl_matrix):
    # Upstream legacyValidateEvent; the embedded server stored such an event
    result = kubectl_matrix("create", "-f", "-", input=EVENT.replace("NAMESPACE", "elsewhere"))
    assert result.returncode != 0
    assert ('The Event "ke" is invalid: involvedObject.namespace: Invalid value: "elsewhere": does not match '
            'event.namespace') in result.stderr


def test_get_all_lists_pods_and_services(kubectl_matrix):
    # Upstream's "all" category holds services too; the embedded discovery put pods alone in it
    ok(kubectl_matrix("create", "-f", "-", input=POD))
    ok(kubectl_matrix("create", "-f", "-", input=SERVICE))
    names = [line.split()[0] for line in ok(kubectl_matrix("get", "all")).splitlines() if line.strip()]
    assert "pod/kp" in names and "service/kv" in names, names


def test_namespaces_and_auth_can_i(kubectl_matrix):
    assert "kube-system" in ok(kubectl_matrix("get", "namespaces"))
    assert ok(kubectl_matrix("auth", "can-i", "create", "pods")).strip() == "yes"


def test_get_with_a_wrong_token_is_unauthorized(kubectl_matrix, tmp_path):
    config = yaml.safe_load(open(kubectl_matrix.kubeconfig))
    config["users"][0]["user"] = {"token": "wrong"}
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    result = kubectl_matrix("get", "pods", kubeconfig=str(path))
    assert result.returncode != 0 and "You must be logged in to the server" in result.stderr


def set_running_where_no_kubelet_does(kubectl_matrix) -> None:
    """The embedded fixture has no kubelet: play its part; upstream's node agents run the pod themselves."""
    kube = kubectl_matrix.target.kube
    if kube is not None:
        kube.store.mutate("pods", kubectl_matrix.namespace, "kp",
                          lambda p: p["status"].__setitem__("phase", "Running"), status_only=True)


def test_get_watch_prints_table_rows_for_each_change(kubectl_matrix):
    watcher = subprocess.Popen(kubectl_matrix.argv("get", "pods", "-w"), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)  # no event tells us kubectl's watch is open; a missed ADDED would still show as a row
        ok(kubectl_matrix("create", "-f", "-", input=POD))
        set_running_where_no_kubelet_does(kubectl_matrix)
        deadline = time.monotonic() + 30
        lines: list[str] = []
        while time.monotonic() < deadline and not any("Running" in line for line in lines):
            lines.append(watcher.stdout.readline())
    finally:
        watcher.terminate()
        watcher.communicate(timeout=10)
    assert lines[0].split()[:3] == ["NAME", "READY", "STATUS"]
    assert any(line.split()[:1] == ["kp"] and line.split()[2] == "Running" for line in lines), lines


# Upstream serves server-side apply (``pod/ssa serverside-applied``); the embedded server does not
# implement it and refuses it up front rather than half-applying.
NO_SSA = ("the embedded API server refuses server-side apply (not implemented: no managedFields); this test "
          "checks that refusal, upstream applies the object")


def test_server_side_apply_is_refused_with_the_way_out_and_creates_nothing(kubectl_matrix):
    if kubectl_matrix.target.kube is None:
        pytest.skip(one_server_only_reason("embedded", NO_SSA))
    result = kubectl_matrix("apply", "--server-side", "-f", "-", input=POD.replace("name: kp", "name: ssa"))
    assert result.returncode != 0 and "client-side `kubectl apply`" in result.stderr
    assert "NotFound" not in result.stderr
    assert "ssa" not in ok(kubectl_matrix("get", "pods"))


@pytest.fixture
def linked_kubectl(tmp_path, monkeypatch) -> Path:
    """PATH holds a link to a kubectl in another folder that has kubectl.1.27 only: where to look is the target's."""
    real, on_path = tmp_path / "real", tmp_path / "bin"
    real.mkdir(), on_path.mkdir()
    for name in ("kubectl", "kubectl.1.27"):
        (real / name).write_text("#!/bin/sh\n")
        (real / name).chmod(0o755)
    (on_path / "kubectl").symlink_to(real / "kubectl")
    monkeypatch.setenv("PATH", str(on_path))
    return real


def test_versioned_kubectl_is_found_beside_the_resolved_kubectl(linked_kubectl):
    assert find_kubectl("1.27") == str(linked_kubectl / "kubectl.1.27")


@pytest.mark.parametrize("ci, outcome", [("true", pytest.fail.Exception), ("", pytest.skip.Exception)],
                         ids=["ci-fails", "elsewhere-skips"])
def test_a_missing_versioned_kubectl_says_which_and_where(linked_kubectl, monkeypatch, ci, outcome):
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match=f"kubectl 1.33 is missing: no executable kubectl.1.33 in {linked_kubectl}"):
        find_kubectl("1.33")
