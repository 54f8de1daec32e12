"""The node agent joined over HTTP to a real API server (the embedded one, or upstream with --k8s-kubeconfig).

What a kubelet owes the control plane: a Ready Node announcing its kubelet endpoint and a renewed
Lease; the pods bound to it run through their phases with real exit codes; their logs are served
by the kubelet endpoint (and, upstream, through ``pods/log``); deletion is SIGTERM, the grace
period, then SIGKILL; each pod authenticates with its projected service-account token; stopping
the agent stops its pods gracefully and deletes its Node; the CLI refuses bad input before it
creates anything. See conftest.py for the server and the agent fixtures.
"""

from __future__ import annotations

import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from node_helpers import NAMESPACE, phase, python_pod, terminated, unique

from dask_k8s_backend.embedded.node.agent.options import derived_ip_block

EMBEDDED_PROXIES_NO_LOGS = "the embedded API server serves pods/log only for its in-process kubelets"
EMBEDDED_HAS_NO_TOKENS = "the embedded API server serves no TokenRequest"


def kubelet_get(agent, path: str, timeout: float = 30.0) -> tuple[int, bytes]:
    """GET on the agent's kubelet endpoint over TLS, verified against the certificate it made at start."""
    context = ssl.create_default_context(cafile=str(agent.server.credentials.ca_file))
    try:
        with urllib.request.urlopen(agent.server.url + path, context=context, timeout=timeout) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def await_output(agent, pod: str, line: bytes, timeout: float = 60.0) -> None:
    """Follow the container's log until ``line`` appears (a handler installed, a server listening, ...)."""
    context = ssl.create_default_context(cafile=str(agent.server.credentials.ca_file))
    with urllib.request.urlopen(f"{agent.server.url}/containerLogs/{NAMESPACE}/{pod}/main?follow=true",
                                context=context, timeout=timeout) as stream:
        for got in stream:
            if got.rstrip(b"\n") == line:
                return
    raise AssertionError(f"pod {pod} ended without printing {line!r}")


# ---------------------------------------------------------------- node and lease
def test_the_agent_registers_a_ready_node_that_announces_its_kubelet_endpoint(api, make_agent):
    agent = make_agent(cpu="3", memory="5Gi", pods=20, labels="disk=ssd", taints="dedicated=dask:NoSchedule",
                       resources="example.com/widget=2")
    node = api.get(f"/api/v1/nodes/{agent.options.name}")
    status = node["status"]
    conditions = {c["type"]: (c["status"], c.get("reason")) for c in status["conditions"]}
    assert conditions["Ready"] == ("True", "KubeletReady")
    assert all(conditions[t][0] == "False" for t in ("MemoryPressure", "DiskPressure", "PIDPressure"))
    assert {a["type"]: a["address"] for a in status["addresses"]} == {"InternalIP": "127.0.0.1", "Hostname": "localhost"}
    assert status["daemonEndpoints"]["kubeletEndpoint"]["Port"] == agent.server.port
    assert status["nodeInfo"]["kubeletVersion"].startswith("v1.")
    assert {k: status["allocatable"][k] for k in ("cpu", "memory", "pods", "example.com/widget")} == {
        "cpu": "3", "memory": "5Gi", "pods": "20", "example.com/widget": "2"}
    assert node["metadata"]["labels"]["disk"] == "ssd"
    assert {"key": "dedicated", "value": "dask", "effect": "NoSchedule"} in node["spec"]["taints"]
    assert kubelet_get(agent, "/healthz") == (200, b"ok")


def test_the_agent_renews_its_lease_owned_by_its_node(api, make_agent):
    agent = make_agent(lease_duration=4)  # renewed every second
    name = agent.options.name
    leases = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"
    first = api.wait_for(leases, name, lambda lease: lease, 30, "the lease")
    assert first["spec"]["holderIdentity"] == name and first["spec"]["leaseDurationSeconds"] == 4
    node = api.get(f"/api/v1/nodes/{name}")
    assert first["metadata"]["ownerReferences"][0]["uid"] == node["metadata"]["uid"]
    renewed = api.wait_for(leases, name, lambda lease: lease and lease["spec"]["renewTime"] != first["spec"]["renewTime"]
                           and lease, 30, "a renewal")
    assert renewed["spec"]["renewTime"] > first["spec"]["renewTime"]


