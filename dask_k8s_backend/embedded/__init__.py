"""An embedded Kubernetes for laptops and tests: API server (:mod:`.api`), object store (:mod:`.store`),
scheduler (:mod:`.control`) and kubelet (:mod:`.node`), wired by :mod:`.cluster`.

A side tree: it imports nothing of ours but ``config``, ``labels`` and :mod:`dask_k8s_backend.kube`, and the
rest of the package reaches it only through the ``embedded://`` cluster manager's entry point and the CLI.
"""
