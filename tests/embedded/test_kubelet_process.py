"""Runtime conformance of the process kubelet, driven through the object store.

Each test gets a store, the embedded scheduler and one ProcessKubelet whose pods are real local
processes; teardown stops both and checks that no process and no thread they started is left.
"""

from __future__ import annotations

import base64
import os
import threading
import time

import dask.config
import psutil
import pytest
from kubelet_fixtures import (
    container_state,
    get_pod,
    make_store,
    phase_of,
    pod,
    python,
    store_events,
    wait_for,
    wait_phase,
)

from dask_k8s_backend.embedded.node.process import warm
from dask_k8s_backend.embedded.node.process.kubelet import ProcessKubelet
from dask_k8s_backend.embedded.podstatus import get_condition
from dask_k8s_backend.embedded.control.scheduler import EmbeddedScheduler

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True, params=[True, False], ids=["warm", "exec"])
def warm_runtime(request):
    """Every pod-semantics rule holds with the warm runtime on (forked containers) and off (exec)."""
    with dask.config.set({warm.CONFIG_KEY: request.param}):
        yield request.param


def live_children(before: set[int]) -> list[psutil.Process]:
    out = []
    for child in psutil.Process(os.getpid()).children(recursive=True):
        try:
            if child.pid not in before and child.status() != psutil.STATUS_ZOMBIE:
                out.append(child)
        except psutil.Error:
            continue
    return out


class Cluster:
    """Store + scheduler + one process kubelet, with helpers to watch a pod's history."""

    def __init__(self, work_dir, **node):
        self.store = make_store()
        self.scheduler = EmbeddedScheduler(self.store)
        self.kubelet = ProcessKubelet(self.store, "node-1", work_dir=work_dir, memory_sample_interval=0.1, **node)
        self.history: list[tuple[str, dict]] = []
        self.store.add_listener(lambda kind, obj: self.history.append((kind, obj))
                                if obj.get("kind") == "Pod" or "containers" in (obj.get("spec") or {}) else None)

    def start(self):
        self.scheduler.start()
        self.kubelet.start()
        return self

    def stop(self):
        self.kubelet.stop()
        self.scheduler.stop()

    def run(self, manifest):
        self.store.create("pods", "default", manifest)
        return manifest["metadata"]["name"]

    def last_status(self, name):
        """The pod's last status before it was removed (the store no longer has it)."""
        for kind, obj in reversed(self.history):
            if obj["metadata"]["name"] == name and kind == "MODIFIED":
                return obj
        return None

    def gone(self, name):
        return any(kind == "DELETED" and obj["metadata"]["name"] == name for kind, obj in list(self.history))

    def log(self, name, container="main", previous=False):
        path = self.kubelet.container_log_path("default", name, container, previous)
        return path.read_text() if path else None


@pytest.fixture
def cluster(tmp_path):
    before_children = {p.pid for p in psutil.Process(os.getpid()).children(recursive=True)}
    before_threads = set(threading.enumerate())
    c = Cluster(tmp_path, cpu="4", memory="8Gi", labels={"disk": "ssd"}).start()
    yield c
    c.stop()
    assert live_children(before_children) == [], "the kubelet left processes behind"
    leaked = [t for t in threading.enumerate() if t not in before_threads and t.is_alive()]
    assert leaked == [], f"threads left behind: {leaked}"


def test_the_node_is_registered_with_capacity_labels_and_ready_then_removed_on_stop(tmp_path):
    c = Cluster(tmp_path, cpu="3", memory="6Gi", pods=20, labels={"zone": "a"},
                taints=[{"key": "k", "value": "v", "effect": "NoSchedule"}], extended_resources={"example.com/gpu": 2})
    c.start()
    try:
        node = c.store.get("nodes", None, "node-1")
        assert node["status"]["allocatable"] == {"cpu": "3", "memory": "6Gi", "pods": "20", "ephemeral-storage": "100Gi",
                                                 "example.com/gpu": "2"}
        assert node["metadata"]["labels"]["kubernetes.io/hostname"] == "node-1"
        assert node["metadata"]["labels"]["zone"] == "a"
        assert node["spec"]["taints"] == [{"key": "k", "value": "v", "effect": "NoSchedule"}]
        ready = next(cond for cond in node["status"]["conditions"] if cond["type"] == "Ready")
        assert ready["status"] == "True" and ready["reason"] == "KubeletReady"
        assert {"type": "InternalIP", "address": "127.0.0.1"} in node["status"]["addresses"]
    finally:
        c.stop()
    assert c.store.list("nodes")[0] == []


