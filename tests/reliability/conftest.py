"""Fixtures of the reliability suite: an embedded Kubernetes with fault injection, leak checks.

Helpers and the scenarios themselves live in :mod:`.scenarios` (``ci/chaos.py`` runs them too).
"""

from __future__ import annotations

import pytest

from .scenarios import PodCreations, wait_until, worker_processes


@pytest.fixture(scope="module")
def kube():
    from dask_k8s_backend.embedded.cluster import EmbeddedKubernetes

    with EmbeddedKubernetes(kubelet="process", nodes=2, cpu="8", memory="16Gi", faults=True) as k:
        yield k


@pytest.fixture
def creations(kube):
    """Every worker pod created during the test (store listener; immune to injected faults)."""
    recorder = PodCreations()
    unsubscribe = kube.store.add_listener(recorder)
    yield recorder
    unsubscribe()


@pytest.fixture(autouse=True)
def no_leaked_worker_processes():
    """Every test must end with no worker process of ours still running."""
    yield
    wait_until(lambda: not worker_processes(), timeout=30, what="worker processes to exit")
