"""A worker image with other dask/distributed versions is refused at registration, with one clear error.

The worker pod really starts (process kubelet) and really registers: a ``sitecustomize`` on the
pod's PYTHONPATH makes ``distributed.versions.get_versions`` report other versions, as an image
built with other releases would. The scheduler's gatekeeper must refuse it, name both versions
and the image, and stop replacing workers that can never join.
"""

from __future__ import annotations

import textwrap

import pytest

from dask_k8s_backend import KubeSparkCluster
from dask_k8s_backend.cluster.waiting import ExecutorFailuresError

from .conftest import cluster_kwargs, worker_pods

pytestmark = pytest.mark.timeout(120)

OTHER = "2000.1.0"


@pytest.fixture
def other_versions(tmp_path):
    """A PYTHONPATH entry whose sitecustomize makes workers report dask and distributed as OTHER."""
    (tmp_path / "sitecustomize.py").write_text(textwrap.dedent(f"""
        import distributed.versions as _versions

        _real = _versions.get_versions

        def _other(*args, **kwargs):
            versions = _real(*args, **kwargs)
            versions["packages"] = dict(versions["packages"], dask="{OTHER}", distributed="{OTHER}")
            return versions

        _versions.get_versions = _other
        import distributed.worker as _worker  # imported by distributed/__init__ with the real function

        _worker.get_versions = _other
    """))
    return str(tmp_path)


def test_a_worker_with_other_dask_versions_is_refused_naming_both_versions_and_the_image(kube, core_api, other_versions):
    import dask
    import distributed

    image = "example.org/team/dask:old"
    kwargs = cluster_kwargs(kube, image=image, env={"PYTHONPATH": other_versions}, executor={"max-failures": 5})  # 4 replacements allowed
    with KubeSparkCluster(**kwargs) as cluster:
        cluster.scale(1)
        with pytest.raises(ExecutorFailuresError) as info:
            cluster.wait_for_workers(1, timeout=60)
        message = str(info.value)
        assert (f"image {image!r} (executor 1) runs dask {OTHER} and distributed {OTHER}, but the scheduler runs "
                f"dask {dask.__version__} and distributed {distributed.__version__}") in message
        assert f"Use an image with dask=={dask.__version__} and distributed=={distributed.__version__}" in message
        assert "exited with code" not in message  # not the obscure symptom
        assert cluster.scheduler.workers == {}
        refused = cluster.scheduler.plugins["k8s-backend"].gatekeeper.refused
        assert [name for name, _ in refused] == ["1"]  # blocked at once: no replacement pods
        status = cluster.refresh_status()
        assert status.pods_created == 1 and status.errors["default"] in message
    assert worker_pods(core_api, kube.namespace) == []
