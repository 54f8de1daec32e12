"""Kubelet rules as pure functions: pod phase and status shapes, env and downward API, command lines, pod IPs."""

from __future__ import annotations

import base64
import sys

import pytest

from dask_k8s_backend.embedded.node.process import podenv
from dask_k8s_backend.embedded.node.ipam import PodIPAllocator
from dask_k8s_backend.embedded.podstatus import (
    ContainerRecord,
    PodRuntimeView,
    condition,
    image_id,
    image_ref,
    pod_phase,
    pod_status,
    set_condition,
)

T0 = 1_790_000_000.0


def rec(state: str, exit_code: int | None = None, restarts: int = 0) -> ContainerRecord:
    r = ContainerRecord("c", "busybox")
    if state in ("running", "terminated"):
        r.run(T0, "containerd://x")
    if state == "terminated":
        r.terminate(exit_code or 0, T0 + 1)
    r.restart_count = restarts
    return r


@pytest.mark.parametrize("states, policy, phase", [
    ([rec("waiting")], "Never", "Pending"),
    ([rec("running"), rec("waiting")], "Never", "Pending"),
    ([rec("running")], "Never", "Running"),
    ([rec("terminated", 0)], "Never", "Succeeded"),
    ([rec("terminated", 0), rec("terminated", 1)], "Never", "Failed"),
    ([rec("terminated", 0), rec("running")], "Never", "Running"),
    ([rec("terminated", 1)], "OnFailure", "Running"),
    ([rec("terminated", 0)], "OnFailure", "Succeeded"),
    ([rec("terminated", 0)], "Always", "Running"),
])
def test_pod_phase_follows_the_kubelet_rules(states, policy, phase):
    assert pod_phase(states, policy) == phase


def status_of(records, phase=None, pod=None):
    pod = pod or {"spec": {"containers": [{"name": "c"}], "restartPolicy": "Never"}}
    return pod_status(pod, PodRuntimeView(pod_ip="127.0.1.1", start_time=T0, records=records), T0 + 2, phase)


def conditions(status):
    return {c["type"]: (c["status"], c.get("reason")) for c in status["conditions"]}


def test_a_running_pod_is_ready_with_ips_start_time_and_a_running_container():
    status = status_of([rec("running")])
    assert status["phase"] == "Running"
    assert conditions(status)["Ready"] == ("True", None)
    assert conditions(status)["ContainersReady"] == ("True", None)
    assert status["podIP"] == "127.0.1.1" and status["podIPs"] == [{"ip": "127.0.1.1"}]
    assert status["hostIP"] == "127.0.0.1" and status["startTime"] == "2026-09-21T14:13:20Z"
    container = status["containerStatuses"][0]
    assert container["state"] == {"running": {"startedAt": "2026-09-21T14:13:20Z"}}
    assert container["ready"] is True and container["restartCount"] == 0
    assert container["containerID"].startswith("containerd://")
    assert container["imageID"].startswith("docker.io/library/busybox@sha256:")


def test_a_creating_pod_is_pending_with_containers_not_ready():
    status = status_of([ContainerRecord("c", "busybox")])
    assert status["phase"] == "Pending"
    assert conditions(status)["Ready"] == ("False", "ContainersNotReady")
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["message"] == "containers with unready status: [c]"
    assert status["containerStatuses"][0]["state"] == {"waiting": {"reason": "ContainerCreating"}}


