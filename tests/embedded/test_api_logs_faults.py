"""``pods/log`` (whole, tailLines, previous, follow) and fault injection (error rate, pause) over HTTP.

The log files come from a kubelet double: the API server only asks a node's kubelet for
``container_log_path``; the real kubelets are tested in their own suites.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest
from api_helpers import pod_manifest, wait_until
from kubernetes.client.rest import ApiException

pytestmark = pytest.mark.timeout(60)


class LogFiles:
    """A kubelet double: log files under ``root`` named after pod and container."""

    def __init__(self, root):
        self.root = root

    def stop(self):
        pass

    def path(self, pod, container, previous=False):
        return self.root / f"{pod}_{container}{'.previous' if previous else ''}.log"

    def container_log_path(self, namespace, pod, container, previous=False):
        path = self.path(pod, container, previous)
        return path if path.exists() else None


@pytest.fixture
def logs(kube, core_v1, tmp_path):
    files = LogFiles(tmp_path)
    kube.kubelets["n1"] = files
    pod = pod_manifest("p")
    pod["spec"]["nodeName"] = "n1"
    core_v1.create_namespaced_pod("default", pod)
    return files


def set_running(kube, running: bool):
    state = {"running": {"startedAt": "2026-01-01T00:00:00Z"}} if running else {"terminated": {"exitCode": 0}}
    kube.store.mutate("pods", "default", "p", lambda p: p["status"].__setitem__(
        "containerStatuses", [{"name": "main", "ready": running, "restartCount": 0, "state": state}]),
        status_only=True)


def test_log_whole_and_tail_lines(core_v1, logs):
    logs.path("p", "main").write_text("one\ntwo\nthree\n")
    assert core_v1.read_namespaced_pod_log("p", "default") == "one\ntwo\nthree\n"
    assert core_v1.read_namespaced_pod_log("p", "default", tail_lines=2) == "two\nthree\n"


def test_log_previous_instance(core_v1, logs):
    with pytest.raises(ApiException) as info:
        core_v1.read_namespaced_pod_log("p", "default", previous=True)
    assert info.value.status == 400 and "previous terminated container" in info.value.body
    logs.path("p", "main", previous=True).write_text("crashed\n")
    assert core_v1.read_namespaced_pod_log("p", "default", previous=True) == "crashed\n"


def test_log_of_a_container_that_has_not_started_is_400(core_v1, logs):
    with pytest.raises(ApiException) as info:
        core_v1.read_namespaced_pod_log("p", "default")
    assert info.value.status == 400 and "waiting to start" in info.value.body


def test_log_of_an_unknown_container_is_400(core_v1, logs):
    with pytest.raises(ApiException) as info:
        core_v1.read_namespaced_pod_log("p", "default", container="nope")
    assert info.value.status == 400 and "not valid for pod p" in info.value.body


def test_log_follow_streams_appended_lines_until_the_container_stops(kube, core_v1, logs):
    path = logs.path("p", "main")
    path.write_text("start\n")
    set_running(kube, True)
    response = core_v1.read_namespaced_pod_log("p", "default", follow=True, _preload_content=False)
    received = []
    reader = threading.Thread(target=lambda: received.extend(response.stream(64, decode_content=False)))
    reader.start()
    wait_until(lambda: b"".join(received) == b"start\n")
    with open(path, "a") as f:
        f.write("more\n")
    wait_until(lambda: b"".join(received) == b"start\nmore\n")
    with open(path, "a") as f:
        f.write("last\n")
    set_running(kube, False)
    reader.join(5)
    assert not reader.is_alive() and b"".join(received) == b"start\nmore\nlast\n"


def without_urllib3_retries(core_v1):
    # urllib3 itself retries 429/503 answers that carry Retry-After; we want to see them
    core_v1.api_client.rest_client.pool_manager.connection_pool_kw["retries"] = False
    core_v1.api_client.rest_client.pool_manager.clear()
    return core_v1


def test_error_rate_answers_429_with_retry_after_as_a_status(kube, core_v1):
    kube.faults.set_error_rate(1.0, codes=(429,), retry_after=3)
    api = without_urllib3_retries(core_v1)
    with pytest.raises(ApiException) as info:
        api.list_namespaced_pod("default")
    assert info.value.status == 429 and info.value.headers["Retry-After"] == "3"
    assert '"reason":"TooManyRequests"' in info.value.body
    kube.faults.set_error_rate(0.0)
    assert api.list_namespaced_pod("default").items == []


def test_error_rate_is_a_share_of_requests(kube, core_v1):
    core_v1 = without_urllib3_retries(core_v1)
    kube.faults.set_error_rate(0.5, codes=(503,))
    failures = 0
    for _ in range(60):
        try:
            core_v1.list_namespaced_pod("default", _preload_content=False)
        except ApiException as e:
            assert e.status == 503
            failures += 1
    kube.faults.set_error_rate(0.0)
    assert 10 <= failures <= 50


def test_pause_refuses_connections_then_listens_again_on_the_same_port(kube, core_v1):
    port = kube.apiserver.port
    kube.faults.pause(0.5)
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0
    wait_until(lambda: socket.socket().connect_ex(("127.0.0.1", port)) == 0, timeout=5)
    assert core_v1.list_namespaced_pod("default").items == []


def test_faults_are_refused_unless_enabled(make_kube):
    kube = make_kube(faults=False)
    with pytest.raises(RuntimeError, match="faults=True"):
        kube.faults.drop_watches()
