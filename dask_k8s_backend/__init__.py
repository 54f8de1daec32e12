"""dask-k8s-backend: Dask workers as Kubernetes pods, managed the way Spark manages executors.

Importing the package registers the ``k8s-backend`` configuration defaults with dask.config
(``config`` does ``dask.config.update_defaults`` with ``k8s-backend.yaml``), as dask-kubernetes
and dask-jobqueue do: ``dask.config.get("k8s-backend.worker.memory")`` works right after
``import dask_k8s_backend``. ``KubeSparkCluster`` is imported lazily (PEP 562) so that the
import and the command line stay light: distributed and the backend load only when a cluster
is made.
"""

from typing import Any

from . import config  # noqa: F401  (registers the k8s-backend defaults with dask.config)

__version__ = "0.1.0"
__all__ = ["KubeSparkCluster", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "KubeSparkCluster":
        from .cluster.kube_spark_cluster import KubeSparkCluster

        return KubeSparkCluster
    raise AttributeError(f"module 'dask_k8s_backend' has no attribute {name!r}")
