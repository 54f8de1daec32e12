"""Pure builders of pod and node status, shaped exactly like a real kubelet's.

Data flow: the process and simulated kubelets keep, per container, a small
:class:`ContainerRecord` (state, exit code, times); on every change they call
:func:`pod_status` to turn those records into the pod's whole ``status`` dict (phase,
conditions, containerStatuses, IPs, qosClass, startTime) and write it with ``store.mutate``.
The scheduler uses :func:`set_condition` for ``PodScheduled``. Nothing here does I/O or reads
the clock: times are passed in as epoch seconds, so every rule is testable with fixed values.

Shapes follow kubelet v1.32 (``pkg/kubelet/status/generate.go``, ``kubelet_pods.go``):
conditions PodReadyToStartContainers, Initialized, Ready, ContainersReady, PodScheduled; Ready
reasons ContainersNotReady / PodCompleted / PodFailed; terminated reasons Completed, Error,
OOMKilled; containerd-style ``containerID`` and ``imageID``.
"""

from __future__ import annotations

import functools
import hashlib
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..kube.resources import qos_class

Status = dict[str, Any]

KUBELET_VERSION = "v1.32.0"
RUNTIME_VERSION = "embedded://0.1.0"


def rfc3339(epoch: float) -> str:
    """``2026-11-23T08:16:16Z``: the second-precision UTC form Kubernetes uses in status."""
    return _rfc3339_second(int(epoch))


@functools.lru_cache(maxsize=256)
def _rfc3339_second(second: int) -> str:
    # cached: thousands of pods changing in the same second share one string
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second))


def image_ref(image: str) -> str:
    """The fully qualified name containerd reports: ``busybox`` -> ``docker.io/library/busybox:latest``."""
    name, tag = image, "latest"
    if "@" in image:
        return image
    last = image.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag = image.rsplit(":", 1)
    first = name.split("/", 1)[0]
    if "/" not in name:
        name = f"docker.io/library/{name}"
    elif "." not in first and ":" not in first and first != "localhost":
        name = f"docker.io/{name}"
    return f"{name}:{tag}"


def image_id(image: str) -> str:
    """``docker.io/library/busybox@sha256:<digest>``; the digest is derived from the name (nothing is pulled)."""
    ref = image_ref(image)
    repo = ref.split("@", 1)[0].rsplit(":", 1)[0] if "@" not in ref else ref.split("@", 1)[0]
    return f"{repo}@sha256:{hashlib.sha256(ref.encode()).hexdigest()}"


def container_id(pod_uid: str, container: str, restart: int) -> str:
    """A stable, unique ``containerd://<64 hex>`` id for one run of one container."""
    return "containerd://" + hashlib.sha256(f"{pod_uid}/{container}/{restart}".encode()).hexdigest()


@dataclass
class ContainerRecord:
    """What a kubelet knows about one container; :func:`container_status` renders it.

    ``state`` is ``waiting``, ``running`` or ``terminated``. ``last`` holds the previous
    run's terminated dict after a restart (``lastState``).
    """

    name: str
    image: str
    state: str = "waiting"
    reason: str | None = "ContainerCreating"
    message: str | None = None
    exit_code: int | None = None
    signal: int | None = None
    started_at: float | None = None
    finished_at: float | None = None
    restart_count: int = 0
    container_id: str | None = None
    last: dict[str, Any] | None = None
    init: bool = False

    def wait(self, reason: str, message: str | None = None) -> None:
        self.state, self.reason, self.message = "waiting", reason, message

    def run(self, started_at: float, container_id: str) -> None:
        self.state, self.reason, self.message = "running", None, None
        self.started_at, self.container_id = started_at, container_id
        self.exit_code = self.finished_at = None

    def terminate(self, exit_code: int, finished_at: float, reason: str | None = None, message: str | None = None) -> None:
        self.state, self.exit_code, self.finished_at = "terminated", exit_code, finished_at
        self.reason = reason or ("Completed" if exit_code == 0 else "Error")
        self.message = message

    def restart(self) -> None:
        """Keep this run as ``lastState`` and wait for the next one."""
        self.last = terminated_state(self)
        self.restart_count += 1
        self.wait("ContainerCreating")

    @property
    def succeeded(self) -> bool:
        return self.state == "terminated" and self.exit_code == 0


