"""The REST request path of the embedded API server: one tornado handler per request.

:class:`~.handler.ApiHandler` authenticates, sets the APF headers (:mod:`.flow_control`), maybe
injects a fault, routes the path (:mod:`.routes`) and runs a verb (:mod:`.resource_verbs`,
:mod:`.streaming`) with the options it parsed (:mod:`.request_parsing`). The server that owns the
event loop and the sockets is :mod:`dask_k8s_backend.embedded.api.apiserver`; what the verbs serve
(discovery, OpenAPI, tables, patches, authorization, watches, logs) are its sibling modules.
"""
