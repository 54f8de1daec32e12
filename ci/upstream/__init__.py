"""The upstream Kubernetes control plane as local processes (see ci/upstream_k8s.py for the command line).

Modules, in the order data flows: ``binaries`` (build or reuse the pinned binaries), ``pki``
(throwaway credentials), ``flags`` (each component's argv), ``processes`` (children with log
files), ``readiness`` (bounded waits), ``control_plane`` (the context manager tying them up).
"""
