"""Shared pytest setup: ``--run-slow`` for benchmarks/soaks, and isolation of dask.config."""

from __future__ import annotations

import copy
import os

import dask.config
import pytest

from k8s_helpers import one_server_skips


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", default=False,
                     help="also run tests marked slow (benchmarks, soaks)")
    # Like Spark's spark.kubernetes.test.master: run the cluster integration tests against any
    # Kubernetes (kind, minikube, EKS, ...) instead of the embedded one.
    parser.addoption("--k8s-master", default=os.environ.get("DASK_K8S_TEST_MASTER"),
                     help="k8s://... master for tests/cluster (default: an embedded Kubernetes per module); "
                          "credentials come from KUBECONFIG or --k8s-kubeconfig")
    parser.addoption("--k8s-kubeconfig", default=os.environ.get("DASK_K8S_TEST_KUBECONFIG"),
                     help="kubeconfig for --k8s-master")
    parser.addoption("--k8s-image", default=os.environ.get("DASK_K8S_TEST_IMAGE"),
                     help="worker image for --k8s-master (must match this environment's dask/distributed)")
    parser.addoption("--k8s-namespace", default=os.environ.get("DASK_K8S_TEST_NAMESPACE", "default"),
                     help="namespace for --k8s-master")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    """List the tests skipped because they can run on one server only, with why: CI prints this list."""
    skips = one_server_skips(terminalreporter.stats.get("skipped", []))
    if not skips:
        return
    terminalreporter.section("runs on one server only")
    for nodeid, reason in skips:
        terminalreporter.write_line(f"{nodeid}: {reason}")


@pytest.fixture
def clean_dask_config():
    """Restore the global dask configuration after a test that changes it (or the environment)."""
    saved = copy.deepcopy(dask.config.config)
    yield dask.config.config
    dask.config.config.clear()
    dask.config.config.update(saved)
