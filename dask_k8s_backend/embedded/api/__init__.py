"""The embedded API server (``apiserver``, its request path in ``rest/``): discovery and OpenAPI, protobuf
and table encodings, authorization, admission, injected faults, watches, patches, pod logs and its TLS material.
"""
