"""Chaos that only a real control plane can show: API server restart, etcd compaction, node loss.

Each scenario runs a real KubeSparkCluster (client mode, ``k8s://`` + the admin kubeconfig) against
an :class:`~upstream.control_plane.UpstreamKubernetes` started by the caller, injects one fault
through the control plane (restart kube-apiserver, compact etcd, SIGKILL a node agent) and returns
a report of figures; ``ci/upstream_chaos.py`` prints them. Oracles read the API server with the
kubernetes client, never the backend's own view, and every wait is bounded.
"""

from __future__ import annotations

import json
import logging
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import yaml
from distributed import Client
from kubernetes import client as k8s, config as k8s_config

from dask_k8s_backend import KubeSparkCluster, labels

from .control_plane import UpstreamKubernetes

logger = logging.getLogger(__name__)

NAMESPACE = "default"
UNREACHABLE = "node.kubernetes.io/unreachable"


class ScenarioTimeout(RuntimeError):
    """A bounded wait of a scenario ran out; the message says what was awaited and what was seen."""


def wait_for(what: str, probe: Callable[[], Any], *, timeout: float, interval: float = 0.5,
             until: Callable[[Any], Any] = bool) -> Any:
    """Poll ``probe`` until ``until`` accepts what it returns (by default: something truthy) and return that;
    API errors while a fault lasts count as "not yet"."""
    deadline = time.monotonic() + timeout
    seen: Any = None
    while time.monotonic() < deadline:
        try:
            seen = probe()
        except Exception as e:  # the API server may be restarting
            seen = e
        else:
            if until(seen):
                return seen
        time.sleep(interval)
    raise ScenarioTimeout(f"Waited {timeout:.0f} s for {what}; last seen: {seen!r}")


def core_api(kube: UpstreamKubernetes) -> k8s.CoreV1Api:
    return k8s.CoreV1Api(k8s_config.new_client_from_config(config_file=kube.kubeconfig))


def app_pods(api: k8s.CoreV1Api, app_id: str) -> list[Any]:
    return api.list_namespaced_pod(NAMESPACE, label_selector=f"{labels.APP_ID}={app_id}", _request_timeout=10).items


def executor_id(pod: Any) -> int:
    return int(pod.metadata.labels[labels.EXECUTOR_ID])


def running_ids(api: k8s.CoreV1Api, app_id: str, node: str | None = None) -> set[int]:
    """Executors whose pod is Running, not being deleted, and (if given) on ``node``."""
    return {executor_id(p) for p in app_pods(api, app_id)
            if p.status.phase == "Running" and p.metadata.deletion_timestamp is None
            and node in (None, p.spec.node_name)}


def backend(cluster: KubeSparkCluster) -> Any:
    """The scheduler plugin's components (client mode: the scheduler runs in this process)."""
    return cluster.scheduler.plugins["k8s-backend"].components


def cluster_kwargs(kube: UpstreamKubernetes, **extra: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = dict(
        master=f"k8s://{kube.url}", namespace=NAMESPACE, worker_memory="512MiB", quiet=True,
        authenticate={"kubeconfig": kube.kubeconfig},
        executor={"delete-grace-period": "2s", "api-polling-interval": "5s"},
    )
    kwargs.update(extra)
    return kwargs


class PodsSeen:
    """Every pod (uid -> executor id) of an app that a list every ``interval`` s showed, from a thread.

    Why: the backend's own counters cannot be the oracle for duplicates; a pod created and deleted
    between two lists would escape, but the backend deletes only pods it has seen in a snapshot,
    which takes longer than the interval. Lists that fail while the API server is down are skipped.
    """

    def __init__(self, api: k8s.CoreV1Api, app_id: str, interval: float = 0.2) -> None:
        self.api, self.app_id, self.interval = api, app_id, interval
        self.uids: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pods-seen", daemon=True)

    def __enter__(self) -> PodsSeen:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=15)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.uids.update({p.metadata.uid: executor_id(p) for p in app_pods(self.api, self.app_id)})
            except Exception as e:
                logger.debug("listing pods failed (%s); next try in %.1f s", e, self.interval)


