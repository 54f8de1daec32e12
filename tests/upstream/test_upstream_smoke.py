"""Smoke check of the upstream control plane started by ``ci/upstream_k8s.py up`` (issue 13's first "must show").

Run against the kubeconfig that launcher wrote::

    python -m pytest -q tests/upstream --k8s-kubeconfig upstream.kubeconfig

Every check goes through the real ``kubectl`` and the upstream API server: the release it reports
is the one pinned in ci/upstream/kubernetes/go.mod, the node agents' nodes are Ready, a pod runs
to Succeeded, its log comes back through the API server's proxy to the agent, and deleting pods
(finished or running) returns promptly. Without ``--k8s-kubeconfig`` the module is skipped; with
it, a missing kubectl is a failure, because CI must never skip this stage silently.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GO_MOD = ROOT / "ci" / "upstream" / "kubernetes" / "go.mod"
# CI sets how many nodes it started; otherwise any number >= 1, all Ready.
EXPECTED_NODES = int(os.environ.get("DASK_K8S_UPSTREAM_NODES", "0"))
PROMPT_DELETE_SECONDS = 15.0

Kubectl = Callable[..., subprocess.CompletedProcess]


@pytest.fixture(scope="module")
def kubectl(request) -> Kubectl:
    kubeconfig = request.config.getoption("--k8s-kubeconfig")
    if not kubeconfig:
        pytest.skip("needs a running upstream control plane: start `python ci/upstream_k8s.py up --kubeconfig F` "
                    "and pass --k8s-kubeconfig F")
    binary = shutil.which("kubectl")
    if binary is None:
        pytest.fail("kubectl is not on PATH; the upstream smoke check needs it (install kubectl)")

    def run(*args: str, timeout: float = 60.0, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([binary, "--kubeconfig", kubeconfig, *args], capture_output=True, text=True,
                                timeout=timeout)
        if check and result.returncode != 0:
            pytest.fail(f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
        return result
    return run


def pinned_release() -> str:
    match = re.search(r"^\s*(?:require\s+)?k8s\.io/kubernetes\s+(v\S+)", GO_MOD.read_text(), re.MULTILINE)
    assert match, f"no k8s.io/kubernetes pin in {GO_MOD}"
    return match.group(1)


def wait_for_phase(kubectl: Kubectl, pod: str, phases: set[str], timeout: float = 120.0) -> str:
    deadline = time.monotonic() + timeout
    phase = ""
    while time.monotonic() < deadline:
        phase = kubectl("get", "pod", pod, "-o", "jsonpath={.status.phase}").stdout.strip()
        if phase in phases:
            return phase
        time.sleep(0.5)
    describe = kubectl("describe", "pod", pod, check=False).stdout
    pytest.fail(f"pod {pod} still in phase {phase!r} after {timeout:.0f} s, expected one of {sorted(phases)}:\n"
                f"{describe}")


def timed_delete(kubectl: Kubectl, pod: str) -> float:
    start = time.monotonic()
    kubectl("delete", "pod", pod, timeout=PROMPT_DELETE_SECONDS * 4)
    return time.monotonic() - start


def test_kubectl_version_reports_the_pinned_upstream_release(kubectl):
    server = json.loads(kubectl("version", "-o", "json").stdout)["serverVersion"]
    assert server["gitVersion"] == pinned_release()


def test_every_node_agent_is_a_ready_node(kubectl):
    nodes = json.loads(kubectl("get", "nodes", "-o", "json").stdout)["items"]
    ready = [n["metadata"]["name"] for n in nodes
             if any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"].get("conditions", []))]
    assert nodes and len(ready) == len(nodes), f"not all nodes Ready: {ready} of {[n['metadata']['name'] for n in nodes]}"
    if EXPECTED_NODES:
        assert len(ready) == EXPECTED_NODES


def test_a_pod_runs_to_succeeded_and_its_log_comes_through_the_api_server(kubectl):
    kubectl("delete", "pod", "hello", "--ignore-not-found", "--wait=true")
    kubectl("run", "hello", "--image=python", "--restart=Never", "--", "python", "-c", "print(42)")
    try:
        assert wait_for_phase(kubectl, "hello", {"Succeeded", "Failed"}) == "Succeeded"
        assert kubectl("logs", "hello").stdout.strip() == "42"
    finally:
        elapsed = timed_delete(kubectl, "hello")
    assert elapsed < PROMPT_DELETE_SECONDS, f"deleting a finished pod took {elapsed:.1f} s"


def test_deleting_a_running_pod_returns_promptly(kubectl):
    """Graceful deletion: the agent stops the process and confirms with grace 0, well within the 30 s default."""
    kubectl("delete", "pod", "sleeper", "--ignore-not-found", "--wait=true")
    kubectl("run", "sleeper", "--image=python", "--restart=Never", "--",
            "python", "-c", "import time; print('up', flush=True); time.sleep(600)")
    try:
        assert wait_for_phase(kubectl, "sleeper", {"Running", "Succeeded", "Failed"}) == "Running"
    finally:
        elapsed = timed_delete(kubectl, "sleeper")
    assert elapsed < PROMPT_DELETE_SECONDS, f"deleting a running pod took {elapsed:.1f} s"
    assert kubectl("get", "pod", "sleeper", check=False).returncode != 0