# ---------------------------------------------------------------- pods
def test_a_pod_runs_through_its_phases_and_reports_its_exit_code(api, make_agent, tmp_path):
    agent = make_agent()
    node = agent.options.name
    gate = tmp_path / "go"
    failing, passing = unique("fails"), unique("passes")
    api.create_pod(python_pod(failing, node, f"import os, sys, time\nwhile not os.path.exists({str(gate)!r}): "
                                             "time.sleep(0.05)\nsys.exit(3)"))
    running = api.wait_pod(failing, lambda p: phase(p) == "Running" and p, 60, "Running")
    status = running["status"]
    assert status["podIP"] == status["podIPs"][0]["ip"] and status["podIP"].startswith(f"127.{agent.ip_block}.")
    assert {c["type"]: c["status"] for c in status["conditions"]}["Ready"] == "True"
    gate.touch()
    failed = api.wait_pod(failing, lambda p: phase(p) == "Failed" and p, 60, "Failed")
    assert terminated(failed)["exitCode"] == 3 and terminated(failed)["reason"] == "Error"
    api.create_pod(python_pod(passing, node, "print('done')"))
    succeeded = api.wait_pod(passing, lambda p: phase(p) == "Succeeded" and p, 60, "Succeeded")
    assert terminated(succeeded)["exitCode"] == 0 and terminated(succeeded)["reason"] == "Completed"
    assert succeeded["status"]["podIP"] != failed["status"]["podIP"]


def test_two_agents_on_one_machine_never_share_a_pod_ip_block(make_agent):
    first = make_agent()
    clash = next(f"clash-{i}" for i in range(100_000) if derived_ip_block(f"clash-{i}") == first.ip_block)
    second = make_agent(name=clash)  # its name hashes to the first one's block
    assert second.ip_block != first.ip_block


def test_containers_get_the_api_server_address_and_pod_env(api, make_agent):
    agent = make_agent()
    name = unique("env")
    api.create_pod(python_pod(name, agent.options.name, "import os; print(os.environ['KUBERNETES_SERVICE_HOST'], "
                                                        "os.environ['KUBERNETES_SERVICE_PORT'])"))
    api.wait_pod(name, lambda p: phase(p) == "Succeeded", 60, "Succeeded")
    host, port = agent.http.host_port
    code, body = kubelet_get(agent, f"/containerLogs/{NAMESPACE}/{name}/main")
    assert (code, body.decode().split()) == (200, [host, str(port)])
    started = api.wait_for(f"/api/v1/namespaces/{NAMESPACE}/events", name,
                           lambda e: e and e["reason"] == "Started" and e, 30, "the Started event",
                           selector=f"involvedObject.name={name}")
    assert started["source"] == {"component": "kubelet", "host": agent.options.name}
    assert started["involvedObject"]["uid"]


def test_the_kubelet_endpoint_serves_logs_with_the_api_servers_query(api, make_agent):
    agent = make_agent()
    name = unique("logs")
    api.create_pod(python_pod(name, agent.options.name, "for i in range(5): print('line', i)"))
    api.wait_pod(name, lambda p: phase(p) == "Succeeded", 60, "Succeeded")
    base = f"/containerLogs/{NAMESPACE}/{name}/main"
    assert kubelet_get(agent, base)[1] == b"".join(b"line %d\n" % i for i in range(5))
    assert kubelet_get(agent, base + "?tailLines=2")[1] == b"line 3\nline 4\n"
    assert kubelet_get(agent, base + "?limitBytes=6")[1] == b"line 0"
    stamped = kubelet_get(agent, base + "?timestamps=true&tailLines=1")[1].decode()
    assert stamped.endswith(" line 4\n") and stamped[:4].isdigit() and "T" in stamped.split()[0]
    assert kubelet_get(agent, base + "?sinceSeconds=3600")[1].startswith(b"line 0")
    assert kubelet_get(agent, base + "?sinceTime=2999-01-01T00:00:00Z")[1] == b""
    code, body = kubelet_get(agent, base + "?previous=true")
    assert code == 400 and b"previous terminated container" in body
    assert kubelet_get(agent, f"/containerLogs/{NAMESPACE}/no-such-pod/main")[0] == 404


