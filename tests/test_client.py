"""Rules of the Kubernetes client factory, proven against local HTTP(S) servers started here.

Each server is a ThreadingHTTPServer answering from a script (status, headers, body) and
recording every request; TLS servers use a CA generated with ``cryptography``. Backoff and the
rate limit run on a fake clock/sleep, so no test waits for real time except the read timeout one.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import socket
import ssl
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from dask_k8s_backend.kube import client as client_mod
from dask_k8s_backend.kube.client import TokenBucket, create_api_client, kubeconfig_for
from dask_k8s_backend.config import load_settings
from dask_k8s_backend.kube.errors import ApiUnreachable, ServerError, TooManyRequests, Unauthorized, translate

TOKEN = "s3cret-token-value"
DROP = -1  # scripted "status": close the connection instead of answering
NAMESPACE_LIST = {"kind": "NamespaceList", "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": []}


# ---------------------------------------------------------------------------- fakes

class FakeClock:
    """time.monotonic/time.sleep pair where sleeping advances the clock instantly."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class FakeApiServer:
    """A scripted HTTP(S) API server on 127.0.0.1; records (method, path, headers) per request."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.script: deque[tuple[int, dict, dict | None]] = deque()
        self.requests: list[tuple[str, str, dict]] = []
        self.release = threading.Event()  # lets a slow answer finish at teardown
        self.delay = 0.0
        self.connections: set[socket.socket] = set()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 5
            wbufsize = 1 << 16  # one segment per answer: no Nagle/delayed-ACK stalls on keep-alive

            def log_message(self, *args):
                pass

            def setup(self):
                super().setup()
                server.connections.add(self.connection)

            def finish(self):
                server.connections.discard(self.connection)
                super().finish()

            def _answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"null")
                server.requests.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))
                if server.delay:
                    server.release.wait(server.delay)
                status, headers, payload = server.script.popleft() if server.script else (200, {}, None)
                if status == DROP:  # the request arrived, then the connection dies without an answer
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if payload is None:
                    payload = NAMESPACE_LIST if self.command == "GET" else {"kind": "Namespace", "apiVersion": "v1", **body}
                data = json.dumps(payload).encode()
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _answer

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def answer(self, status: int, headers: dict | None = None, body: dict | None = None, times: int = 1) -> None:
        for _ in range(times):
            self.script.append((status, headers or {}, body or _status_body(status)))

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        for connection in list(self.connections):  # end keep-alive handler threads now
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.thread.join(5)


def _status_body(status: int) -> dict:
    reasons = {401: "Unauthorized", 403: "Forbidden", 429: "TooManyRequests", 500: "InternalError",
               503: "ServiceUnavailable"}
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": status,
            "reason": reasons.get(status, "Unknown"), "message": f"canned {status}"}


def _make_ca(tmp: Path, name: str) -> tuple[Path, ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    path = tmp / f"{name}.crt"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path, key, cert


@pytest.fixture(autouse=True)
def no_leaked_threads():
    """Every server and connection a test opened is gone when it ends (bounded wait)."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5
    while (leaked := [t for t in threading.enumerate() if t not in before and t.is_alive()]) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not leaked, f"threads left behind: {leaked}"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, a server certificate for 127.0.0.1 signed by it, and an unrelated second CA."""
    tmp = tmp_path_factory.mktemp("pki")
    ca_file, ca_key, ca_cert = _make_ca(tmp, "test-ca")
    other_ca, _, _ = _make_ca(tmp, "other-ca")
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "apiserver")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    (tmp / "server.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp / "server.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp / "server.crt", tmp / "server.key")
    return {"ca": str(ca_file), "other_ca": str(other_ca), "context": context}


@pytest.fixture
def servers():
    started: list[FakeApiServer] = []

    def start(tls: ssl.SSLContext | None = None) -> FakeApiServer:
        started.append(FakeApiServer(tls))
        return started[-1]

    yield start
    for server in started:
        server.close()


@pytest.fixture
def clients():
    """Build ApiClients on a fake clock; closed after the test so server threads end."""
    made: list[k8s.ApiClient] = []
    clock = FakeClock()

    def make(urls, **config) -> k8s.ApiClient:
        made.append(create_api_client(urls, load_settings(config), clock=clock, sleep=clock.sleep))
        return made[-1]

    make.clock = clock
    yield make
    for api in made:
        api.close()


def _refused_url() -> str:
    """An address where nothing listens: connecting to it is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# ---------------------------------------------------------------------------- authentication and TLS

