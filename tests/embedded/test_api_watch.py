"""Watch semantics of the embedded API server, seen by the official client's raw stream."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time

import pytest
from api_helpers import pod_manifest, wait_until

pytestmark = pytest.mark.timeout(60)


class Collector:
    """Reads a watch stream in a thread; ``events`` fills as lines arrive; ``ended`` when the stream closes."""

    def __init__(self, core_v1, **params):
        params.setdefault("timeout_seconds", 30)
        self.response = core_v1.list_namespaced_pod("default", watch=True, _preload_content=False, **params)
        self.events: list[dict] = []
        self.ended = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self):
        buffer = b""
        try:
            for chunk in self.response.stream(1024, decode_content=False):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        self.events.append(json.loads(line))
        except Exception:  # the stream was closed under us
            pass
        finally:
            self.ended.set()

    def types_and_names(self, include_bookmarks=False):
        return [(e["type"], e["object"]["metadata"].get("name")) for e in self.events
                if include_bookmarks or e["type"] != "BOOKMARK"]

    def wait_for(self, count, include_bookmarks=False):
        wait_until(lambda: len(self.types_and_names(include_bookmarks)) >= count)
        return self.types_and_names(include_bookmarks)

    def close(self):
        if not self.ended.is_set():
            self.response.shutdown()  # unblocks the reader thread's pending read
        self.response.close()
        self._thread.join(5)


@pytest.fixture
def watches(core_v1):
    opened = []

    def open_(**params):
        collector = Collector(core_v1, **params)
        opened.append(collector)
        return collector

    yield open_
    for collector in opened:
        collector.close()


def test_events_arrive_in_order_added_modified_deleted(core_v1, watches):
    start = core_v1.list_namespaced_pod("default").metadata.resource_version
    watch = watches(resource_version=start)
    core_v1.create_namespaced_pod("default", pod_manifest("p"))
    core_v1.patch_namespaced_pod("p", "default", {"metadata": {"labels": {"x": "1"}}})
    core_v1.delete_namespaced_pod("p", "default")
    assert watch.wait_for(3) == [("ADDED", "p"), ("MODIFIED", "p"), ("DELETED", "p")]
    versions = [int(e["object"]["metadata"]["resourceVersion"]) for e in watch.events]
    assert versions == sorted(versions) and versions[0] > int(start)


def test_resource_version_zero_starts_with_synthetic_added_for_current_objects(core_v1, watches):
    core_v1.create_namespaced_pod("default", pod_manifest("old"))
    watch = watches(resource_version="0")
    assert watch.wait_for(1) == [("ADDED", "old")]
    core_v1.create_namespaced_pod("default", pod_manifest("new"))
    assert watch.wait_for(2) == [("ADDED", "old"), ("ADDED", "new")]


def test_watch_from_an_old_resource_version_replays_what_happened_since(core_v1, watches):
    start = core_v1.list_namespaced_pod("default").metadata.resource_version
    core_v1.create_namespaced_pod("default", pod_manifest("a"))
    core_v1.create_namespaced_pod("default", pod_manifest("b"))
    watch = watches(resource_version=start)
    assert watch.wait_for(2) == [("ADDED", "a"), ("ADDED", "b")]


def test_too_old_resource_version_gets_one_410_error_event(make_kube):
    from kubernetes import client, config

    kube = make_kube()
    kube.store._history_size = 2  # a small history makes "too old" reachable quickly
    for i in range(5):
        kube.store.create("configmaps", "default", {"metadata": {"name": f"c{i}"}})
    api_client = config.new_client_from_config(config_file=kube.kubeconfig)
    try:
        response = client.CoreV1Api(api_client).list_namespaced_pod("default", watch=True, resource_version="1",
                                                                    timeout_seconds=5, _preload_content=False)
        assert response.status == 200
        lines = [json.loads(line) for line in response.data.splitlines() if line.strip()]
    finally:
        api_client.close()
    assert len(lines) == 1 and lines[0]["type"] == "ERROR"
    status = lines[0]["object"]
    assert (status["kind"], status["code"], status["reason"]) == ("Status", 410, "Expired")


def test_label_selector_watch_sees_objects_entering_and_leaving_as_added_and_deleted(core_v1, watches):
    core_v1.create_namespaced_pod("default", pod_manifest("p"))
    start = core_v1.read_namespaced_pod("p", "default").metadata.resource_version
    watch = watches(resource_version=start, label_selector="role=worker")
    core_v1.patch_namespaced_pod("p", "default", {"metadata": {"labels": {"role": "worker"}}})
    core_v1.patch_namespaced_pod("p", "default", {"metadata": {"labels": {"extra": "1"}}})
    core_v1.patch_namespaced_pod("p", "default", {"metadata": {"labels": {"role": "driver"}}})
    core_v1.create_namespaced_pod("default", pod_manifest("other"))
    assert watch.wait_for(3) == [("ADDED", "p"), ("MODIFIED", "p"), ("DELETED", "p")]
    time.sleep(0.2)  # an event for "other" would have arrived by now
    assert len(watch.types_and_names()) == 3


def test_field_selector_watch_on_node_name(kube, core_v1, watches):
    watch = watches(resource_version="0", field_selector="spec.nodeName=n1")
    core_v1.create_namespaced_pod("default", pod_manifest("p"))
    kube.store.mutate("pods", "default", "p", lambda p: p["spec"].__setitem__("nodeName", "n1"))
    assert watch.wait_for(1) == [("ADDED", "p")]
    assert watch.events[0]["object"]["spec"]["nodeName"] == "n1"


def test_watch_ends_at_timeout_seconds_with_a_final_bookmark(core_v1, watches):
    start = core_v1.list_namespaced_pod("default").metadata.resource_version
    began = time.monotonic()
    watch = watches(resource_version=start, timeout_seconds=1, allow_watch_bookmarks=True)
    assert watch.ended.wait(5)
    assert 0.9 <= time.monotonic() - began < 3
    assert watch.events and watch.events[-1]["type"] == "BOOKMARK"
    bookmark = watch.events[-1]["object"]
    assert bookmark["kind"] == "Pod" and set(bookmark["metadata"]) == {"resourceVersion"}
    assert int(bookmark["metadata"]["resourceVersion"]) >= int(start)


def test_bookmarks_are_sent_periodically_and_carry_the_latest_version(kube, core_v1, watches):
    kube.apiserver.bookmark_interval = 0.2
    start = core_v1.list_namespaced_pod("default").metadata.resource_version
    watch = watches(resource_version=start, allow_watch_bookmarks=True)
    kube.store.create("configmaps", "default", {"metadata": {"name": "unrelated"}})
    latest = kube.store.resource_version
    wait_until(lambda: any(e["type"] == "BOOKMARK" and e["object"]["metadata"]["resourceVersion"] == latest
                           for e in watch.events))
    assert watch.types_and_names() == []  # the configmap is not a pod event


def test_watch_without_bookmarks_gets_none(core_v1, watches):
    watch = watches(resource_version="0", timeout_seconds=1)
    assert watch.ended.wait(5)
    assert watch.events == []


def test_many_watchers_each_get_every_event(core_v1, watches):
    start = core_v1.list_namespaced_pod("default").metadata.resource_version
    streams = [watches(resource_version=start) for _ in range(5)]
    for i in range(20):
        core_v1.create_namespaced_pod("default", pod_manifest(f"p{i:02d}"))
    expected = [("ADDED", f"p{i:02d}") for i in range(20)]
    for stream in streams:
        assert stream.wait_for(20) == expected


def test_drop_watches_ends_every_open_stream(kube, core_v1, watches):
    streams = [watches(resource_version="0") for _ in range(3)]
    wait_until(lambda: len(kube.apiserver.watches) == 3)
    assert kube.faults.drop_watches() == 3
    for stream in streams:
        assert stream.ended.wait(5)
    assert kube.apiserver.watches == set()


@pytest.fixture
def short_timeout_watches(make_kube):
    """Watches on a server whose min_request_timeout is 1 s (watches without timeoutSeconds end in [1, 2) s)."""
    from kubernetes import client, config

    kube = make_kube(min_request_timeout=1)
    api_client = config.new_client_from_config(config_file=kube.kubeconfig)
    core_v1 = client.CoreV1Api(api_client)
    opened = []

    def open_(**params):
        collector = Collector(core_v1, **params)
        opened.append(collector)
        return collector

    yield kube, core_v1, open_
    for collector in opened:
        collector.close()
    api_client.close()


def test_watch_without_timeout_seconds_ends_cleanly_after_min_request_timeout(short_timeout_watches):
    kube, core_v1, watches = short_timeout_watches
    start = core_v1.list_namespaced_pod("default").metadata.resource_version
    began = time.monotonic()
    watch = watches(resource_version=start, timeout_seconds=None)
    core_v1.create_namespaced_pod("default", pod_manifest("p"))
    assert watch.ended.wait(5), "a watch without timeoutSeconds did not end within 2 * min_request_timeout"
    assert 0.9 <= time.monotonic() - began < 3
    assert watch.types_and_names() == [("ADDED", "p")]  # clean end: no ERROR event
    wait_until(lambda: not kube.apiserver.watches)


def test_timeout_seconds_of_the_client_wins_over_min_request_timeout(short_timeout_watches):
    _, core_v1, watches = short_timeout_watches
    began = time.monotonic()
    watch = watches(resource_version="0", timeout_seconds=3)
    assert not watch.ended.wait(2.2), "the server ended a watch before the client's timeoutSeconds"
    assert watch.ended.wait(5)
    assert 2.9 <= time.monotonic() - began < 5
    assert watch.events == []


def test_min_request_timeout_must_be_positive():
    from dask_k8s_backend.embedded.cluster import EmbeddedKubernetes

    with pytest.raises(ValueError, match="min_request_timeout"):
        EmbeddedKubernetes(kubelet=None, min_request_timeout=0)


def _enable_tornado_warnings(caplog):
    """distributed's logging config sets "tornado" to CRITICAL once imported: a warning would then be dropped
    before any filter saw it, whichever test imported distributed first. These tests need tornado's own level."""
    caplog.set_level(logging.WARNING, logger="tornado.general")
    caplog.set_level(logging.DEBUG, logger="dask_k8s_backend.embedded.api.apiserver")  # last: sets the handler's level


