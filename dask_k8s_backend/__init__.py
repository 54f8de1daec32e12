"""dask-k8s-backend: Dask workers as Kubernetes pods, managed the way Spark manages executors.

``KubeSparkCluster`` is imported lazily (PEP 562) so that ``import dask_k8s_backend`` and the
command line stay light: distributed and the backend load only when a cluster is made.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["KubeSparkCluster", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "KubeSparkCluster":
        from .cluster import KubeSparkCluster

        return KubeSparkCluster
    raise AttributeError(f"module 'dask_k8s_backend' has no attribute {name!r}")
