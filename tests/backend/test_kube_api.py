"""KubePodApi: the PodApi protocol on the official client.

Stream mechanics (lines split across chunks, cancelling a blocked watch, close with open
watches) are proven against a tiny local HTTP server that holds a watch open; everything else
runs end-to-end against the embedded Kubernetes.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import kubernetes
import pytest

from dask_k8s_backend.kube import pod_api as kube_api
from dask_k8s_backend.kube.pod_api import KubePodApi, PodApi
from dask_k8s_backend.kube.errors import AlreadyExists, ApiUnreachable

pytestmark = pytest.mark.timeout(60)


def watch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "k8s-watch" and t.is_alive()]


def wait_until(condition, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


# ----------------------------------------------------------------------------- local stream server
class _StreamHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    chunks: list[bytes] = []
    hold = threading.Event()

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if "watch=true" not in self.path:
            body = json.dumps({"kind": "PodList", "metadata": {"resourceVersion": "5"}, "items": []}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for chunk in self.chunks:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.flush()
        if not self.hold.wait(30):  # keep the watch open, as a quiet API server does
            return
        self.wfile.write(b"0\r\n\r\n")


@pytest.fixture
def stream_server() -> Iterator[tuple[str, type[_StreamHandler]]]:
    handler = type("Handler", (_StreamHandler,), {"chunks": [], "hold": threading.Event()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", handler
    finally:
        handler.hold.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


def local_api(url: str) -> KubePodApi:
    configuration = kubernetes.client.Configuration()
    configuration.host = url
    return KubePodApi(kubernetes.client.ApiClient(configuration), "default", request_timeout=10)


def event(name: str, type_: str = "ADDED") -> bytes:
    return json.dumps({"type": type_, "object": {"metadata": {"name": name}}}).encode() + b"\n"


def test_kube_pod_api_implements_the_pod_api_protocol(stream_server):
    api = local_api(stream_server[0])
    try:
        assert isinstance(api, PodApi)
    finally:
        asyncio.run(api.close())


def test_watch_reassembles_events_split_across_chunks(stream_server):
    url, handler = stream_server
    whole = event("a") + event("b")
    handler.chunks = [whole[:7], whole[7:40], whole[40:], event("c", "BOOKMARK")]
    handler.hold.set()  # end the stream after the chunks

    async def run() -> list[tuple[str, str]]:
        api = local_api(url)
        try:
            return [(e["type"], e["object"]["metadata"]["name"]) async for e in api.watch_pods("x=y", "5", 30)]
        finally:
            await api.close()

    assert asyncio.run(run()) == [("ADDED", "a"), ("ADDED", "b"), ("BOOKMARK", "c")]
    assert wait_until(lambda: not watch_threads())


def test_watch_hands_the_events_of_one_chunk_to_the_loop_at_once(stream_server, monkeypatch):
    """One loop wake-up per chunk: a 5000-pod ramp brings some 20,000 watch events."""
    url, handler = stream_server
    handler.chunks = [event("a") + event("b") + event("c")[:5], event("c")[5:] + event("d", "MODIFIED")]
    handler.hold.set()
    delivered: list[object] = []

    async def run() -> list[str]:
        loop = asyncio.get_running_loop()
        original = loop.call_soon_threadsafe

        def counting(callback, *args):
            delivered.extend(arg for arg in args if isinstance(arg, list))
            return original(callback, *args)

        monkeypatch.setattr(loop, "call_soon_threadsafe", counting)
        api = local_api(url)
        try:
            return [e["object"]["metadata"]["name"] async for e in api.watch_pods("x=y", "5", 30)]
        finally:
            await api.close()

    assert asyncio.run(run()) == ["a", "b", "c", "d"]
    assert [[e["object"]["metadata"]["name"] for e in batch] for batch in delivered] == [["a", "b"], ["c", "d"]]


def test_cancelling_a_blocked_watch_stops_its_thread_at_once(stream_server):
    url, handler = stream_server
    handler.chunks = [event("a")]

    async def run() -> float:
        api = local_api(url)
        first = asyncio.Event()

        async def consume() -> None:
            async for _ in api.watch_pods("x=y", "5", 30):
                first.set()

        task = asyncio.create_task(consume())
        await asyncio.wait_for(first.wait(), 10)
        start = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        elapsed = time.monotonic() - start
        await api.close()
        return elapsed

    assert asyncio.run(run()) < 2.0
    assert wait_until(lambda: not watch_threads(), 2.0)


def test_close_stops_open_watches(stream_server):
    url, handler = stream_server
    handler.chunks = [event("a")]

    async def run() -> None:
        api = local_api(url)
        stream = api.watch_pods("x=y", "5", 30)
        assert (await stream.__anext__())["type"] == "ADDED"
        await asyncio.wait_for(api.close(), 5)
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(stream.__anext__(), 5)
        with pytest.raises(RuntimeError, match="closed"):
            await api.list_pods("x=y")

    asyncio.run(run())
    assert wait_until(lambda: not watch_threads(), 2.0)


def test_close_is_idempotent(stream_server):
    async def run() -> None:
        api = local_api(stream_server[0])
        await api.close()
        await api.close()

    asyncio.run(run())


def test_unreachable_api_server_raises_from_the_watch_and_leaves_no_thread():
    configuration = kubernetes.client.Configuration()
    configuration.host = "http://127.0.0.1:1"  # nothing listens on port 1
    configuration.retries = 0

    async def run() -> None:
        api = KubePodApi(kubernetes.client.ApiClient(configuration), "default", request_timeout=5)
        try:
            with pytest.raises(ApiUnreachable, match="watch pods \\(x=y\\) in namespace default"):
                async for _ in api.watch_pods("x=y", "1", 5):
                    pass
            with pytest.raises(ApiUnreachable, match="create pod p in namespace default"):
                await api.create_pod({"metadata": {"name": "p"}})
        finally:
            await api.close()

    asyncio.run(run())
    assert wait_until(lambda: not watch_threads(), 2.0)


class _ExpiringListHandler(BaseHTTPRequestHandler):
    """First page has a continue token; continuing answers 410 Expired; an unpaged list answers everything."""

    protocol_version = "HTTP/1.1"
    paths: list[str] = []

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.paths.append(self.path)
        if "continue=" in self.path:
            status, body = 410, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Expired",
                                 "message": "The provided continue parameter is too old", "code": 410}
        elif "limit=" in self.path:
            status, body = 200, {"kind": "PodList", "metadata": {"resourceVersion": "7", "continue": "tok"},
                                 "items": [{"metadata": {"name": "a"}}]}
        else:
            status, body = 200, {"kind": "PodList", "metadata": {"resourceVersion": "9"},
                                 "items": [{"metadata": {"name": "a"}}, {"metadata": {"name": "b"}}]}
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def test_expired_continue_token_restarts_the_list_without_paging():
    handler = type("Handler", (_ExpiringListHandler,), {"paths": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()

    async def run() -> tuple[list[dict], str]:
        api = local_api(f"http://127.0.0.1:{server.server_port}")
        try:
            return await api.list_pods("x=y")
        finally:
            await api.close()

    try:
        pods, rv = asyncio.run(run())
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert [p["metadata"]["name"] for p in pods] == ["a", "b"] and rv == "9"
    assert len(handler.paths) == 3


# ----------------------------------------------------------------------------- embedded Kubernetes
@pytest.fixture(scope="module")
def kube():
    cluster = pytest.importorskip("dask_k8s_backend.embedded.cluster")
    with cluster.EmbeddedKubernetes(kubelet="process", nodes=1, cpu="4", memory="8Gi") as k:
        yield k


def embedded_api(kube, namespace: str = "default") -> KubePodApi:
    api_client = kubernetes.config.new_client_from_config(config_file=str(kube.kubeconfig))
    return KubePodApi(api_client, namespace, request_timeout=30)


def pod_manifest(name: str, labels: dict[str, str], command: list[str] | None = None) -> dict:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"restartPolicy": "Never", "containers": [{
            "name": "main", "image": "python",
            "command": command or ["python", "-c", "import time; time.sleep(60)"],
            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]},
    }


def run_with_api(kube, body, namespace: str = "default"):
    async def run():
        api = embedded_api(kube, namespace)
        try:
            return await asyncio.wait_for(body(api), 45)
        finally:
            await api.delete_pods("test=kube-api")
            # Deletion is graceful (the kubelet confirms it), so wait until the pods are gone: the next test
            # of this module shares the server and lists the same label.
            gone = await wait_for_names(api, "test=kube-api", set(), timeout=30)
            await api.close()
            assert gone, "the test's pods were still there 30 s after their deletion"

    return asyncio.run(run())


def test_create_list_and_delete_by_selector_only_touch_matching_pods(kube):
    async def body(api: KubePodApi):
        await api.create_pod(pod_manifest("kapi-a", {"test": "kube-api", "set": "one"}))
        await api.create_pod(pod_manifest("kapi-b", {"test": "kube-api", "set": "two"}))
        pods, rv = await api.list_pods("test=kube-api,set=one")
        assert [p["metadata"]["name"] for p in pods] == ["kapi-a"] and int(rv) > 0
        await api.delete_pods("test=kube-api,set=one")
        assert await wait_for_names(api, "test=kube-api", {"kapi-b"})

    run_with_api(kube, body)


async def wait_for_names(api: KubePodApi, selector: str, names: set[str], timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pods, _ = await api.list_pods(selector)
        if {p["metadata"]["name"] for p in pods} == names:
            return True
        await asyncio.sleep(0.1)
    return False


def test_list_pages_through_every_pod(kube, monkeypatch):
    monkeypatch.setattr(kube_api, "LIST_PAGE_SIZE", 2)

    async def body(api: KubePodApi):
        for i in range(5):
            await api.create_pod(pod_manifest(f"kapi-page-{i}", {"test": "kube-api"}))
        pods, _ = await api.list_pods("test=kube-api")
        assert sorted(p["metadata"]["name"] for p in pods) == [f"kapi-page-{i}" for i in range(5)]

    run_with_api(kube, body)


def test_watch_from_the_list_version_sees_added_modified_and_deleted(kube):
    async def body(api: KubePodApi):
        _, rv = await api.list_pods("test=kube-api")
        seen: list[tuple[str, str | None]] = []
        done = asyncio.Event()

        async def watch() -> None:
            async for e in api.watch_pods("test=kube-api", rv, 30):
                if e["type"] in ("ADDED", "MODIFIED", "DELETED") and e["object"]["metadata"]["name"] == "kapi-w":
                    seen.append((e["type"], e["object"]["metadata"].get("labels", {}).get("mark")))
                    if e["type"] == "DELETED":
                        done.set()
                        return

        task = asyncio.create_task(watch())
        await api.create_pod(pod_manifest("kapi-w", {"test": "kube-api"}, ["python", "-c", "print(1)"]))
        patched = await api.patch_pod_labels("kapi-w", {"mark": "x"})
        assert patched["metadata"]["labels"]["mark"] == "x"
        await api.delete_pod("kapi-w", grace_period_seconds=0)
        await asyncio.wait_for(done.wait(), 30)
        await task
        assert seen[0] == ("ADDED", None) and ("MODIFIED", "x") in seen and seen[-1][0] == "DELETED"

    run_with_api(kube, body)
    assert wait_until(lambda: not watch_threads(), 2.0)


def test_patch_with_none_removes_a_label(kube):
    async def body(api: KubePodApi):
        await api.create_pod(pod_manifest("kapi-l", {"test": "kube-api", "gone": "soon"}))
        pod = await api.patch_pod_labels("kapi-l", {"gone": None, "new": "yes"})
        assert "gone" not in pod["metadata"]["labels"] and pod["metadata"]["labels"]["new"] == "yes"

    run_with_api(kube, body)


def test_deleting_a_missing_pod_is_not_an_error(kube):
    async def body(api: KubePodApi):
        await api.delete_pod("kapi-never-existed")

    run_with_api(kube, body)


def test_read_pod_log_returns_the_containers_output(kube):
    async def body(api: KubePodApi):
        await api.create_pod(pod_manifest("kapi-log", {"test": "kube-api"}, ["python", "-c", "print('hello from the pod')"]))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with_log = await _log_or_empty(api, "kapi-log")
            if "hello from the pod" in with_log:
                return
            await asyncio.sleep(0.1)
        raise AssertionError("the pod's output never appeared in its log")

    run_with_api(kube, body)


async def _log_or_empty(api: KubePodApi, name: str) -> str:
    try:
        return await api.read_pod_log(name, tail_lines=10)
    except Exception:  # the container has not started yet (400 from the API server)
        return ""


def test_creating_a_duplicate_pod_raises_already_exists(kube):
    async def body(api: KubePodApi):
        await api.create_pod(pod_manifest("kapi-dup", {"test": "kube-api"}))
        with pytest.raises(AlreadyExists) as info:
            await api.create_pod(pod_manifest("kapi-dup", {"test": "kube-api"}))
        assert info.value.code == 409

    run_with_api(kube, body)


def test_watch_from_an_expired_version_yields_the_410_error_event(kube):
    store = kube.store
    store.create("configmaps", "default", {"metadata": {"name": "kapi-churn"}, "data": {}})
    start = store.resource_version
    for i in range(10_050):  # push resourceVersion `start` out of the default history window
        store.mutate("configmaps", "default", "kapi-churn", lambda cm, i=i: cm.__setitem__("data", {"i": str(i)}))
    store.delete("configmaps", "default", "kapi-churn")

    async def body(api: KubePodApi):
        events = [e async for e in api.watch_pods("test=kube-api", start, 5)]
        assert events and events[0]["type"] == "ERROR" and events[0]["object"]["code"] == 410

    run_with_api(kube, body)