def test_a_followed_log_streams_until_the_container_exits(api, make_agent, tmp_path):
    agent = make_agent()
    name = unique("follow")
    gate = tmp_path / "go"
    api.create_pod(python_pod(name, agent.options.name, f"import os, time\nprint('first', flush=True)\n"
                                                        f"while not os.path.exists({str(gate)!r}): time.sleep(0.05)\n"
                                                        "print('second')"))
    api.wait_pod(name, lambda p: phase(p) == "Running", 60, "Running")
    context = ssl.create_default_context(cafile=str(agent.server.credentials.ca_file))
    with urllib.request.urlopen(f"{agent.server.url}/containerLogs/{NAMESPACE}/{name}/main?follow=true",
                                context=context, timeout=60) as stream:
        assert stream.readline() == b"first\n"
        gate.touch()
        assert stream.read() == b"second\n"  # the stream ends once the container has exited


def test_logs_come_through_the_api_server(api, make_agent):
    if not api.upstream:
        pytest.skip(EMBEDDED_PROXIES_NO_LOGS)
    agent = make_agent()
    name = unique("proxied")
    api.create_pod(python_pod(name, agent.options.name, "print(42)"))
    api.wait_pod(name, lambda p: phase(p) == "Succeeded", 60, "Succeeded")
    result = subprocess.run(["kubectl", "--kubeconfig", api.kubeconfig, "logs", "-n", NAMESPACE, name],
                            capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout) == (0, "42\n"), result.stderr


def test_deletion_sends_sigterm_then_sigkill_after_the_grace_period(api, make_agent, tmp_path):
    agent = make_agent()
    name = unique("stubborn")
    marker = tmp_path / "got-sigterm"
    code = (f"import signal, time\n"
            f"def term(*_):\n    open({str(marker)!r}, 'w').close()\n"
            "signal.signal(signal.SIGTERM, term)\nprint('ready', flush=True)\nwhile True: time.sleep(0.1)")
    api.create_pod(python_pod(name, agent.options.name, code, grace=2))
    api.wait_pod(name, lambda p: phase(p) == "Running", 60, "Running")
    await_output(agent, name, b"ready")
    finals: list[dict] = []
    started = time.monotonic()
    api.delete_pod(name)

    def gone(pod):
        if pod is not None and terminated(pod):
            finals.append(terminated(pod))
        return pod is None

    api.wait_pod(name, gone, 60, "removal")
    elapsed = time.monotonic() - started
    assert marker.exists(), "the container never got SIGTERM"
    assert 2.0 <= elapsed < 15.0, f"removed after {elapsed:.1f} s with a 2 s grace period"
    assert finals and finals[-1]["exitCode"] == 137, finals


def test_a_pod_authenticates_with_its_projected_service_account_token(api, make_agent):
    if not api.upstream:
        pytest.skip(EMBEDDED_HAS_NO_TOKENS)
    agent = make_agent()
    name = unique("whoami")
    code = """
import json, os, ssl, urllib.request
sa = '/var/run/secrets/kubernetes.io/serviceaccount'
token = open(sa + '/token').read()
context = ssl.create_default_context(cafile=sa + '/ca.crt')
url = 'https://%s:%s/apis/authentication.k8s.io/v1/selfsubjectreviews' % (
    os.environ['KUBERNETES_SERVICE_HOST'], os.environ['KUBERNETES_SERVICE_PORT'])
body = json.dumps({'apiVersion': 'authentication.k8s.io/v1', 'kind': 'SelfSubjectReview'}).encode()
request = urllib.request.Request(url, data=body, method='POST', headers={
    'Authorization': 'Bearer ' + token, 'Content-Type': 'application/json'})
print(json.load(urllib.request.urlopen(request, context=context))['status']['userInfo']['username'])
print(open(sa + '/namespace').read())
"""
    api.create_pod(python_pod(name, agent.options.name, code))
    done = api.wait_pod(name, lambda p: phase(p) in ("Succeeded", "Failed") and p, 60, "the end")
    log = kubelet_get(agent, f"/containerLogs/{NAMESPACE}/{name}/main")[1].decode()
    assert phase(done) == "Succeeded", log
    assert log.split() == [f"system:serviceaccount:{NAMESPACE}:default", NAMESPACE]


