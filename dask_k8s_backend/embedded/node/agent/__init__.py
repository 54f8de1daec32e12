"""The node agent: a kubelet that joins any API server over HTTP (``python -m dask_k8s_backend node``).

Layers, bottom up: :mod:`.http` (JSON requests and watch streams from a kubeconfig, errors
translated once), :mod:`.reflector` (list then watch this node's pods), :mod:`.lease` (the node
heartbeat), :mod:`.api_transport` (the kubelet's :class:`~dask_k8s_backend.embedded.node.transport.Transport`
over HTTP), :mod:`.tokens` and :mod:`.mounts` (service-account tokens seen at the in-cluster
path), :mod:`.server` (the kubelet HTTPS endpoint the API server proxies ``pods/log`` to),
:mod:`.options` (CLI input checked before anything is created) and :mod:`.agent` (wires them and
runs in the foreground). The pod runtimes are the embedded ones: one implementation, two transports.
"""
