"""In the notebook user's process: :class:`~.kube_spark_cluster.KubeSparkCluster` and what it needs to
start, wait for, show and adapt a cluster (cluster deploy mode, preflight checks, the TLS Secret).

The top of the layers: only the entry modules (``dask_k8s_backend``, ``cli``) and :mod:`~dask_k8s_backend.ops`
import it.
"""