# ---------------------------------------------------------------------------- 1: API server restart
@dataclass
class RestartReport:
    target: int
    pods_before_restart: int = 0
    outage_seconds: float = float("nan")
    watch_restarts: int = 0  # the backend's watch streams that ended and were resumed
    watch_relists: int = 0  # of which resumed by listing again (410 Gone)
    target_seconds: float = float("nan")  # scale(target) -> target Running pods
    pods_created: int = 0  # the allocator's successful create requests
    pods_seen: int = 0  # distinct pods (uids) the oracle's lists ever showed
    executor_ids_twice: list[int] = field(default_factory=list)
    highest_executor_id: int = 0  # above target: ids of creations refused during the outage, never reused
    ok: bool = False


def run_apiserver_restart(kube: UpstreamKubernetes, *, target: int = 50, restart_after: int = 10) -> RestartReport:
    """scale(target), restart kube-apiserver once ``restart_after`` pods exist, wait for target Running pods."""
    report = RestartReport(target=target)
    api = core_api(kube)
    with KubeSparkCluster(**cluster_kwargs(kube)) as cluster, PodsSeen(api, cluster.app.app_id) as seen:
        app_id, watch = cluster.app.app_id, backend(cluster).watch
        restarts, relists = watch.restarts, watch.relists
        started = time.monotonic()
        cluster.scale(target)
        report.pods_before_restart = len(wait_for(
            f"{restart_after} pods", lambda: (lambda pods: pods if len(pods) >= restart_after else None)(
                app_pods(api, app_id)), timeout=60, interval=0.1))
        report.outage_seconds = kube.restart_apiserver()
        wait_for(f"{target} Running pods", lambda: len(running_ids(api, app_id)) >= target, timeout=180)
        report.target_seconds = time.monotonic() - started
        time.sleep(5)  # a duplicate created late would show now
        report.watch_restarts, report.watch_relists = watch.restarts - restarts, watch.relists - relists
        report.pods_created = backend(cluster).allocator.pods_created
        ids = list(seen.uids.values())
        report.pods_seen, report.highest_executor_id = len(ids), max(ids, default=0)
        report.executor_ids_twice = sorted({i for i in ids if ids.count(i) > 1})
        report.ok = (report.pods_seen == target == report.pods_created and not report.executor_ids_twice
                     and len(running_ids(api, app_id)) == target and report.watch_restarts >= 1)
    return report


# ---------------------------------------------------------------------------- 2: etcd compaction
@dataclass
class CompactionReport:
    target: int
    churn: str = ""
    revision_compacted: int = 0
    watch_relists: int = 0  # the backend's relists after the compaction (410 Gone)
    executors_equal_pods: bool = False
    target_held: bool = False
    executor_ids_twice: list[int] = field(default_factory=list)
    ok: bool = False


