"""Rules of the node agent's HTTP transport, proved with in-memory fakes (no server, no sleeps).

The fakes stand for the API server: ``FakeHttp`` answers requests from a script and records them,
and serves watch streams as canned lists of lines (an expired watch, bookmarks, a dropped stream).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from dask_k8s_backend.kube.errors import (ApiUnreachable, Conflict, Gone, KubernetesApiError, NotFound, ServerError,
                                     TooManyRequests)
from dask_k8s_backend.embedded.node.agent import mounts
from dask_k8s_backend.embedded.node.agent.api_transport import ApiTransport, merge_patch
from dask_k8s_backend.embedded.node.agent.http import ApiHttp
from dask_k8s_backend.embedded.node.agent.lease import NodeLease
from dask_k8s_backend.embedded.node.agent.options import (OptionError, blocks_in_use, derived_ip_block, parse_node_options,
                                           parse_taints)
from dask_k8s_backend.embedded.node.agent.reflector import PodCache, PodReflector
from dask_k8s_backend.embedded.node.agent.status_retry import StatusRetrier, keep_terminal_phase
from dask_k8s_backend.embedded.node.agent.tokens import TokenProjector, refresh_time, token_projection, token_request


def pod(name: str, uid: str = "u1", rv: str = "1", **status: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "uid": uid, "resourceVersion": rv},
            "spec": {"nodeName": "n1", "containers": [{"name": "main"}]}, "status": dict(status)}


class FakeStream:
    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        self.closed = False

    def __iter__(self):
        return iter(self.lines)

    def close(self) -> None:
        self.closed = True


class FakeHttp:
    """Scripted answers: ``answers[(method, path)]`` is a value, an exception, or a callable of the body."""

    host_port = ("127.0.0.1", 6443)
    ca_file = None
    server = "https://127.0.0.1:6443"

    def __init__(self, answers: dict | None = None, streams: list | None = None) -> None:
        self.answers = dict(answers or {})
        self.streams = list(streams or [])
        self.calls: list[tuple[str, str, Any, dict]] = []

    def request(self, method: str, path: str, *, query=None, body=None, content_type="application/json",
                action=None, timeout=None, idempotent=False) -> dict:
        self.calls.append((method, path, body, {"query": query, "content_type": content_type,
                                                "idempotent": idempotent}))
        answer = self.answers.get((method, path), {})
        if isinstance(answer, list):  # one answer per call
            answer = answer.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer(body) if callable(answer) else answer

    def stream(self, path: str, *, query=None, read_timeout=None):
        self.calls.append(("WATCH", path, None, {"query": query}))
        item = self.streams.pop(0)
        if isinstance(item, BaseException):
            raise item
        return FakeStream([json.dumps(e) for e in item])

    def close(self) -> None:
        pass


def collect() -> tuple[list, Any]:
    seen: list[tuple[str, str, str]] = []

    def sink(kind: str, item: Any) -> None:
        meta = item.obj["metadata"]
        seen.append((kind, meta["name"], meta["uid"]))

    return seen, sink


# ---------------------------------------------------------------- merge patches
def test_a_status_merge_patch_holds_only_changes_and_nulls_removed_keys():
    old = {"phase": "Running", "reason": "X", "podIP": "127.1.1.1", "conditions": [{"type": "Ready"}]}
    new = {"phase": "Failed", "podIP": "127.1.1.1", "conditions": [{"type": "Ready"}, {"type": "Initialized"}]}
    assert merge_patch(old, new) == {"phase": "Failed", "reason": None,
                                     "conditions": [{"type": "Ready"}, {"type": "Initialized"}]}


def test_nested_maps_are_patched_key_by_key():
    assert merge_patch({"a": {"b": 1, "c": 2}}, {"a": {"b": 1, "c": 3}}) == {"a": {"c": 3}}
    assert merge_patch({"a": {"b": 1}}, {"a": {"b": 1}}) == {}


# ---------------------------------------------------------------- reflector
def test_the_watch_resumes_from_the_list_resource_version_and_bookmarks_move_it():
    http = FakeHttp({("GET", "/api/v1/pods"): {"metadata": {"resourceVersion": "10"}, "items": [pod("a")]}},
                    streams=[[{"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "15"}}},
                              {"type": "MODIFIED", "object": pod("a", rv="16", phase="Running")}]])
    seen, sink = collect()
    reflector = PodReflector(http, "n1", sink)
    backlog = reflector.list_pods()
    assert [(k, i.obj["metadata"]["name"]) for k, i in backlog] == [("ADDED", "a")]
    assert http.calls[0][3]["query"] == {"fieldSelector": "spec.nodeName=n1"}
    reflector.watch_once()
    watch_query = http.calls[1][3]["query"]
    assert watch_query["resourceVersion"] == "10" and watch_query["fieldSelector"] == "spec.nodeName=n1"
    assert watch_query["allowWatchBookmarks"] is True
    assert seen == [("MODIFIED", "a", "u1")]
    assert reflector.resource_version == "16"
    assert reflector.cache.get(("default", "a"))["status"]["phase"] == "Running"


def test_an_expired_watch_error_event_raises_gone():
    http = FakeHttp(streams=[[{"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired",
                                                           "message": "too old resource version"}}]])
    reflector = PodReflector(http, "n1", lambda *a: None)
    with pytest.raises(Gone):
        reflector.watch_once()


def test_a_relist_reports_vanished_pods_deleted_and_the_others_modified():
    http = FakeHttp({("GET", "/api/v1/pods"): [
        {"metadata": {"resourceVersion": "10"}, "items": [pod("a"), pod("b", uid="u2")]},
        {"metadata": {"resourceVersion": "30"}, "items": [pod("a", rv="20"), pod("b", uid="u3", rv="25")]},
    ]})
    seen, sink = collect()
    reflector = PodReflector(http, "n1", sink)
    reflector.list_pods()
    reflector.relist()
    assert ("DELETED", "b", "u2") in seen  # replaced by a new pod of the same name: the old one is gone
    assert ("MODIFIED", "a", "u1") in seen and ("MODIFIED", "b", "u3") in seen
    assert seen.index(("DELETED", "b", "u2")) < seen.index(("MODIFIED", "b", "u3"))
    assert reflector.resource_version == "30"


def test_the_watch_loop_relists_after_410_and_gives_up_after_bounded_failures():
    failures = [KubernetesApiError("boom", code=500)] * 3
    http = FakeHttp({("GET", "/api/v1/pods"): [{"metadata": {"resourceVersion": "1"}, "items": []},
                                                {"metadata": {"resourceVersion": "5"}, "items": [pod("a")]}]},
                    streams=[Gone("expired", code=410)] + failures)
    seen, sink = collect()
    fatal = threading.Event()
    reflector = PodReflector(http, "n1", sink, on_fatal=lambda e: fatal.set(), max_failures=3, backoff_start=0.001,
                             backoff_max=0.002)
    reflector.list_pods()
    reflector.start()
    assert fatal.wait(10), "the reflector never gave up"
    reflector.stop()
    assert seen == [("MODIFIED", "a", "u1")]
    assert [c[0] for c in http.calls].count("GET") == 2


def test_the_cache_keeps_the_newest_version_of_a_pod():
    cache = PodCache()
    cache.put(pod("a", rv="5", phase="Running"))
    cache.put(pod("a", rv="3", phase="Pending"))
    assert cache.get(("default", "a"))["status"]["phase"] == "Running"
    cache.put(pod("a", uid="u9", rv="1"))  # a new pod of that name replaces the old whatever its version
    assert cache.get(("default", "a"))["metadata"]["uid"] == "u9"


# ---------------------------------------------------------------- transport writes
def transport_with(http: FakeHttp, *pods: dict) -> ApiTransport:
    transport = ApiTransport(http)
    for p in pods:
        transport.cache.put(p)
    return transport


def test_status_is_merge_patched_with_the_uid_and_only_when_it_changed():
    path = "/api/v1/namespaces/default/pods/a/status"
    http = FakeHttp({("PATCH", path): lambda body: pod("a", rv="2", **body["status"])})
    transport = transport_with(http, pod("a", phase="Pending"))
    new = transport.write_status(("default", "a"), "u1", lambda p: {**p["status"], "phase": "Running"})
    assert new["status"]["phase"] == "Running"
    method, called, body, extra = http.calls[-1]
    assert (method, called, extra["content_type"]) == ("PATCH", path, "application/merge-patch+json")
    assert extra["idempotent"], "a status patch may be repeated: it should be retried"
    assert body == {"metadata": {"uid": "u1"}, "status": {"phase": "Running"}}
    transport.write_status(("default", "a"), "u1", lambda p: dict(p["status"]))
    assert len(http.calls) == 1, "an unchanged status was sent"


def test_status_of_a_replaced_or_vanished_pod_is_not_written():
    http = FakeHttp({("PATCH", "/api/v1/namespaces/default/pods/a/status"): NotFound("gone")})
    transport = transport_with(http, pod("a"))
    assert transport.write_status(("default", "a"), "other-uid", lambda p: {"phase": "Running"}) is None
    assert http.calls == []
    assert transport.write_status(("default", "a"), "u1", lambda p: {"phase": "Running"}) is None


def test_graceful_deletion_finishes_with_grace_zero_and_a_uid_precondition():
    http = FakeHttp({("DELETE", "/api/v1/namespaces/default/pods/a"): Conflict("uid precondition failed")})
    transport = transport_with(http)
    transport.finish_deletion(("default", "a"), "u1")  # a conflict (new pod of that name) is not an error
    method, path, body, _ = http.calls[-1]
    assert method == "DELETE" and path.endswith("/pods/a")
    assert body["gracePeriodSeconds"] == 0 and body["preconditions"] == {"uid": "u1"}
    assert "finalizers" not in json.dumps(body)


def test_a_missing_secret_is_none_and_other_errors_propagate():
    http = FakeHttp({("GET", "/api/v1/namespaces/default/secrets/s"): NotFound("no"),
                     ("GET", "/api/v1/namespaces/default/configmaps/c"): KubernetesApiError("forbidden", code=403)})
    transport = transport_with(http)
    assert transport.lookup("secrets", "default", "s") is None
    with pytest.raises(KubernetesApiError):
        transport.lookup("configmaps", "default", "c")


def test_node_registration_posts_the_node_then_merge_patches_its_status_and_starts_the_lease():
    node = {"metadata": {"name": "n1", "labels": {"a": "b"}}, "spec": {},
            "status": {"conditions": [{"type": "Ready", "status": "True"}],
                       "daemonEndpoints": {"kubeletEndpoint": {"Port": 12345}}}}
    http = FakeHttp({("POST", "/api/v1/nodes"): {"metadata": {"name": "n1", "uid": "node-uid"}}})
    transport = ApiTransport(http, lease_duration=40)
    transport.register_node(node)
    transport.lease.stop()
    calls = [(c[0], c[1]) for c in http.calls]
    assert calls[:3] == [("POST", "/api/v1/nodes"), ("PATCH", "/api/v1/nodes/n1/status"),
                         ("POST", "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases")]
    assert http.calls[1][2] == {"status": node["status"]}
    lease = http.calls[2][2]
    assert lease["spec"]["leaseDurationSeconds"] == 40 and lease["spec"]["holderIdentity"] == "n1"
    assert lease["metadata"]["ownerReferences"][0] == {"apiVersion": "v1", "kind": "Node", "name": "n1",
                                                       "uid": "node-uid"}


def test_an_existing_node_is_taken_over_by_patching_labels_and_taints():
    http = FakeHttp({("POST", "/api/v1/nodes"): Conflict("exists"),
                     ("PATCH", "/api/v1/nodes/n1"): {"metadata": {"name": "n1", "uid": "old"}}})
    transport = ApiTransport(http)
    transport.register_node({"metadata": {"name": "n1", "labels": {"x": "y"}}, "spec": {}, "status": {}})
    transport.lease.stop()
    assert http.calls[1][2] == {"metadata": {"labels": {"x": "y"}}, "spec": {"taints": None}}


def test_the_lease_is_renewed_every_quarter_of_its_duration_with_a_merge_patch():
    http = FakeHttp()
    lease = NodeLease(http, duration=40)
    assert lease.interval == 10.0
    lease.name = "n1"
    lease.renew()
    method, path, body, extra = http.calls[-1]
    assert (method, path) == ("PATCH", "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/n1")
    assert set(body["spec"]) == {"renewTime"} and extra["content_type"] == "application/merge-patch+json"


def test_a_server_without_leases_gets_no_heartbeat_and_no_error():
    http = FakeHttp({("POST", "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"):
                     KubernetesApiError("no such method", code=405)})
    assert NodeLease(http).start({"metadata": {"name": "n1", "uid": "u"}}) is False


# ---------------------------------------------------------------- options
@pytest.fixture
def kubeconfig(tmp_path: Path) -> str:
    path = tmp_path / "kubeconfig"
    path.write_text("clusters: [{name: a, cluster: {server: 'https://127.0.0.1:6443'}}]\n")
    return str(path)


@pytest.mark.parametrize("option, value, named", [
    ("name", "Bad_Name", "--name"), ("cpu", "lots", "--cpu"), ("memory", "8GB!", "--memory"),
    ("labels", "novalue", "--labels"), ("labels", "a=b c", "--labels"), ("taints", "k=v:Sometimes", "--taints"),
    ("resources", "nvidia.com/gpu=two", "--resources"), ("port", 70000, "--port"), ("ip_block", 300, "--ip-block"),
    ("kubelet", "docker", "--kubelet"), ("pods", 0, "--pods"),
])
def test_bad_input_names_the_option_the_value_and_the_fix(kubeconfig, option, value, named):
    with pytest.raises(OptionError) as info:
        parse_node_options(**{"kubeconfig": kubeconfig, "name": "n1", option: value})
    message = str(info.value)
    assert message.startswith(named + ":") and str(value) in message and ("use" in message or "write" in message
                                                                          or "give" in message)


def test_a_missing_kubeconfig_is_refused_before_anything_starts(tmp_path):
    with pytest.raises(OptionError, match="--kubeconfig"):
        parse_node_options(kubeconfig=str(tmp_path / "nope"), name="n1")


def test_taints_and_labels_parse_and_ip_blocks_derive_from_the_name(kubeconfig):
    assert parse_taints("a=b:NoSchedule,c:NoExecute") == [{"key": "a", "value": "b", "effect": "NoSchedule"},
                                                          {"key": "c", "effect": "NoExecute"}]
    options = parse_node_options(kubeconfig=kubeconfig, name="n1", labels="zone=a,disk=ssd")
    assert options.labels == {"zone": "a", "disk": "ssd"}
    assert options.ip_block is None  # chosen at start
    assert parse_node_options(kubeconfig=kubeconfig, name="n1", ip_block=7).ip_block == 7


def test_a_derived_ip_block_is_stable_and_skips_blocks_other_nodes_use():
    block = derived_ip_block("n1")
    assert 100 <= block <= 254 and derived_ip_block("n1") == block
    nodes = [{"metadata": {"name": "other"}, "spec": {"podCIDR": f"127.{block}.0.0/16"}},
             {"metadata": {"name": "n1"}, "spec": {"podCIDR": "127.150.0.0/16"}},  # itself, from an earlier run
             {"metadata": {"name": "real"}, "spec": {"podCIDR": "10.244.0.0/24"}}]
    used = blocks_in_use(nodes, "n1")
    assert used == {block}
    assert derived_ip_block("n1", used) == (block + 1 if block < 254 else 100)
    with pytest.raises(OptionError, match="--ip-block"):
        derived_ip_block("n1", range(100, 255))


# ---------------------------------------------------------------- tokens
def api_access_pod(expiration: int | None = 3607, audience: str | None = None, automount: bool | None = None) -> dict:
    source: dict[str, Any] = {"path": "token"}
    if expiration is not None:
        source["expirationSeconds"] = expiration
    if audience:
        source["audience"] = audience
    spec: dict[str, Any] = {"serviceAccountName": "worker", "containers": [{"name": "main"}],
                            "volumes": [{"name": "kube-api-access-x7k2p", "projected": {"sources": [
                                {"serviceAccountToken": source},
                                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                            ]}}]}
    if automount is not None:
        spec["automountServiceAccountToken"] = automount
    return {"metadata": {"name": "p", "namespace": "ns1", "uid": "pod-uid"}, "spec": spec}


def test_the_token_projection_comes_from_the_kube_api_access_volume():
    projection = token_projection(api_access_pod(expiration=100, audience="vault"))
    assert projection.service_account == "worker" and projection.audiences == ("vault",)
    assert projection.expiration == 600  # TokenRequest's minimum
    assert token_projection(api_access_pod(automount=False)) is None
    assert token_projection({"spec": {"containers": []}}) is None
    assert token_projection({"spec": {"serviceAccountName": "sa"}}).service_account == "sa"


def test_the_token_request_is_bound_to_the_pod():
    body = token_request(api_access_pod(), token_projection(api_access_pod()))
    assert body["spec"]["boundObjectRef"] == {"kind": "Pod", "apiVersion": "v1", "name": "p", "uid": "pod-uid"}
    assert body["spec"]["expirationSeconds"] == 3607


def test_tokens_are_refreshed_after_80_percent_of_their_lifetime():
    assert refresh_time(1000.0, 2000.0) == 1800.0


def test_the_projector_writes_token_ca_and_namespace_and_sets_the_service_address(tmp_path):
    http = FakeHttp({("POST", "/api/v1/namespaces/ns1/serviceaccounts/worker/token"):
                     {"status": {"token": "secret-token", "expirationTimestamp": "2099-01-01T00:00:00Z"}}})
    lookup = lambda r, ns, n: {"data": {"ca.crt": "CA PEM"}} if (r, n) == ("configmaps", "kube-root-ca.crt") else None
    projector = TokenProjector(http, lookup, mount=False)
    try:
        setup = projector.prepare(api_access_pod(), tmp_path)
    finally:
        projector.stop()
    directory = tmp_path / "serviceaccount"
    assert (directory / "token").read_text() == "secret-token"
    assert (directory / "ca.crt").read_text() == "CA PEM" and (directory / "namespace").read_text() == "ns1"
    assert setup.env == {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": "6443",
                         "KUBERNETES_SERVICE_PORT_HTTPS": "6443"}
    assert setup.preexec is None
    assert "secret-token" not in repr(projector)


def test_a_token_is_renewed_once_80_percent_of_its_lifetime_has_passed(tmp_path):
    now = [1000.0]
    issued = []

    def issue(body):
        issued.append(body)
        return {"status": {"token": f"token-{len(issued)}", "expirationTimestamp": "1970-01-01T00:16:50Z"}}  # 1010

    http = FakeHttp({("POST", "/api/v1/namespaces/ns1/serviceaccounts/worker/token"): issue})
    projector = TokenProjector(http, lambda *a: None, clock=lambda: now[0], mount=False)
    renewed = threading.Event()
    try:
        projector.prepare(api_access_pod(), tmp_path)
        token = tmp_path / "serviceaccount" / "token"
        assert token.read_text() == "token-1"
        assert projector.next_refresh == 1008.0  # 80% of the 10 s lifetime
        now[0] = 1008.0
        projector.poke()
        for _ in range(200):  # bounded: the refresher thread writes the file
            if token.read_text() == "token-2":
                renewed.set()
                break
            threading.Event().wait(0.02)
    finally:
        projector.stop()
    assert renewed.is_set() and len(issued) == 2
    assert oct(token.stat().st_mode & 0o777) == "0o600"


def test_a_server_without_token_requests_projects_nothing(tmp_path):
    http = FakeHttp({("POST", "/api/v1/namespaces/ns1/serviceaccounts/worker/token"): NotFound("no"),
                     ("GET", "/api/v1/namespaces/ns1/serviceaccounts/worker"): {"metadata": {"name": "worker"}}})
    projector = TokenProjector(http, lambda *a: None, mount=False)
    setup = projector.prepare(api_access_pod(), tmp_path)
    assert setup.preexec is None and "KUBERNETES_SERVICE_HOST" in setup.env
    assert not (tmp_path / "serviceaccount" / "token").exists()
    assert projector.served is False


@pytest.mark.skipif(not mounts.mount_namespaces_supported(), reason="needs root and mount namespaces")
def test_a_container_sees_its_own_directory_at_the_service_account_path(tmp_path):
    source = tmp_path / "sa"
    source.mkdir()
    (source / "token").write_text("pod-token")
    target = tmp_path / "target"
    target.mkdir()
    preexec = mounts.bind_preexec(source, target)
    seen = subprocess.run([sys.executable, "-c", f"print(open({str(target / 'token')!r}).read())"],
                          preexec_fn=preexec, capture_output=True, text=True, timeout=30)
    assert seen.stdout.strip() == "pod-token"
    assert not (target / "token").exists(), "the bind mount leaked into the host's mount namespace"


# ---------------------------------------------------------------- retries
class FlakyHttp(ApiHttp):
    """ApiHttp whose wire answers from a script: exceptions first, then ``{"ok": True}``."""

    def __init__(self, failures: list[BaseException]) -> None:  # no kubeconfig: nothing is sent
        self.failures = list(failures)
        self.sent = 0
        self.slept: list[float] = []
        self.sleep = self.slept.append

    def _request_once(self, *args: Any) -> dict:
        self.sent += 1
        if self.failures:
            raise self.failures.pop(0)
        return {"ok": True}


def test_gets_and_idempotent_writes_are_retried_with_backoff_on_5xx_429_and_lost_connections():
    http = FlakyHttp([ServerError("boom", code=503), TooManyRequests("slow down", code=429, retry_after=1.5)])
    assert http.request("PATCH", "/x/status", body={}, idempotent=True) == {"ok": True}
    assert http.sent == 3 and http.slept == [0.2, 1.5]
    http = FlakyHttp([ApiUnreachable("refused")])
    assert http.request("GET", "/x") == {"ok": True}


def test_other_writes_and_client_errors_are_not_retried():
    http = FlakyHttp([ServerError("boom", code=500)])
    with pytest.raises(ServerError):
        http.request("POST", "/x/events", body={})
    assert http.sent == 1
    http = FlakyHttp([Conflict("uid precondition")])
    with pytest.raises(Conflict):
        http.request("DELETE", "/x", body={}, idempotent=True)
    assert http.sent == 1


def test_retries_are_bounded():
    http = FlakyHttp([ServerError("boom", code=500)] * 5)
    with pytest.raises(ServerError):
        http.request("GET", "/x")
    assert http.sent == 3


# ---------------------------------------------------------------- status writes the API server did not take
class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


STATUS_PATH = "/api/v1/namespaces/default/pods/a/status"


def retrying_transport(answers: list, *pods: dict) -> tuple[ApiTransport, FakeHttp, FakeClock]:
    """A transport whose status retries run when the test says (``run_due``) on a fake clock."""
    http = FakeHttp({("PATCH", STATUS_PATH): answers})
    transport = transport_with(http, *pods)
    clock = FakeClock()
    transport.retries = StatusRetrier(transport._write_again, clock=clock, background=False)
    return transport, http, clock


def landed(body: dict) -> dict:
    return pod("a", rv="9", **{**body["status"]})


def phase_sent(http: FakeHttp) -> list:
    return [call[2]["status"].get("phase") for call in http.calls if call[0] == "PATCH"]


def test_a_status_the_api_server_did_not_take_is_written_again_with_bounded_backoff_until_it_lands():
    down = ApiUnreachable("connection refused")
    transport, http, clock = retrying_transport([down, down, down, down, landed], pod("a", phase="Running"))
    assert transport.write_status(("default", "a"), "u1", lambda p: {"phase": "Failed"}) is None
    delays = []
    while len(transport.retries):
        due = transport.retries.next_due()
        delays.append(due - clock.now)
        clock.now = due
        transport.retries.run_due()
    assert delays == [0.5, 1.0, 2.0, 4.0], "backoff doubles from 0.5 s"
    assert phase_sent(http) == ["Failed"] * 5
    assert transport.cache.get(("default", "a"))["status"]["phase"] == "Failed"
    capped = StatusRetrier(lambda key, waiting: False, clock=clock, background=False)
    capped.schedule(("default", "b"), "u2", {"phase": "Running"})
    for _ in range(8):
        clock.now = capped.next_due()
        capped.run_due()
    assert capped.next_due() - clock.now == 5.0, "backoff is capped at 5 s"


def test_the_latest_status_wins_and_an_older_one_is_never_written_after_it():
    down = ApiUnreachable("connection refused")
    transport, http, clock = retrying_transport([down, down, landed], pod("a", phase="Pending"))
    transport.write_status(("default", "a"), "u1", lambda p: {"phase": "Running"})
    transport.write_status(("default", "a"), "u1", lambda p: {"phase": "Failed"})
    assert len(transport.retries) == 1 and transport.retries.waiting(("default", "a")).status == {"phase": "Failed"}
    clock.now += 10
    transport.retries.run_due()
    assert phase_sent(http) == ["Running", "Failed", "Failed"] and not len(transport.retries)


def test_a_newer_write_that_lands_drops_the_waiting_one():
    down = ApiUnreachable("connection refused")
    transport, http, clock = retrying_transport([down, landed], pod("a", phase="Pending"))
    transport.write_status(("default", "a"), "u1", lambda p: {"phase": "Running"})
    transport.write_status(("default", "a"), "u1", lambda p: {"phase": "Running", "podIP": "127.100.0.2"})
    clock.now += 10
    transport.retries.run_due()
    assert len(http.calls) == 2 and not len(transport.retries)


def test_a_terminal_phase_is_never_left_by_a_later_write():
    down = ApiUnreachable("connection refused")
    transport, http, clock = retrying_transport([down, landed], pod("a", phase="Running"))
    transport.write_status(("default", "a"), "u1", lambda p: {"phase": "Failed"})
    transport.write_status(("default", "a"), "u1", lambda p: {"phase": "Running", "reason": "stale view"})
    assert phase_sent(http) == ["Failed", "Failed"], "a status built later must not reopen a Failed pod"
    assert keep_terminal_phase("Succeeded", {"phase": "Running"}) == {"phase": "Succeeded"}
    assert keep_terminal_phase("Running", {"phase": "Failed"}) == {"phase": "Failed"}


def test_a_retried_status_keeps_conditions_other_controllers_added_meanwhile():
    down = ApiUnreachable("connection refused")
    ready = {"type": "Ready", "status": "False", "reason": "PodFailed"}
    transport, http, clock = retrying_transport([down, landed], pod("a", phase="Running"))
    transport.write_status(("default", "a"), "u1", lambda p: {"phase": "Failed", "conditions": [ready]})
    disruption = {"type": "DisruptionTarget", "status": "True", "reason": "DeletionByTaintManager"}
    transport.cache.put(pod("a", rv="5", phase="Running", conditions=[disruption]))
    clock.now += 10
    transport.retries.run_due()
    assert http.calls[-1][2]["status"]["conditions"] == [ready, disruption]


def test_the_status_of_a_pod_gone_or_replaced_meanwhile_is_dropped():
    down = ApiUnreachable("connection refused")
    transport, http, clock = retrying_transport([down], pod("a", phase="Running"))
    transport.write_status(("default", "a"), "u1", lambda p: {"phase": "Failed"})
    transport.cache.put(pod("a", uid="u2", rv="7"))  # a new pod of the same name
    clock.now += 10
    transport.retries.run_due()
    assert len(http.calls) == 1 and not len(transport.retries)


def test_the_retrying_thread_writes_a_waiting_status_and_ends_on_close():
    written = threading.Event()

    def land(body: dict) -> dict:
        written.set()
        return landed(body)

    http = FakeHttp({("PATCH", STATUS_PATH): [ApiUnreachable("connection refused"), land]})
    transport = transport_with(http, pod("a", phase="Running"))
    transport.retries = StatusRetrier(transport._write_again, name="n1", first=0.01)
    transport.write_status(("default", "a"), "u1", lambda p: {"phase": "Failed"})
    assert written.wait(10), "the waiting status was not written again"
    transport.retries.close()
    assert transport.cache.get(("default", "a"))["status"]["phase"] == "Failed"
    assert not [t for t in threading.enumerate() if t.name == "node-n1-status-retry"]


# ---------------------------------------------------------------- the node's Ready condition after an outage
def registered(http: FakeHttp) -> ApiTransport:
    node = {"metadata": {"name": "n1"}, "spec": {},
            "status": {"conditions": [
                {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory"},
                {"type": "Ready", "status": "True", "reason": "KubeletReady"}]}}
    http.answers[("POST", "/api/v1/nodes")] = {"metadata": {"name": "n1", "uid": "node-uid"}}
    transport = ApiTransport(http)
    transport.register_node(node)
    transport.lease.stop()
    http.calls.clear()
    return transport


def node_seen(ready: str, memory: str = "False") -> dict:
    return {"metadata": {"name": "n1"}, "status": {"conditions": [
        {"type": "MemoryPressure", "status": memory, "lastTransitionTime": "2026-11-28T17:00:00Z"},
        {"type": "Ready", "status": ready, "reason": "NodeStatusUnknown",
         "message": "Kubelet stopped posting node status."}]}}


def test_a_node_marked_unknown_while_its_lease_could_not_be_renewed_posts_ready_again():
    http = FakeHttp({("GET", "/api/v1/nodes/n1"): node_seen("Unknown")})
    transport = registered(http)
    transport.lease.on_renewed()
    method, path, body, extra = http.calls[-1]
    assert (method, path, extra["content_type"]) == ("PATCH", "/api/v1/nodes/n1/status", "application/merge-patch+json")
    ready = body["status"]["conditions"][1]
    assert (ready["type"], ready["status"], ready["reason"]) == ("Ready", "True", "KubeletReady")
    assert ready["lastTransitionTime"] == ready["lastHeartbeatTime"], "Ready changed now"
    assert body["status"]["conditions"][0]["lastTransitionTime"] == "2026-11-28T17:00:00Z", "unchanged: kept"


def test_a_node_that_still_reads_ready_is_only_read():
    http = FakeHttp({("GET", "/api/v1/nodes/n1"): node_seen("True")})
    transport = registered(http)
    transport.lease.on_renewed()
    assert [c[0] for c in http.calls] == ["GET"]


def test_each_lease_beat_renews_then_checks_the_node_and_a_failed_check_waits_for_the_next_beat():
    checks = []
    lease = NodeLease(FakeHttp(), duration=40, on_renewed=lambda: checks.append(1) or 1 / 0)
    lease.name = "n1"
    lease.beat()
    lease.beat()
    assert lease.renewals == 2 and checks == [1, 1]


def test_the_end_of_a_deletion_the_api_server_did_not_take_is_sent_again_until_the_pod_is_gone():
    path = "/api/v1/namespaces/default/pods/a"
    down = ApiUnreachable("connection refused")
    http = FakeHttp({("DELETE", path): [down, down, {}]})
    transport = transport_with(http, pod("a"))
    clock = FakeClock()
    transport.deletions = StatusRetrier(transport._delete_again, clock=clock, background=False)
    transport.finish_deletion(("default", "a"), "u1")
    for _ in range(2):
        clock.now = transport.deletions.next_due()
        transport.deletions.run_due()
    deletes = [c for c in http.calls if c[0] == "DELETE"]
    assert len(deletes) == 3 and all(c[2]["preconditions"] == {"uid": "u1"} for c in deletes)
    assert not len(transport.deletions)
    http.answers[("DELETE", path)] = down
    transport.finish_deletion(("default", "a"), "u1")  # refused again, then the watch says the pod is gone:
    transport.cache.remove(pod("a"))
    clock.now = transport.deletions.next_due()
    transport.deletions.run_due()
    assert not len(transport.deletions) and len([c for c in http.calls if c[0] == "DELETE"]) == 4
