"""Talking to any Kubernetes: master URLs and the cluster-manager registry, the client factory and the
pod REST layer, typed API errors, resource quantities, quota arithmetic and the app's Lease.

Everything here knows Kubernetes and nothing about Dask; every layer above may use it, and so may
:mod:`dask_k8s_backend.embedded`.
"""