def etcd_post(kube: UpstreamKubernetes, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """One call of etcd's v3 HTTP/JSON gateway (``etcdctl`` is not built)."""
    assert kube.layout is not None
    request = urllib.request.Request(kube.layout.etcd_url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def compact_etcd(kube: UpstreamKubernetes) -> int:
    """Compact (physically) to etcd's current revision: no older revision can be read or watched after."""
    revision = int(etcd_post(kube, "/v3/kv/range", {"key": "AA=="})["header"]["revision"])  # key "\0"
    etcd_post(kube, "/v3/kv/compaction", {"revision": revision, "physical": True})
    return revision


def executors_match_pods(cluster: KubeSparkCluster, api: k8s.CoreV1Api, app_id: str) -> bool:
    """The backend's live executors are exactly the app's Running pods, one each."""
    live = sorted(e["id"] for e in cluster.executors() if e["phase"] in ("Running", "Pending"))
    return live == sorted(running_ids(api, app_id))


def run_etcd_compaction(kube: UpstreamKubernetes, *, target: int = 20) -> CompactionReport:
    """Churn (scale up, delete pods from outside, scale down), compact etcd, make the watch resume: relist.

    The API server's watch cache keeps serving a resourceVersion that etcd has compacted away, so the
    410 reaches a client when its watch resumes from an old resourceVersion after the cache was rebuilt
    from the compacted etcd: the scenario restarts kube-apiserver right after the compaction for that.
    """
    report = CompactionReport(target=target)
    api = core_api(kube)
    with KubeSparkCluster(**cluster_kwargs(kube)) as cluster:
        app_id, watch = cluster.app.app_id, backend(cluster).watch
        report.churn = _churn(cluster, api, app_id, target)
        relists = watch.relists
        report.revision_compacted = compact_etcd(kube)
        kube.restart_apiserver()
        wait_for("the backend's watch to list again", lambda: watch.relists > relists, timeout=60)
        report.watch_relists = watch.relists - relists
        wait_for(f"{target} Running pods", lambda: len(running_ids(api, app_id)) == target, timeout=60)
        report.executors_equal_pods = bool(wait_for("executors == pods", lambda: executors_match_pods(
            cluster, api, app_id), timeout=30))
        time.sleep(5)  # the target holds: nothing lost, nothing created twice
        report.target_held = len(running_ids(api, app_id)) == target and executors_match_pods(cluster, api, app_id)
        ids = [executor_id(p) for p in app_pods(api, app_id)]
        report.executor_ids_twice = sorted({i for i in ids if ids.count(i) > 1})
        report.ok = (report.watch_relists >= 1 and report.executors_equal_pods and report.target_held
                     and not report.executor_ids_twice)
    return report


def _churn(cluster: KubeSparkCluster, api: k8s.CoreV1Api, app_id: str, target: int) -> str:
    """Scale to target + 5, delete 3 pods from outside (replaced), scale down to target."""
    cluster.scale(target + 5)
    wait_for(f"{target + 5} Running pods", lambda: len(running_ids(api, app_id)) == target + 5, timeout=90)
    victims = sorted(running_ids(api, app_id))[:3]
    for victim in victims:
        api.delete_namespaced_pod(f"{_pod_prefix(api, app_id)}{victim}", NAMESPACE, grace_period_seconds=0)
    wait_for("3 replacements", lambda: len(running_ids(api, app_id) - set(victims)) == target + 5, timeout=60)
    cluster.scale(target)
    wait_for(f"{target} Running pods", lambda: len(running_ids(api, app_id)) == target, timeout=60)
    return f"scale({target + 5}), 3 pods deleted from outside and replaced, scale({target})"


def _pod_prefix(api: k8s.CoreV1Api, app_id: str) -> str:
    name = app_pods(api, app_id)[0].metadata.name
    return name[: name.rindex("-exec-") + len("-exec-")]


# ---------------------------------------------------------------------------- 3: node agent SIGKILLed
@dataclass
class NodeLossReport:
    target: int
    toleration_seconds: int
    victim_node: str = ""
    executors_lost: list[int] = field(default_factory=list)
    unreachable_seconds: float = float("nan")  # kill -> the node carries the unreachable NoExecute taint
    evicted_seconds: float = float("nan")  # kill -> the lost pods have a deletionTimestamp
    reported_lost_seconds: float = float("nan")  # kill -> the backend reported every lost executor lost
    replaced_seconds: float = float("nan")  # kill -> target Running pods on the other node, all registered
    replacements_node: str = ""
    result_correct: bool = False
    ok: bool = False


def toleration_template(seconds: int) -> Path:
    """A worker pod template tolerating an unreachable or not-ready node for ``seconds`` (not 300)."""
    tolerations = [{"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": seconds}
                   for key in (UNREACHABLE, "node.kubernetes.io/not-ready")]
    template = {"apiVersion": "v1", "kind": "Pod",
                "spec": {"tolerations": tolerations, "containers": [{"name": "worker"}]}}
    path = Path(tempfile.mkstemp(prefix="upstream-chaos-template-", suffix=".yaml")[1])
    path.write_text(yaml.safe_dump(template))
    return path


def slow_block_task(delay: float) -> Callable[[Any], Any]:
    """A block function local to a call: pickled by value, as workers cannot import ``ci/``."""
    def slow_block(block: Any) -> Any:
        time.sleep(delay)
        return block
    return slow_block


def run_node_loss(kube: UpstreamKubernetes, *, target: int = 4, toleration_seconds: int = 10) -> NodeLossReport:
    """SIGKILL the node agent holding workers while a dask.array sum runs; wait for eviction and replacement."""
    report = NodeLossReport(target=target, toleration_seconds=toleration_seconds)
    api = core_api(kube)
    template = toleration_template(toleration_seconds)
    worker = {"pod-template": str(template), "death-timeout": "20s"}
    try:
        with dask.config.set({"distributed.scheduler.allowed-failures": 10}), \
                KubeSparkCluster(**cluster_kwargs(kube, n_workers=target, worker=worker)) as cluster, \
                Client(cluster) as client:
            client.wait_for_workers(target, timeout=120)
            app_id = cluster.app.app_id
            x = da.ones((4000, 4000), chunks=(500, 500)).map_blocks(slow_block_task(0.5), dtype=float)
            total = client.compute(x.sum())
            time.sleep(3)
            _kill_busiest_node(kube, api, app_id, report)
            killed = time.monotonic()
            _await_recovery(cluster, api, app_id, report, killed)
            report.result_correct = float(total.result(timeout=120)) == 4000.0 * 4000.0
            report.ok = report.result_correct and report.replacements_node not in ("", report.victim_node)
    finally:
        template.unlink(missing_ok=True)
    return report


def _kill_busiest_node(kube: UpstreamKubernetes, api: k8s.CoreV1Api, app_id: str, report: NodeLossReport) -> None:
    by_node: dict[str, set[int]] = {}
    for pod in app_pods(api, app_id):
        by_node.setdefault(pod.spec.node_name, set()).add(executor_id(pod))
    report.victim_node = max(sorted(by_node), key=lambda n: len(by_node[n]))
    report.executors_lost = sorted(by_node[report.victim_node])
    logger.info("Killing node agent %s with executors %s", report.victim_node, report.executors_lost)
    kube.kill_node_agent(report.victim_node)


def _await_recovery(cluster: KubeSparkCluster, api: k8s.CoreV1Api, app_id: str, report: NodeLossReport,
                    killed: float) -> None:
    """Taint, eviction, then target Running registered workers elsewhere; each step bounded."""
    lost = set(report.executors_lost)

    def tainted() -> bool:
        taints = api.read_node(report.victim_node).spec.taints or []
        return any(t.key == UNREACHABLE and t.effect == "NoExecute" for t in taints)

    wait_for(f"the {UNREACHABLE} taint on {report.victim_node}", tainted, timeout=90)
    report.unreachable_seconds = time.monotonic() - killed
    wait_for("the lost pods' eviction", lambda: all(
        p.metadata.deletion_timestamp is not None for p in app_pods(api, app_id) if executor_id(p) in lost),
        timeout=report.toleration_seconds + 60)
    report.evicted_seconds = time.monotonic() - killed
    wait_for("the backend to report the lost executors",
             lambda: lost <= backend(cluster).lifecycle.lost_ids, timeout=30)
    report.reported_lost_seconds = time.monotonic() - killed

    def recovered() -> bool:
        live = running_ids(api, app_id)
        workers = {str(ws.name) for ws in list(cluster.scheduler.workers.values())}
        return len(live) == report.target and not live & lost and {str(i) for i in live} == workers

    wait_for(f"{report.target} registered workers, none of {sorted(lost)}", recovered, timeout=120)
    report.replaced_seconds = time.monotonic() - killed
    nodes = {p.spec.node_name for p in app_pods(api, app_id) if executor_id(p) not in lost}
    report.replacements_node = ",".join(sorted(n for n in nodes if n))