def test_a_pod_runs_to_success_with_exit_code_0_and_its_output_in_the_log(cluster):
    name = cluster.run(pod("hello", python("import sys; print('hello out'); print('hello err', file=sys.stderr)")))
    p = wait_phase(cluster.store, name, "Succeeded")
    term = container_state(p)["terminated"]
    assert term["exitCode"] == 0 and term["reason"] == "Completed" and term["finishedAt"]
    assert get_condition(p, "Ready")["reason"] == "PodCompleted"
    assert "hello out" in cluster.log(name) and "hello err" in cluster.log(name)
    reasons = [e["reason"] for e in store_events(cluster.store, name)]
    assert reasons[:1] == ["Scheduled"] and {"Pulled", "Created", "Started"} <= set(reasons)


def test_a_failing_command_fails_the_pod_with_its_exit_code(cluster):
    name = cluster.run(pod("fails", python("raise SystemExit(3)")))
    p = wait_phase(cluster.store, name, "Failed")
    term = container_state(p)["terminated"]
    assert (term["exitCode"], term["reason"]) == (3, "Error")
    assert get_condition(p, "Ready")["reason"] == "PodFailed"


def test_a_running_pod_is_ready_with_a_running_container_and_its_own_ip(cluster):
    name = cluster.run(pod("sleeper", python("import time; time.sleep(30)")))
    p = wait_phase(cluster.store, name, "Running")
    status = p["status"]
    assert get_condition(p, "Ready")["status"] == "True"
    container = status["containerStatuses"][0]
    assert container["ready"] and container["started"] and container["restartCount"] == 0
    assert "startedAt" in container["state"]["running"]
    assert container["containerID"].startswith("containerd://") and container["imageID"]
    assert status["podIP"].startswith("127.0.") and status["podIP"] != "127.0.0.1"
    assert status["podIPs"] == [{"ip": status["podIP"]}] and status["hostIP"] == "127.0.0.1"
    assert status["qosClass"] == "BestEffort" and status["startTime"]


