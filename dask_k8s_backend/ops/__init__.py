"""Operator commands behind ``python -m dask_k8s_backend``: ``status``, ``gc`` (:mod:`.admin`) and ``demo``.
"""