def _tls_records(caplog):
    """(our DEBUG notes about client TLS errors, tornado warnings) captured so far."""
    ours = [r for r in caplog.records if r.name == "dask_k8s_backend.embedded.api.apiserver" and "TLS error" in r.getMessage()]
    tornado_warnings = [r for r in caplog.records if r.name.startswith("tornado") and r.levelno >= logging.WARNING]
    return ours, tornado_warnings


def test_a_client_stopping_its_watch_is_a_debug_note_not_a_tornado_warning(kube, watches, caplog):
    # response.shutdown() (SHUT_RD) makes the client's OpenSSL send a decode_error alert: the client went away
    _enable_tornado_warnings(caplog)
    watch = watches(resource_version="0")
    wait_until(lambda: len(kube.apiserver.watches) == 1)
    watch.close()
    wait_until(lambda: _tls_records(caplog)[0])
    assert "TLSV1_ALERT_DECODE_ERROR" in _tls_records(caplog)[0][0].getMessage()
    assert _tls_records(caplog)[1] == []


def test_a_client_dropped_mid_handshake_is_a_debug_note(kube, caplog):
    _enable_tornado_warnings(caplog)
    with socket.create_connection(("127.0.0.1", kube.apiserver.port), timeout=5) as sock:
        sock.sendall(b"\x16\x03\x01\x00\x05hello")  # a TLS record header with a body that is no ClientHello
        sock.recv(1024)  # the server's alert or its close: the handshake failed on the server's side
    wait_until(lambda: _tls_records(caplog)[0])
    assert _tls_records(caplog)[1] == []


def test_tornado_warnings_outside_the_server_threads_are_untouched(kube, caplog):
    _enable_tornado_warnings(caplog)
    logging.getLogger("tornado.general").warning("error on read: [SSL: SOMETHING] from another server")
    assert [r.getMessage() for r in _tls_records(caplog)[1]] == ["error on read: [SSL: SOMETHING] from another server"]