def test_token_header_is_sent_and_ca_file_verifies_the_server(servers, clients, pki):
    server = servers(pki["context"])
    api = clients([server.url], **{"authenticate.oauth-token": TOKEN, "authenticate.ca-cert-file": pki["ca"]})
    assert k8s.CoreV1Api(api).list_namespace().items == []
    assert server.requests[0][2]["authorization"] == f"Bearer {TOKEN}"


def test_wrong_ca_fails_with_a_clear_error_without_the_token(servers, clients, pki):
    server = servers(pki["context"])
    api = clients([server.url], **{"authenticate.oauth-token": TOKEN, "authenticate.ca-cert-file": pki["other_ca"]})
    with pytest.raises(ApiUnreachable) as info:
        k8s.CoreV1Api(api).list_namespace()
    text = str(info.value)
    assert "TLS verification" in text and server.url in text and "ca-cert-file" in text
    assert TOKEN not in text
    assert server.requests == []


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_trust_certificates_skips_verification_with_a_warning(servers, clients, pki):
    server = servers(pki["context"])
    with pytest.warns(UserWarning, match="not verified"):
        api = clients([server.url], **{"authenticate.trust-certificates": True})
    k8s.CoreV1Api(api).list_namespace()
    assert len(server.requests) == 1


def test_token_file_is_read_and_reread_when_it_changes(servers, clients, tmp_path):
    import os

    server = servers()
    token_file = tmp_path / "token"
    token_file.write_text("first\n")
    api = clients([server.url], **{"authenticate.oauth-token-file": str(token_file)})
    core = k8s.CoreV1Api(api)
    core.list_namespace()
    token_file.write_text("second\n")
    stat = token_file.stat()
    os.utime(token_file, (stat.st_atime, stat.st_mtime + 10))
    core.list_namespace()
    assert [r[2]["authorization"] for r in server.requests] == ["Bearer first", "Bearer second"]


def test_missing_token_file_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="oauth-token-file: cannot read"):
        create_api_client(["http://127.0.0.1:1"], load_settings({"authenticate.oauth-token-file": str(tmp_path / "no")}))


def test_missing_ca_file_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"ca-cert-file: file .* does not exist"):
        create_api_client(["https://127.0.0.1:1"], load_settings({"authenticate.ca-cert-file": str(tmp_path / "no")}))


def test_kubeconfig_from_settings_is_used_when_no_server_is_given(servers, clients, pki, tmp_path):
    server = servers(pki["context"])
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(kubeconfig_for(server.url, TOKEN, pki["ca"])))
    api = clients([], **{"authenticate.kubeconfig": str(path)})
    k8s.CoreV1Api(api).list_namespace()
    assert server.requests[0][2]["authorization"] == f"Bearer {TOKEN}"


def test_kubeconfig_env_var_is_used(servers, clients, tmp_path, monkeypatch):
    server = servers()
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(kubeconfig_for(server.url)))
    monkeypatch.setenv("KUBECONFIG", str(path))
    k8s.CoreV1Api(clients([])).list_namespace()
    assert len(server.requests) == 1


def mount_service_account(tmp_path, pki, monkeypatch):
    """What the kubelet mounts in a pod: the service account's token and the cluster CA."""
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text(TOKEN)
    (account / "ca.crt").write_text(Path(pki["ca"]).read_text())
    monkeypatch.setattr(client_mod, "SERVICE_ACCOUNT_DIR", account)


def test_in_cluster_service_account_is_used_in_a_pod(servers, clients, pki, tmp_path, monkeypatch):
    server = servers(pki["context"])
    mount_service_account(tmp_path, pki, monkeypatch)
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", server.url.rsplit(":", 1)[1])
    k8s.CoreV1Api(clients([])).list_namespace()
    assert server.requests[0][2]["authorization"].lower() == f"bearer {TOKEN}"


def test_explicit_master_in_a_pod_uses_the_mounted_service_account(servers, clients, pki, tmp_path, monkeypatch):
    server = servers(pki["context"])
    mount_service_account(tmp_path, pki, monkeypatch)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    k8s.CoreV1Api(clients([server.url])).list_namespace()
    assert server.requests[0][2]["authorization"] == f"Bearer {TOKEN}"


def test_no_kubeconfig_outside_a_pod_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(ValueError, match="master 'k8s://' needs a kubeconfig"):
        create_api_client([], load_settings())