def terminated_state(record: ContainerRecord) -> dict[str, Any]:
    term: dict[str, Any] = {"exitCode": record.exit_code if record.exit_code is not None else 0,
                            "reason": record.reason or "Error"}
    if record.message:
        term["message"] = record.message
    if record.started_at is not None:
        term["startedAt"] = rfc3339(record.started_at)
    term["finishedAt"] = rfc3339(record.finished_at if record.finished_at is not None else record.started_at or 0)
    if record.container_id:
        term["containerID"] = record.container_id
    return term


def container_status(record: ContainerRecord) -> dict[str, Any]:
    """One entry of ``containerStatuses``, with the keys a real kubelet always writes."""
    if record.state == "running":
        state: dict[str, Any] = {"running": {"startedAt": rfc3339(record.started_at or 0)}}
    elif record.state == "terminated":
        state = {"terminated": terminated_state(record)}
    else:
        waiting: dict[str, Any] = {"reason": record.reason or "ContainerCreating"}
        if record.message:
            waiting["message"] = record.message
        state = {"waiting": waiting}
    started = record.state == "running"
    out: dict[str, Any] = {
        "name": record.name,
        "image": image_ref(record.image),
        "imageID": image_id(record.image) if record.container_id else "",
        "ready": started and not record.init,
        "restartCount": record.restart_count,
        "started": started,
        "state": state,
        "lastState": {"terminated": record.last} if record.last else {},
    }
    if record.container_id:
        out["containerID"] = record.container_id
    return out


def condition(type_: str, status: bool, now: float, reason: str | None = None, message: str | None = None) -> dict:
    cond: dict[str, Any] = {"type": type_, "status": "True" if status else "False",
                            "lastProbeTime": None, "lastTransitionTime": rfc3339(now)}
    if reason:
        cond["reason"] = reason
    if message:
        cond["message"] = message
    return cond


def set_condition(status: Status, new: dict[str, Any]) -> bool:
    """Put ``new`` in ``status.conditions``, keeping lastTransitionTime when the status is unchanged.

    Returns whether anything changed (status, reason or message), so callers can skip a write.
    """
    conditions = status.setdefault("conditions", [])
    for i, old in enumerate(conditions):
        if old.get("type") != new["type"]:
            continue
        same = all(old.get(k) == new.get(k) for k in ("status", "reason", "message"))
        if old.get("status") == new["status"]:
            new = {**new, "lastTransitionTime": old.get("lastTransitionTime", new["lastTransitionTime"])}
        conditions[i] = new
        return not same
    conditions.append(new)
    return True


def get_condition(pod: Mapping[str, Any], type_: str) -> dict[str, Any] | None:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return cond
    return None


def pod_phase(records: list[ContainerRecord], restart_policy: str) -> str:
    """The kubelet's ``getPhase``: from the (app) containers' states and the restart policy."""
    if not records or any(r.state == "waiting" and r.restart_count == 0 and r.last is None for r in records):
        return "Pending"
    if any(r.state == "running" for r in records):
        return "Running"
    if any(r.state == "waiting" for r in records):  # waiting to restart
        return "Running"
    # every container terminated
    if restart_policy == "Always":
        return "Running"
    if all(r.succeeded for r in records):
        return "Succeeded"
    if restart_policy == "OnFailure":
        return "Running"
    return "Failed"


@dataclass
class PodRuntimeView:
    """The kubelet-side facts that :func:`pod_status` needs besides the containers."""

    host_ip: str = "127.0.0.1"
    pod_ip: str | None = None
    start_time: float | None = None
    init_records: list[ContainerRecord] = field(default_factory=list)
    records: list[ContainerRecord] = field(default_factory=list)
    sandbox_ready: bool = True
    reason: str | None = None  # pod-level status.reason (DeadlineExceeded, Evicted)
    message: str | None = None