def test_finished_pods_say_pod_completed_or_pod_failed_and_keep_exit_codes():
    ok = status_of([rec("terminated", 0)])
    assert ok["phase"] == "Succeeded" and conditions(ok)["Ready"] == ("False", "PodCompleted")
    assert ok["containerStatuses"][0]["state"]["terminated"]["reason"] == "Completed"
    bad = status_of([rec("terminated", 3)])
    assert bad["phase"] == "Failed" and conditions(bad)["Ready"] == ("False", "PodFailed")
    assert bad["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 3
    assert bad["containerStatuses"][0]["state"]["terminated"]["reason"] == "Error"


def test_a_restarted_container_shows_its_last_state_and_restart_count():
    r = rec("terminated", 1)
    r.restart()
    r.run(T0 + 5, "containerd://y")
    container = status_of([r], pod={"spec": {"containers": [{"name": "c"}], "restartPolicy": "Always"}})["containerStatuses"][0]
    assert container["restartCount"] == 1
    assert container["lastState"]["terminated"]["exitCode"] == 1
    assert "running" in container["state"]


def test_conditions_keep_their_transition_time_while_their_status_holds():
    status = {"conditions": [condition("Ready", True, T0)]}
    assert set_condition(status, condition("Ready", True, T0 + 50)) is False
    assert status["conditions"][0]["lastTransitionTime"] == "2026-09-21T14:13:20Z"
    assert set_condition(status, condition("Ready", False, T0 + 60, "ContainersNotReady")) is True
    assert status["conditions"][0]["lastTransitionTime"] == "2026-09-21T14:14:20Z"


def test_existing_scheduler_condition_is_kept_by_the_kubelet():
    pod = {"spec": {"containers": [{"name": "c"}]}, "status": {"conditions": [condition("PodScheduled", True, T0)]}}
    status = status_of([rec("running")], pod=pod)
    assert conditions(status)["PodScheduled"] == ("True", None)


@pytest.mark.parametrize("image, ref", [("busybox", "docker.io/library/busybox:latest"),
                                        ("ghcr.io/dask/dask:2026.8.0", "ghcr.io/dask/dask:2026.8.0"),
                                        ("user/app:1", "docker.io/user/app:1"),
                                        ("localhost:5000/app", "localhost:5000/app:latest")])
def test_images_are_reported_fully_qualified(image, ref):
    assert image_ref(image) == ref
    assert image_id(image).startswith(ref.rsplit(":", 1)[0] + "@sha256:")


@pytest.mark.parametrize("text, expanded", [
    ("$(A)-x", "1-x"), ("$$(A)", "$(A)"), ("$(MISSING)", "$(MISSING)"), ("cost $5", "cost $5"), ("$(A", "$(A"),
])
def test_variable_references_expand_like_kubernetes(text, expanded):
    assert podenv.expand(text, {"A": "1"}) == expanded


POD = {
    "metadata": {"name": "p1", "namespace": "ns", "uid": "u-1", "labels": {"app": "x"}},
    "spec": {"nodeName": "node-1", "containers": [{"name": "c", "resources": {"limits": {"memory": "1Gi", "cpu": "1500m"}}}]},
    "status": {"podIP": "127.0.1.7", "hostIP": "127.0.0.1"},
}


def lookup_from(objects):
    return lambda resource, namespace, name: objects.get((resource, namespace, name))


def test_env_has_downward_api_values_and_later_values_see_earlier_ones():
    container = {"name": "c", "resources": POD["spec"]["containers"][0]["resources"], "env": [
        {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
        {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
        {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
        {"name": "ADDR", "value": "tcp://$(IP):8786"},
    ]}
    env = podenv.container_env(POD, container, lookup_from({}))
    assert (env["IP"], env["NAME"], env["NS"], env["NODE"], env["APP"]) == ("127.0.1.7", "p1", "ns", "node-1", "x")
    assert (env["MEM"], env["CPU"], env["ADDR"]) == ("1024", "2", "tcp://127.0.1.7:8786")
    assert env["HOSTNAME"] == "p1"
    assert env["PATH"].split(":")[0] == str(podenv.interpreter_bin())


def test_secret_and_configmap_keys_and_env_from_with_prefix():
    objects = {("secrets", "ns", "s"): {"data": {"token": base64.b64encode(b"sekret").decode()}},
               ("configmaps", "ns", "cm"): {"data": {"mode": "fast", "level": "3"}}}
    container = {"name": "c", "envFrom": [{"configMapRef": {"name": "cm"}, "prefix": "CFG_"}], "env": [
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "token"}}},
        {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "mode"}}},
        {"name": "OPT", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k", "optional": True}}},
    ]}
    env = podenv.container_env(POD, container, lookup_from(objects))
    assert (env["TOKEN"], env["MODE"], env["CFG_level"]) == ("sekret", "fast", "3")
    assert "OPT" not in env


def test_a_missing_secret_is_a_container_config_error_naming_it():
    container = {"name": "c", "env": [{"name": "T", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "k"}}}]}
    with pytest.raises(podenv.ContainerConfigError, match='secret "creds" not found'):
        podenv.container_env(POD, container, lookup_from({}))


def test_a_pods_own_path_still_finds_this_environments_tools():
    container = {"name": "c", "env": [{"name": "PATH", "value": "/opt/conda/bin:/usr/bin"}]}
    env = podenv.container_env(POD, container, lookup_from({}))
    assert env["PATH"].split(":") == [str(podenv.interpreter_bin()), "/opt/conda/bin", "/usr/bin"]
    assert podenv.resolve_program("dask", env["PATH"]) == str(podenv.interpreter_bin() / "dask")


def test_python_resolves_to_this_interpreter_and_args_alone_are_the_command():
    assert podenv.resolve_program("python", "/nowhere") == sys.executable
    assert podenv.resolve_program("python3", "/nowhere") == sys.executable
    assert podenv.resolve_program("no-such-program-here", "/usr/bin") is None
    assert podenv.command_line({"args": ["dask", "worker", "$(ADDR)"]}, {"ADDR": "tcp://x:1"}) == ["dask", "worker", "tcp://x:1"]
    assert podenv.command_line({"command": ["sh", "-c"], "args": ["echo $(A)"]}, {"A": "hi"}) == ["sh", "-c", "echo hi"]


def test_pod_ips_are_unique_per_node_and_not_reused_at_once():
    a, b = PodIPAllocator(0, start=0), PodIPAllocator(1)
    first = [a.allocate(f"pod-{i}") for i in range(300)]
    assert len(set(first)) == 300 and all(ip.startswith("127.0.") for ip in first)
    assert "127.0.0.1" not in first and first[0] == "127.0.1.1" and first[254] == "127.0.2.1"
    assert a.allocate("pod-3") == first[3]  # same owner, same IP
    a.release("pod-0")
    assert a.allocate("new") not in first  # the freed IP is not handed out again straight away
    assert b.allocate("pod-0").startswith("127.1.")


def test_the_first_ip_is_random_so_parallel_clusters_rarely_collide():
    firsts = {PodIPAllocator(0).allocate("p") for _ in range(20)}
    assert len(firsts) > 1


def test_ip_blocks_outside_the_second_octet_are_refused():
    with pytest.raises(ValueError, match="ip_block"):
        PodIPAllocator(300)