def test_a_simulated_node_moves_pods_through_their_phases(api, make_agent):
    agent = make_agent(kubelet="simulated", kubelet_options={"start_delay": 0.1})
    name = unique("sim")
    manifest = python_pod(name, agent.options.name, "unused")
    manifest["metadata"]["annotations"] = {"simulated.dask-k8s-backend/run-duration": "0.5",
                                           "simulated.dask-k8s-backend/exit-code": "7"}
    api.create_pod(manifest)
    api.wait_pod(name, lambda p: phase(p) == "Running", 60, "Running")
    failed = api.wait_pod(name, lambda p: phase(p) == "Failed" and p, 60, "Failed")
    assert terminated(failed)["exitCode"] == 7


def test_stopping_the_agent_stops_its_pods_gracefully_and_deletes_its_node(api, make_agent, tmp_path):
    agent = make_agent()
    name = unique("leaving")
    marker = tmp_path / "got-sigterm"
    code = (f"import signal, sys\n"
            f"def term(*_):\n    open({str(marker)!r}, 'w').close()\n    sys.exit(0)\n"
            "signal.signal(signal.SIGTERM, term)\nprint('ready', flush=True)\nsignal.pause()")
    api.create_pod(python_pod(name, agent.options.name, code))
    api.wait_pod(name, lambda p: phase(p) == "Running", 60, "Running")
    await_output(agent, name, b"ready")
    agent.stop()
    assert marker.exists(), "the pod was not stopped with SIGTERM"
    assert api.get(f"/api/v1/nodes/{agent.options.name}") is None
    final = api.get(f"/api/v1/namespaces/{NAMESPACE}/pods/{name}")
    assert final is None or terminated(final)["exitCode"] == 0


# ---------------------------------------------------------------- CLI
def run_cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dask_k8s_backend", "node", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_the_cli_refuses_bad_input_before_creating_anything(api):
    name = unique("refused")
    proc = run_cli("--kubeconfig", api.kubeconfig, "--name", name, "--taints", "dedicated=dask")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert err.startswith("node: --taints: 'dedicated=dask'") and "NoSchedule" in err
    assert api.get(f"/api/v1/nodes/{name}") is None


def test_the_cli_says_when_it_cannot_reach_the_api_server(tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\ncurrent-context: c\n"
                          "clusters: [{name: c, cluster: {server: 'https://127.0.0.1:1'}}]\n"
                          "users: [{name: u, user: {token: t}}]\ncontexts: [{name: c, context: {cluster: c, user: u}}]\n")
    proc = run_cli("--kubeconfig", str(kubeconfig), "--name", "lonely")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith("node: lonely could not join the API server") and "127.0.0.1:1" in last
    assert "Traceback" not in err


def test_the_cli_joins_in_the_foreground_and_leaves_on_sigterm(api):
    name = unique("cli")
    proc = run_cli("--kubeconfig", api.kubeconfig, "--name", name, "--kubelet", "simulated", "--cpu", "2")
    try:
        line = proc.stdout.readline()
        assert line.startswith(f"Node {name} (simulated) joined"), line + proc.stderr.read()
        assert api.get(f"/api/v1/nodes/{name}")["status"]["capacity"]["cpu"] == "2"
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert api.get(f"/api/v1/nodes/{name}") is None
