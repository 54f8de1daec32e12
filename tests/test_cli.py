"""The command line parses its options and hands them to the module that owns each subcommand."""

from __future__ import annotations

import subprocess
import sys
import types

from click.testing import CliRunner

from dask_k8s_backend.cli import cli


def test_python_m_help_lists_every_subcommand():
    result = subprocess.run([sys.executable, "-m", "dask_k8s_backend", "--help"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0
    for name in ("demo", "embedded", "status", "gc"):
        assert name in result.stdout


def test_demo_delegates_with_its_options(monkeypatch):
    calls = []
    module = types.ModuleType("dask_k8s_backend.ops.demo")
    module.main = lambda **kwargs: calls.append(kwargs) or 0
    monkeypatch.setitem(sys.modules, "dask_k8s_backend.ops.demo", module)
    result = CliRunner().invoke(cli, ["demo", "--master", "embedded://?nodes=2", "--workers", "3", "--quiet"])
    assert result.exit_code == 0, result.output
    assert calls == [{"master": "embedded://?nodes=2", "workers": 3, "quiet": True}]


def test_demo_exit_code_is_passed_on(monkeypatch):
    module = types.ModuleType("dask_k8s_backend.ops.demo")
    module.main = lambda **kwargs: 2
    monkeypatch.setitem(sys.modules, "dask_k8s_backend.ops.demo", module)
    assert CliRunner().invoke(cli, ["demo"]).exit_code == 2


def test_embedded_delegates_with_its_options(monkeypatch):
    calls = []
    module = types.ModuleType("dask_k8s_backend.embedded.cli")
    module.run = lambda **kwargs: calls.append(kwargs) or 0
    monkeypatch.setitem(sys.modules, "dask_k8s_backend.embedded.cli", module)
    result = CliRunner().invoke(cli, ["embedded", "--kubeconfig", "/tmp/kc", "--kubelet", "simulated", "--nodes", "2",
                                      "--cpu", "8", "--memory", "16Gi", "--port", "6443", "--no-tls"])
    assert result.exit_code == 0, result.output
    assert calls == [{"kubeconfig": "/tmp/kc", "kubelet": "simulated", "nodes": 2, "cpu": "8", "memory": "16Gi",
                      "port": 6443, "tls": False}]


def test_gc_delegates_and_turns_value_errors_into_usage_errors(monkeypatch):
    calls = []
    module = types.ModuleType("dask_k8s_backend.ops.admin")
    module.run_gc = lambda **kwargs: calls.append(kwargs) or 0

    def run_status(**kwargs):
        raise ValueError("--master 'embedded://': status looks at an existing cluster")

    module.run_status = run_status
    monkeypatch.setitem(sys.modules, "dask_k8s_backend.ops.admin", module)
    runner = CliRunner()
    assert runner.invoke(cli, ["gc", "--namespace", "ns", "--app", "a1", "--dry-run"]).exit_code == 0
    assert calls == [{"master": "k8s://", "namespace": "ns", "app_id": "a1", "dry_run": True}]
    result = runner.invoke(cli, ["status", "--master", "embedded://"])
    assert result.exit_code == 2 and "existing cluster" in result.output


def test_bad_option_values_are_rejected_by_the_parser():
    assert CliRunner().invoke(cli, ["demo", "--workers", "0"]).exit_code == 2
    assert CliRunner().invoke(cli, ["embedded", "--kubeconfig", "x", "--kubelet", "docker"]).exit_code == 2