def test_env_and_downward_api_values_reach_the_process_and_args_expand_them(cluster):
    cluster.store.create("secrets", "default", {"metadata": {"name": "creds"},
                                                "data": {"token": base64.b64encode(b"s3cret").decode()}})
    env = [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
           {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
           {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
           {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
           {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
           {"name": "GREETING", "value": "hi"}]
    code = "import os, sys; print(*(os.environ[k] for k in ('POD_IP','POD_NAME','POD_NAMESPACE','NODE','TOKEN','GREETING')), sys.argv[1])"
    name = cluster.run(pod("envy", ["python", "-c", code], args=["$(GREETING)-$(POD_NAME)"], env=env))
    p = wait_phase(cluster.store, name, "Succeeded")
    assert cluster.log(name).split() == [p["status"]["podIP"], "envy", "default", "node-1", "s3cret", "hi", "hi-envy"]


def test_a_process_can_listen_on_its_pod_ip(cluster):
    code = ("import os, socket; s = socket.socket(); s.bind((os.environ['POD_IP'], 0)); s.listen(); "
            "print('listening', s.getsockname()[0])")
    name = cluster.run(pod("server", python(code), env=[
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]))
    p = wait_phase(cluster.store, name, "Succeeded")
    assert f"listening {p['status']['podIP']}" in cluster.log(name)


def test_deletion_sends_sigterm_and_a_process_that_handles_it_exits_cleanly(cluster):
    code = ("import signal, sys, time\n"
            "def bye(*a):\n    print('got SIGTERM', flush=True); sys.exit(0)\n"
            "signal.signal(signal.SIGTERM, bye)\nprint('ready', flush=True)\ntime.sleep(60)")
    name = cluster.run(pod("graceful", python(code)))
    wait_phase(cluster.store, name, "Running")
    wait_for(lambda: "ready" in (cluster.log(name) or ""))
    log_path = cluster.kubelet.container_log_path("default", name, "main")
    cluster.store.delete("pods", "default", name, grace_period_seconds=10)
    wait_for(lambda: cluster.gone(name), what="pod removed after its process exited")
    assert "got SIGTERM" in log_path.read_text()
    final = cluster.last_status(name)
    assert container_state(final)["terminated"]["exitCode"] == 0 and final["status"]["phase"] == "Succeeded"
    assert "Killing" in [e["reason"] for e in store_events(cluster.store, name)]


def test_deletion_signals_only_the_main_process_and_its_children_go_with_it(cluster):
    """As a container runtime signals PID 1: a Dask nanny must get the chance to close its worker itself."""
    child = ("import signal, time\n"
             "signal.signal(signal.SIGTERM, lambda *a: print('child got SIGTERM', flush=True))\n"
             "import os\nprint('child ready', os.getpid(), flush=True)\ntime.sleep(60)")
    code = ("import signal, subprocess, sys, time\n"
            f"kid = subprocess.Popen([sys.executable, '-c', {child!r}])\n"
            "def bye(*a):\n    print('main got SIGTERM', flush=True); sys.exit(0)\n"
            "signal.signal(signal.SIGTERM, bye)\nprint('main ready', flush=True)\ntime.sleep(60)")
    name = cluster.run(pod("parent", python(code)))
    wait_for(lambda: "child ready" in (cluster.log(name) or "") and "main ready" in cluster.log(name))
    log_path = cluster.kubelet.container_log_path("default", name, "main")
    kid_pid = int(next(ln for ln in log_path.read_text().splitlines() if ln.startswith("child ready")).split()[-1])
    cluster.store.delete("pods", "default", name, grace_period_seconds=10)
    wait_for(lambda: cluster.gone(name), what="pod removed after its main process exited")
    log = log_path.read_text()
    assert "main got SIGTERM" in log and "child got SIGTERM" not in log
    assert container_state(cluster.last_status(name))["terminated"]["exitCode"] == 0
    wait_for(lambda: not psutil.pid_exists(kid_pid) or psutil.Process(kid_pid).status() == psutil.STATUS_ZOMBIE,
             timeout=5, what="the child killed with its container")


def test_a_process_ignoring_sigterm_is_killed_after_the_grace_period(cluster):
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"
    name = cluster.run(pod("stubborn", python(code)))
    wait_phase(cluster.store, name, "Running")
    wait_for(lambda: "ready" in (cluster.log(name) or ""))
    started = time.monotonic()
    cluster.store.delete("pods", "default", name, grace_period_seconds=1)
    wait_for(lambda: cluster.gone(name), timeout=10)
    elapsed = time.monotonic() - started
    assert 0.9 <= elapsed < 5, elapsed
    final = cluster.last_status(name)
    assert container_state(final)["terminated"]["exitCode"] == 137 and final["status"]["phase"] == "Failed"


def test_a_pod_removed_at_once_has_its_processes_killed_at_once(cluster):
    name = cluster.run(pod("doomed", python("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)")))
    wait_phase(cluster.store, name, "Running")
    pids = wait_for(lambda: cluster.kubelet.running_processes())
    cluster.store.delete("pods", "default", name, grace_period_seconds=0)
    wait_for(lambda: not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
                             for pid in pids), timeout=5, what="processes killed")


def test_a_container_over_its_memory_limit_is_oom_killed_with_137(cluster):
    code = "import time; x = bytearray(200 * 2**20); x[::4096] = b'x' * len(x[::4096]); time.sleep(30)"
    name = cluster.run(pod("hog", python(code), memory_limit="64Mi", memory="64Mi"))
    p = wait_phase(cluster.store, name, "Failed")
    term = container_state(p)["terminated"]
    assert (term["exitCode"], term["reason"]) == (137, "OOMKilled")
    wait_for(lambda: any(e["reason"] == "OOMKilling" for e in store_events(cluster.store, name)))


def test_an_image_that_cannot_be_pulled_leaves_the_pod_pending_in_image_pull_backoff(cluster):
    name = cluster.run(pod("noimage", ["true"], image="registry.example.com/invalid-image:1"))
    wait_for(lambda: container_state(get_pod(cluster.store, name) or {}).get("waiting", {}).get("reason") == "ErrImagePull")
    waiting = wait_for(lambda: (container_state(get_pod(cluster.store, name)).get("waiting") or {})
                       if container_state(get_pod(cluster.store, name)).get("waiting", {}).get("reason") == "ImagePullBackOff"
                       else None)
    assert waiting["message"] == 'Back-off pulling image "registry.example.com/invalid-image:1"'
    assert phase_of(cluster.store, name) == "Pending"
    reasons = [e["reason"] for e in store_events(cluster.store, name)]
    assert {"Pulling", "Failed", "BackOff"} <= set(reasons)
    cluster.store.delete("pods", "default", name)
    wait_for(lambda: get_pod(cluster.store, name) is None, what="pending pod removed on deletion")


def test_a_command_that_does_not_exist_cannot_run(cluster):
    name = cluster.run(pod("nocmd", ["no-such-command-anywhere", "--flag"]))
    p = wait_phase(cluster.store, name, "Failed")
    term = container_state(p)["terminated"]
    assert (term["exitCode"], term["reason"]) == (127, "ContainerCannotRun")
    assert 'exec: "no-such-command-anywhere": executable file not found in $PATH' in term["message"]


def test_a_missing_secret_is_create_container_config_error(cluster):
    env = [{"name": "T", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k"}}}]
    name = cluster.run(pod("nosecret", ["true"], env=env))
    wait_for(lambda: container_state(get_pod(cluster.store, name)).get("waiting", {}).get("reason")
             == "CreateContainerConfigError")
    assert container_state(get_pod(cluster.store, name))["waiting"]["message"] == 'secret "absent" not found'


def test_every_running_pod_has_a_unique_ip(cluster):
    names = [cluster.run(pod(f"ip-{i}", python("import time; time.sleep(30)"))) for i in range(6)]
    ips = [wait_phase(cluster.store, n, "Running")["status"]["podIP"] for n in names]
    assert len(set(ips)) == 6 and all(ip.startswith("127.0.") for ip in ips)


def test_unschedulable_until_a_running_pod_finishes_then_it_runs(cluster):
    first = cluster.run(pod("first", python("import time; time.sleep(1.5)"), cpu="3"))
    wait_phase(cluster.store, first, "Running")
    second = cluster.run(pod("second", python("print('second ran')"), cpu="2"))
    wait_for(lambda: (get_condition(get_pod(cluster.store, second), "PodScheduled") or {}).get("reason") == "Unschedulable")
    assert get_condition(get_pod(cluster.store, second), "PodScheduled")["message"] == (
        "0/1 nodes are available: 1 Insufficient cpu.")
    wait_phase(cluster.store, second, "Succeeded", timeout=15)
    assert "second ran" in cluster.log(second)


def test_node_selector_that_matches_runs_and_one_that_does_not_stays_pending(cluster):
    ok = cluster.run(pod("ssd", ["true"], node_selector={"disk": "ssd"}))
    no = cluster.run(pod("hdd", ["true"], node_selector={"disk": "hdd"}))
    wait_phase(cluster.store, ok, "Succeeded")
    wait_for(lambda: (get_condition(get_pod(cluster.store, no), "PodScheduled") or {}).get("message")
             == "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector.")


def test_on_failure_restarts_with_a_restart_count_and_keeps_the_previous_log(cluster):
    code = ("import os, sys\n"
            "if not os.path.exists('marker'):\n    open('marker', 'w').close(); print('first run'); sys.exit(1)\n"
            "print('second run')")
    name = cluster.run(pod("retry", python(code), restart_policy="OnFailure"))
    p = wait_phase(cluster.store, name, "Succeeded", timeout=20)
    container = p["status"]["containerStatuses"][0]
    assert container["restartCount"] == 1
    assert container["lastState"]["terminated"]["exitCode"] == 1
    assert "second run" in cluster.log(name) and "first run" in cluster.log(name, previous=True)


def test_init_containers_run_first_and_in_order(cluster):
    manifest = pod("init", python("print(open('order').read())"))
    manifest["spec"]["initContainers"] = [
        {"name": "one", "image": "python", "command": python("open('order', 'a').write('one ')")},
        {"name": "two", "image": "python", "command": python("open('order', 'a').write('two')")},
    ]
    name = cluster.run(manifest)
    p = wait_phase(cluster.store, name, "Succeeded")
    assert "one two" in cluster.log(name)
    assert [s["state"]["terminated"]["reason"] for s in p["status"]["initContainerStatuses"]] == ["Completed", "Completed"]


def test_stop_kills_every_process_including_grandchildren(tmp_path):
    before = {p.pid for p in psutil.Process(os.getpid()).children(recursive=True)}
    c = Cluster(tmp_path).start()
    code = ("import subprocess, sys, time, signal; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "subprocess.Popen([sys.executable, '-c', 'import os, time; os.setsid(); time.sleep(60)']); time.sleep(60)")
    for i in range(3):
        c.run(pod(f"tree-{i}", python(code)))
    for i in range(3):
        wait_phase(c.store, f"tree-{i}", "Running")
    wait_for(lambda: len(live_children(before)) >= 6, what="grandchildren started")
    c.stop()
    assert live_children(before) == []


def test_fifty_pods_start_concurrently(cluster):
    started = time.monotonic()
    names = [cluster.run(pod(f"many-{i}", python("import time; time.sleep(30)"), cpu="50m")) for i in range(50)]
    wait_for(lambda: all(phase_of(cluster.store, n) == "Running" for n in names), timeout=40, interval=0.2,
             what="50 pods running")
    elapsed = time.monotonic() - started
    assert elapsed < 30, elapsed
    assert len({get_pod(cluster.store, n)["status"]["podIP"] for n in names}) == 50


def test_dask_resolves_to_this_environments_dask(cluster):
    name = cluster.run(pod("dask-version", ["dask", "--version"], image="ghcr.io/dask/dask:2026.8.0"))
    wait_phase(cluster.store, name, "Succeeded", timeout=30)
    import dask

    assert dask.__version__ in cluster.log(name)


def test_dask_scheduler_and_worker_pods_talk_over_their_pod_ips(cluster):
    from distributed import Client

    ip_env = [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]
    cluster.run(pod("sched", ["dask", "scheduler"], args=["--host", "$(POD_IP)", "--port", "0", "--no-dashboard"],
                    env=ip_env))
    scheduler_ip = wait_phase(cluster.store, "sched", "Running")["status"]["podIP"]
    line = wait_for(lambda: next((ln for ln in (cluster.log("sched") or "").splitlines() if "Scheduler at:" in ln), None),
                    timeout=30, what="the scheduler's address in its log")
    address = line.split("Scheduler at:")[1].strip()
    assert address.startswith(f"tcp://{scheduler_ip}:")
    cluster.run(pod("worker", ["dask", "worker"], env=ip_env, memory_limit="1Gi",
                    args=[address, "--host", "$(POD_IP)", "--no-dashboard", "--name", "1"]))
    worker_ip = wait_phase(cluster.store, "worker", "Running")["status"]["podIP"]
    with Client(address, timeout=20) as client:
        client.wait_for_workers(1, timeout=30)
        assert [w.split("//")[1].split(":")[0] for w in client.scheduler_info()["workers"]] == [worker_ip]
        assert client.submit(sum, [1, 2]).result(timeout=10) == 3
    cluster.store.delete("pods", "default", "worker", grace_period_seconds=10)
    wait_for(lambda: cluster.gone("worker"), timeout=15, what="worker pod stopped by SIGTERM")
    assert cluster.last_status("worker")["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] in (0, 143)


def test_active_deadline_seconds_stops_the_pod_and_fails_it_with_deadline_exceeded(cluster):
    manifest = pod("deadline", python("import time; time.sleep(60)"), grace=1)
    manifest["spec"]["activeDeadlineSeconds"] = 1
    name = cluster.run(manifest)
    p = wait_phase(cluster.store, name, "Failed", timeout=10)
    assert p["status"]["reason"] == "DeadlineExceeded"
    assert p["status"]["message"] == "Pod was active on the node longer than the specified deadline"
    assert container_state(p)["terminated"]["exitCode"] == 143


def test_a_kubelet_started_late_runs_the_pods_already_bound_to_it(tmp_path):
    c = Cluster(tmp_path)
    c.store.create("pods", "default", pod("bound-early", python("print('ran late')"), node_name="node-1"))
    c.start()
    try:
        wait_phase(c.store, "bound-early", "Succeeded")
        assert "ran late" in c.log("bound-early")
    finally:
        c.stop()


def test_restart_policy_always_shows_crash_loop_back_off_between_runs(cluster):
    name = cluster.run(pod("crasher", python("raise SystemExit(2)"), restart_policy="Always"))
    waiting = wait_for(lambda: (container_state(get_pod(cluster.store, name) or {}).get("waiting") or {}).get("reason")
                       == "CrashLoopBackOff" and container_state(get_pod(cluster.store, name))["waiting"], timeout=10)
    assert waiting["message"].startswith("back-off 1s restarting failed container=main pod=crasher_default")
    p = get_pod(cluster.store, name)
    assert p["status"]["phase"] == "Running"
    assert p["status"]["containerStatuses"][0]["lastState"]["terminated"]["exitCode"] == 2
    wait_for(lambda: get_pod(cluster.store, name)["status"]["containerStatuses"][0]["restartCount"] >= 2, timeout=10)


def test_a_second_delete_with_a_shorter_grace_period_kills_sooner(cluster):
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"
    name = cluster.run(pod("impatient", python(code)))
    wait_phase(cluster.store, name, "Running")
    wait_for(lambda: "ready" in (cluster.log(name) or ""))
    cluster.store.delete("pods", "default", name, grace_period_seconds=30)
    wait_for(lambda: any(e["reason"] == "Killing" for e in store_events(cluster.store, name)), what="SIGTERM sent")
    started = time.monotonic()
    cluster.store.delete("pods", "default", name, grace_period_seconds=1)
    wait_for(lambda: cluster.gone(name), timeout=10)
    assert time.monotonic() - started < 5
    assert container_state(cluster.last_status(name))["terminated"]["exitCode"] == 137
