"""The simulated kubelet: real phase transitions on a timer, reproducible failures, many pods on one thread."""

from __future__ import annotations

import threading
import time

import pytest
from kubelet_fixtures import container_state, get_pod, make_store, phase_of, pod, wait_for, wait_phase

from dask_k8s_backend.embedded.podstatus import get_condition
from dask_k8s_backend.embedded.control.scheduler import EmbeddedScheduler
from dask_k8s_backend.embedded.node.simulated import SimulatedKubelet, will_fail

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def make_cluster(tmp_path):
    started = []
    before = set(threading.enumerate())

    def make(**options):
        store = make_store()
        scheduler = EmbeddedScheduler(store)
        kubelet = SimulatedKubelet(store, "sim-1", work_dir=tmp_path, cpu="1000", memory="1Ti", pods=20000, **options)
        scheduler.start()
        kubelet.start()
        started.append((scheduler, kubelet))
        return store, kubelet

    yield make
    for scheduler, kubelet in started:
        kubelet.stop()
        scheduler.stop()
    leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    assert leaked == [], f"threads left behind: {leaked}"


def test_a_pod_goes_pending_then_running_after_the_start_delay_then_succeeds(make_cluster):
    store, _ = make_cluster(start_delay=0.3, run_duration=0.3)
    created = time.monotonic()
    store.create("pods", "default", pod("p", ["dask", "worker"]))
    pending = wait_for(lambda: (get_pod(store, "p") or {}).get("status", {}).get("podIP") and get_pod(store, "p"))
    assert pending["status"]["phase"] == "Pending"
    assert container_state(pending) == {"waiting": {"reason": "ContainerCreating"}}
    running = wait_phase(store, "p", "Running")
    assert time.monotonic() - created >= 0.3
    assert get_condition(running, "Ready")["status"] == "True"
    assert container_state(running)["running"]["startedAt"]
    done = wait_phase(store, "p", "Succeeded")
    assert container_state(done)["terminated"]["exitCode"] == 0


def test_without_a_run_duration_pods_keep_running(make_cluster):
    store, _ = make_cluster(start_delay=0.0)
    store.create("pods", "default", pod("p", ["x"]))
    wait_phase(store, "p", "Running")
    time.sleep(0.3)  # nothing should happen: there is no event to wait for
    assert phase_of(store, "p") == "Running"


def test_failures_follow_the_rate_and_are_the_same_for_the_same_seed(make_cluster):
    store, _ = make_cluster(start_delay=0.0, failure_rate=0.3, seed=7)
    names = [f"w-{i}" for i in range(60)]
    for name in names:
        store.create("pods", "default", pod(name, ["x"]))
    expected = {n for n in names if will_fail(7, "default", n, 0.3)}
    assert 5 < len(expected) < 35
    wait_for(lambda: all(phase_of(store, n) == ("Failed" if n in expected else "Running") for n in names),
             what="failing pods failed, the others running")
    failed = get_pod(store, sorted(expected)[0])
    assert container_state(failed)["terminated"]["exitCode"] == 1
    assert {n for n in names if will_fail(8, "default", n, 0.3)} != expected


def test_a_running_pod_deleted_gracefully_is_stopped_and_removed(make_cluster):
    store, _ = make_cluster(start_delay=0.0)
    seen = []
    store.add_listener(lambda kind, obj: seen.append((kind, obj)) if obj["metadata"].get("name") == "p" else None)
    store.create("pods", "default", pod("p", ["x"]))
    wait_phase(store, "p", "Running")
    store.delete("pods", "default", "p", grace_period_seconds=30)
    wait_for(lambda: get_pod(store, "p") is None, timeout=5)
    final = [obj for kind, obj in seen if kind == "MODIFIED"][-1]
    assert final["status"]["phase"] == "Failed" and container_state(final)["terminated"]["exitCode"] == 143


def test_pods_get_unique_ips_and_a_generated_log(make_cluster):
    store, kubelet = make_cluster(start_delay=0.0)
    for i in range(20):
        store.create("pods", "default", pod(f"p{i}", ["x"]))
    for i in range(20):
        wait_phase(store, f"p{i}", "Running")
    ips = {get_pod(store, f"p{i}")["status"]["podIP"] for i in range(20)}
    assert len(ips) == 20
    log = kubelet.container_log_path("default", "p0", "main").read_text()
    assert "p0" in log and "started" in log
    assert kubelet.container_log_path("default", "p0", "main", previous=True) is None


def test_bad_options_are_refused_naming_them():
    with pytest.raises(ValueError, match="failure_rate.*1.5"):
        SimulatedKubelet(make_store(), "n", failure_rate=1.5)
    with pytest.raises(ValueError, match="start_delay"):
        SimulatedKubelet(make_store(), "n", start_delay=-1)


def test_two_thousand_pods_run_on_one_timer_thread(make_cluster):
    threads_before = threading.active_count()
    store, _ = make_cluster(start_delay=0.1)
    assert threading.active_count() - threads_before <= 3  # scheduler, dispatcher, timer
    for i in range(2000):
        store.create("pods", "default", pod(f"s{i}", ["x"], cpu="10m"))
    wait_for(lambda: sum(1 for p in store.list("pods")[0] if p.get("status", {}).get("phase") == "Running") == 2000,
             timeout=50, interval=0.5, what="2000 pods running")
    assert threading.active_count() - threads_before <= 3


def test_a_pod_can_script_its_end_with_annotations(make_cluster):
    store, _ = make_cluster(start_delay=0.0)
    oom = pod("oom", ["x"])
    oom["metadata"]["annotations"] = {"simulated.dask-k8s-backend/exit-code": "137",
                                      "simulated.dask-k8s-backend/reason": "OOMKilled",
                                      "simulated.dask-k8s-backend/run-duration": "0.2"}
    store.create("pods", "default", oom)
    wait_phase(store, "oom", "Running")
    term = container_state(wait_phase(store, "oom", "Failed"))["terminated"]
    assert (term["exitCode"], term["reason"]) == (137, "OOMKilled")


def test_a_status_write_the_api_server_did_not_take_is_written_again(make_cluster, monkeypatch):
    """An API server restarting while a pod starts: the lost writes are retried, the pod still runs."""
    monkeypatch.setattr("dask_k8s_backend.embedded.node.simulated.STATUS_RETRY_SECONDS", 0.05)
    store, kubelet = make_cluster(start_delay=0.0)
    write, refused = kubelet.transport.write_status, []

    def down_for_three_writes(key, uid, build):
        if len(refused) < 3:
            refused.append(key)
            return None  # what the transport answers when the API server cannot be reached
        return write(key, uid, build)

    monkeypatch.setattr(kubelet.transport, "write_status", down_for_three_writes)
    store.create("pods", "default", pod("p", ["x"]))
    wait_phase(store, "p", "Running")
    assert len(refused) == 3