def test_unauthorized_gives_a_clear_error_without_the_token(servers, clients):
    server = servers()
    server.answer(401)
    api = clients([server.url], **{"authenticate.oauth-token": TOKEN})
    with pytest.raises(ApiException) as info:
        k8s.CoreV1Api(api).list_namespace()
    error = translate(info.value, "list namespaces")
    assert isinstance(error, Unauthorized)
    assert "oauth-token" in str(error) and "kubeconfig" in str(error) and TOKEN not in str(error)
    assert len(server.requests) == 1  # 401 is not retried


def test_secrets_are_not_in_reprs(clients):
    api = clients(["http://127.0.0.1:1"], **{"authenticate.oauth-token": TOKEN})
    assert TOKEN not in repr(api.rest_client)
    assert TOKEN not in repr(load_settings({"authenticate.oauth-token": TOKEN}))


# ---------------------------------------------------------------------------- retries

def test_503_is_retried_then_succeeds(servers, clients):
    server = servers()
    server.answer(503, times=2)
    api = clients([server.url])
    assert k8s.CoreV1Api(api).list_namespace().items == []
    assert len(server.requests) == 3
    assert clients.clock.sleeps == [0.05, 0.1]  # exponential backoff


def test_429_honours_retry_after(servers, clients):
    server = servers()
    server.answer(429, {"Retry-After": "3"})
    api = clients([server.url])
    k8s.CoreV1Api(api).create_namespace({"metadata": {"name": "x"}})
    assert [r[0] for r in server.requests] == ["POST", "POST"]
    assert clients.clock.sleeps == [3.0]


def test_post_is_not_retried_on_500_but_get_is(servers, clients):
    server = servers()
    server.answer(500)
    api = clients([server.url])
    with pytest.raises(ApiException) as info:
        k8s.CoreV1Api(api).create_namespace({"metadata": {"name": "x"}})
    assert isinstance(translate(info.value, "create namespace x"), ServerError)
    assert len(server.requests) == 1
    server.answer(500)
    k8s.CoreV1Api(api).list_namespace()
    assert len(server.requests) == 3


def test_a_post_whose_connection_dies_after_sending_is_not_repeated_but_a_get_is(servers, clients):
    server = servers()
    server.answer(DROP)
    api = clients([server.url])
    with pytest.raises(ApiUnreachable, match="POST /api/v1/namespaces"):
        k8s.CoreV1Api(api).create_namespace({"metadata": {"name": "x"}})
    assert [r[0] for r in server.requests] == ["POST"]  # the server may have created it: never sent twice
    server.answer(DROP)
    k8s.CoreV1Api(api).list_namespace()
    assert [r[0] for r in server.requests] == ["POST", "GET", "GET"]


def test_retries_stop_after_max_retries_and_return_the_last_answer(servers, clients):
    server = servers()
    server.answer(429, {"Retry-After": "1"}, times=10)
    api = clients([server.url], **{"api.max-retries": 2})
    with pytest.raises(ApiException) as info:
        k8s.CoreV1Api(api).list_namespace()
    error = translate(info.value, "list namespaces")
    assert isinstance(error, TooManyRequests) and error.retry_after == 1.0
    assert len(server.requests) == 3


def test_failover_to_the_second_server_when_the_first_refuses(servers, clients):
    live = servers()
    dead = _refused_url()
    api = clients([dead, live.url])
    core = k8s.CoreV1Api(api)
    core.list_namespace()
    core.create_namespace({"metadata": {"name": "x"}})  # a refused connection was never sent: safe for POST too
    assert [r[0] for r in live.requests] == ["GET", "POST"]
    assert api.rest_client.active_server == live.url
    assert len(clients.clock.sleeps) == 1  # one backoff, then the healthy server is remembered


def test_unreachable_servers_give_a_clear_error_naming_them(clients):
    dead = [_refused_url(), _refused_url()]
    api = clients(dead, **{"api.max-retries": 3})
    with pytest.raises(ApiUnreachable) as info:
        k8s.CoreV1Api(api).list_namespace()
    assert all(url in str(info.value) for url in dead) and "master URL" in str(info.value)
    assert len(clients.clock.sleeps) == 3


def test_read_timeout_applies_by_default(servers, clients):
    server = servers()
    server.delay = 5.0
    api = clients([server.url], **{"api.request-timeout": "200ms", "api.max-retries": 0})
    with pytest.raises(ApiUnreachable, match="did not answer GET /api/v1/namespaces in time.*request-timeout"):
        k8s.CoreV1Api(api).list_namespace()


# ---------------------------------------------------------------------------- rate limit

