"""The real-cluster path, exercised in CI: the integration tests against a separately started server.

``python -m dask_k8s_backend embedded`` runs in its own process as a stand-in for a real cluster;
the cluster tests then run with ``--k8s-master k8s://`` and its kubeconfig, so they take exactly
the path a real cluster takes (kubeconfig loading, TLS, token, no in-process shortcuts).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SELECTED = [
    "tests/cluster/test_cluster_embedded.py::test_scale_up_then_down_creates_and_removes_pods",
    "tests/cluster/test_cluster_embedded.py::test_close_leaves_zero_pods_checked_through_the_api",
    "tests/cluster/test_cluster_mode.py::test_create_compute_disconnect_reconnect_compute_close",
]


@pytest.mark.timeout(600)
def test_cluster_suite_passes_against_a_separately_started_server(tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    server = subprocess.Popen(
        [sys.executable, "-m", "dask_k8s_backend", "embedded", "--kubeconfig", str(kubeconfig), "--cpu", "16",
         "--memory", "32Gi"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + 60
        while not kubeconfig.exists():
            assert server.poll() is None, server.stdout.read()
            assert time.monotonic() < deadline, "the embedded server wrote no kubeconfig within 60 s"
            time.sleep(0.1)
        assert oct(kubeconfig.stat().st_mode & 0o777) == "0o600"
        env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--k8s-master", "k8s://", *SELECTED],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=540,
        )
        assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-3000:]
        assert "3 passed" in result.stdout
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            raise
    assert server.returncode == 0