def pod_status(pod: Mapping[str, Any], view: PodRuntimeView, now: float, phase: str | None = None) -> Status:
    """The complete new ``status`` of ``pod`` (conditions keep their transition times).

    ``phase`` overrides the computed phase (used for a pod stopped by deletion, which keeps the
    phase its containers' exit codes give it, or for init-container failures).
    """
    spec = pod.get("spec") or {}
    old = dict(pod.get("status") or {})
    phase = phase or _phase_with_init(view, spec.get("restartPolicy") or "Always")
    status: Status = {"conditions": [dict(c) for c in old.get("conditions") or []]}
    _set_pod_conditions(status, view, phase, now)
    status["phase"] = phase
    if view.reason:
        status["reason"] = view.reason
        status["message"] = view.message or ""
    status["hostIP"] = view.host_ip
    status["hostIPs"] = [{"ip": view.host_ip}]
    if view.pod_ip:
        status["podIP"] = view.pod_ip
        status["podIPs"] = [{"ip": view.pod_ip}]
    if view.start_time is not None:
        status["startTime"] = rfc3339(view.start_time)
    if view.init_records:
        status["initContainerStatuses"] = [container_status(r) for r in view.init_records]
    status["containerStatuses"] = [container_status(r) for r in view.records]
    status["qosClass"] = old.get("qosClass") or qos_class(pod)
    order = {"PodReadyToStartContainers": 0, "Initialized": 1, "Ready": 2, "ContainersReady": 3, "PodScheduled": 4}
    status["conditions"].sort(key=lambda c: order.get(c.get("type"), 5))
    return status


def _phase_with_init(view: PodRuntimeView, restart_policy: str) -> str:
    if view.init_records and not all(r.succeeded for r in view.init_records):
        failed = any(r.state == "terminated" and not r.succeeded for r in view.init_records)
        return "Failed" if failed and restart_policy == "Never" else "Pending"
    return pod_phase(view.records, restart_policy)


def _set_pod_conditions(status: Status, view: PodRuntimeView, phase: str, now: float) -> None:
    set_condition(status, condition("PodReadyToStartContainers", view.sandbox_ready and phase in ("Pending", "Running"), now))
    init_pending = [r.name for r in view.init_records if not r.succeeded]
    if init_pending:
        set_condition(status, condition("Initialized", False, now, "ContainersNotInitialized",
                                        f"containers with incomplete status: [{' '.join(init_pending)}]"))
    else:
        set_condition(status, condition("Initialized", True, now))
    if phase == "Succeeded":
        ready = condition("Ready", False, now, "PodCompleted")
    elif phase == "Failed":
        ready = condition("Ready", False, now, "PodFailed")
    else:
        unready = [r.name for r in view.records if not (r.state == "running")]
        if unready:
            ready = condition("Ready", False, now, "ContainersNotReady",
                              f"containers with unready status: [{' '.join(unready)}]")
        else:
            ready = condition("Ready", True, now)
    set_condition(status, ready)
    set_condition(status, {**ready, "type": "ContainersReady"})


def node_object(name: str, *, capacity: Mapping[str, str], labels: Mapping[str, str] | None,
                taints: list[dict] | None, host_ip: str, pod_cidr: str, now: float, hostname: str | None = None,
                kubelet_port: int = 10250) -> dict[str, Any]:
    """The Node a kubelet registers: labels, taints, capacity = allocatable, Ready and pressure conditions.

    ``hostname`` is the Hostname address (default: the node's name; an API server that proxies to
    the kubelet must be able to resolve it) and ``kubelet_port`` the announced kubelet endpoint.
    """
    node_labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "beta.kubernetes.io/os": "linux",
        "beta.kubernetes.io/arch": "amd64",
        **(labels or {}),
    }
    stamp = rfc3339(now)

    def cond(type_: str, status: str, reason: str, message: str) -> dict[str, Any]:
        return {"type": type_, "status": status, "reason": reason, "message": message,
                "lastHeartbeatTime": stamp, "lastTransitionTime": stamp}

    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": node_labels,
                     "annotations": {"node.alpha.kubernetes.io/ttl": "0"}},
        "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr], **({"taints": list(taints)} if taints else {})},
        "status": {
            "capacity": dict(capacity),
            "allocatable": dict(capacity),
            "conditions": [
                cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                cond("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                cond("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
            ],
            "addresses": [{"type": "InternalIP", "address": host_ip}, {"type": "Hostname", "address": hostname or name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet_port}},
            "nodeInfo": {
                "architecture": "amd64", "operatingSystem": "linux", "osImage": "dask-k8s-backend embedded",
                "kernelVersion": "", "kubeletVersion": KUBELET_VERSION, "kubeProxyVersion": KUBELET_VERSION,
                "containerRuntimeVersion": RUNTIME_VERSION, "machineID": hashlib.md5(name.encode()).hexdigest(),
                "systemUUID": hashlib.md5(f"uuid/{name}".encode()).hexdigest(), "bootID": "",
            },
        },
    }