def test_token_bucket_allows_burst_then_qps():
    clock = FakeClock()
    bucket = TokenBucket(qps=10, burst=5, clock=clock, sleep=clock.sleep)
    start = clock.now
    for _ in range(25):
        bucket.acquire()
    assert clock.now - start == pytest.approx(2.0)  # 5 free, then 20 at 10/s
    assert len(clock.sleeps) == 20 and all(s == pytest.approx(0.1) for s in clock.sleeps)


def test_token_bucket_refills_while_idle():
    clock = FakeClock()
    bucket = TokenBucket(qps=2, burst=2, clock=clock, sleep=clock.sleep)
    bucket.acquire(), bucket.acquire()
    clock.now += 10  # idle: refills to burst, not beyond
    for _ in range(2):
        bucket.acquire()
    assert clock.sleeps == []
    bucket.acquire()
    assert clock.sleeps == [pytest.approx(0.5)]


def test_rate_limit_bounds_api_requests(servers, clients):
    server = servers()
    api = clients([server.url], **{"api.qps": 4, "api.burst": 2})
    core = k8s.CoreV1Api(api)
    start = clients.clock.now
    for _ in range(10):
        core.list_namespace()
    assert len(server.requests) == 10
    assert clients.clock.now - start == pytest.approx(2.0)  # (10 - 2 burst) / 4 qps


APF = {"X-Kubernetes-PF-FlowSchema-UID": "fs-1", "X-Kubernetes-PF-PriorityLevel-UID": "pl-1"}


def test_rate_limit_stops_once_the_server_shows_priority_and_fairness(servers, clients):
    server = servers()
    api = clients([server.url], **{"api.qps": 4, "api.burst": 2})
    server.answer(200, APF, NAMESPACE_LIST)
    core = k8s.CoreV1Api(api)
    start = clients.clock.now
    for _ in range(10):
        core.list_namespace()
    assert len(server.requests) == 10 and clients.clock.now == start  # only the first answer had the headers
    assert api.rest_client.server_flow_control


def test_rate_limit_always_keeps_the_limit_with_priority_and_fairness(servers, clients):
    server = servers()
    api = clients([server.url], **{"api.qps": 4, "api.burst": 2, "api.rate-limit": "always"})
    server.answer(200, APF, NAMESPACE_LIST, times=10)
    core = k8s.CoreV1Api(api)
    start = clients.clock.now
    for _ in range(10):
        core.list_namespace()
    assert clients.clock.now - start == pytest.approx(2.0) and not api.rest_client.server_flow_control


def test_failing_over_forgets_the_previous_servers_flow_control(servers, clients):
    server = servers()
    api = clients([server.url, _refused_url()], **{"api.qps": 4, "api.burst": 2})
    server.answer(200, APF, NAMESPACE_LIST)
    k8s.CoreV1Api(api).list_namespace()
    api.rest_client._fail_over(server.url)
    assert not api.rest_client.server_flow_control


def test_kubeconfig_for_builds_one_context():
    config = kubeconfig_for("https://h:6443", "tok", "/ca.crt")
    assert config["current-context"] == "dask-k8s-backend"
    assert config["clusters"][0]["cluster"] == {"server": "https://h:6443", "certificate-authority": "/ca.crt"}
    assert config["users"][0]["user"] == {"token": "tok"}


def test_watch_requests_get_no_default_read_timeout(servers, clients):
    server = servers()
    api = clients([server.url], **{"api.request-timeout": "7s", "api.connection-timeout": "2s"})
    rest = api.rest_client
    assert rest._timeout_for("/api/v1/pods?labelSelector=a") == (2.0, 7.0)
    assert rest._timeout_for("/api/v1/pods?watch=True&resourceVersion=5") == (2.0, None)
    assert rest._timeout_for("/api/v1/namespaces/d/pods/p/log?follow=true") == (2.0, None)


# ---------------------------------------------------------------------------- connection pool

def test_the_connection_pool_holds_every_request_thread_and_watch_of_the_pod_api(clients):
    """Fewer pooled connections than concurrent requests makes urllib3 discard (and warn) on every return."""
    from dask_k8s_backend.kube.pod_api import KubePodApi

    api_client = clients(["http://127.0.0.1:1"])
    pod_api = KubePodApi(api_client, "default")
    try:
        threads = pod_api._pool._max_workers
        assert threads == client_mod.API_THREADS
        assert api_client.configuration.connection_pool_maxsize >= threads + client_mod.STREAM_CONNECTIONS
        assert api_client.rest_client.pool_manager.connection_pool_kw["maxsize"] >= threads + client_mod.STREAM_CONNECTIONS
    finally:
        pod_api._pool.shutdown(wait=False)
