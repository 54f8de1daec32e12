"""dask-k8s-backend: Dask workers as Kubernetes pods, managed the way Spark manages executors."""

__version__ = "0.1.0"
