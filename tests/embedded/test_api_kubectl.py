"""kubectl v1.32, unchanged, against the embedded API server (skipped when kubectl is absent)."""

from __future__ import annotations

import json

import pytest

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


def ok(result):
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_version_and_api_resources(kubectl):
    assert "Server Version: v1.32" in ok(kubectl("version"))
    resources = ok(kubectl("api-resources", "--api-group="))
    assert "pods" in resources and "namespaces" in resources


def test_create_get_apply_label_delete(kubectl):
    assert "pod/kp created" in ok(kubectl("create", "-f", "-", input=POD))
    table = ok(kubectl("get", "pods"))
    assert table.split()[:5] == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"] and "kp" in table
    assert "configured" in ok(kubectl("apply", "-f", "-", input=POD.replace("app: web", "app: api")))
    assert json.loads(ok(kubectl("get", "pod", "kp", "-o", "json")))["metadata"]["labels"] == {"app": "api"}
    ok(kubectl("label", "pod", "kp", "tier=front"))
    assert "kp" in ok(kubectl("get", "pods", "-l", "tier in (front),app=api"))
    assert "No resources found" in kubectl("get", "pods", "-l", "tier=back").stderr
    assert 'pod "kp" deleted' in ok(kubectl("delete", "pod", "kp"))


def test_create_validates_unknown_fields_on_the_server(kubectl):
    result = kubectl("create", "-f", "-", input=POD.replace("image: busybox:1.36", "image: busybox:1.36\n    bogus: 1"))
    assert result.returncode != 0 and 'unknown field "spec.containers[0].bogus"' in result.stderr


def test_invalid_pod_is_rejected_with_kube_apiserver_wording(kubectl):
    result = kubectl("create", "-f", "-", input=POD.replace("name: kp", "name: Not_Valid"))
    assert result.returncode != 0 and 'is invalid: metadata.name: Invalid value: "Not_Valid"' in result.stderr


def test_namespaces_and_auth_can_i(kubectl):
    assert "kube-system" in ok(kubectl("get", "namespaces"))
    assert ok(kubectl("auth", "can-i", "create", "pods")).strip() == "yes"


def test_get_without_a_token_is_unauthorized(kube, tmp_path):
    import shutil
    import subprocess

    import yaml

    config = yaml.safe_load(open(kube.kubeconfig))
    config["users"][0]["user"] = {"token": "wrong"}
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not on PATH")
    result = subprocess.run(["kubectl", "--kubeconfig", str(path), "get", "pods"], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode != 0 and "You must be logged in to the server" in result.stderr


def test_get_watch_prints_table_rows_for_each_change(kube, kubectl):
    import subprocess
    import time

    watcher = subprocess.Popen(["kubectl", "--kubeconfig", kube.kubeconfig, "get", "pods", "-w"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)  # no event tells us kubectl's watch is open; a missed ADDED would still show as a row
        ok(kubectl("create", "-f", "-", input=POD))
        kube.store.mutate("pods", "default", "kp", lambda p: p["status"].__setitem__("phase", "Running"),
                          status_only=True)
        deadline = time.monotonic() + 10
        lines: list[str] = []
        while time.monotonic() < deadline and not any("Running" in line for line in lines):
            lines.append(watcher.stdout.readline())
    finally:
        watcher.terminate()
        watcher.communicate(timeout=10)
    assert lines[0].split()[:3] == ["NAME", "READY", "STATUS"]
    assert any(line.split()[:3] == ["kp", "0/1", "Running"] for line in lines)


def test_server_side_apply_is_refused_with_the_way_out_and_creates_nothing(kubectl):
    result = kubectl("apply", "--server-side", "-f", "-", input=POD.replace("name: kp", "name: ssa"))
    assert result.returncode != 0 and "client-side `kubectl apply`" in result.stderr
    assert "NotFound" not in result.stderr
    assert "ssa" not in ok(kubectl("get", "pods"))
