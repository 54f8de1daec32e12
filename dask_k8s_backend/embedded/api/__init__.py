"""The embedded API server: HTTP routes, discovery and OpenAPI, protobuf and table encodings,
authorization, admission, injected faults, watches, patches, pod logs and its TLS material.
"""
