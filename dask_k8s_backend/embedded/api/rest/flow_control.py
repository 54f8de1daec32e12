"""API Priority and Fairness as clients see it: which flow a request is classified to, and the headers naming it.

Apart from the handler because clients (ours with ``api.rate-limit: auto``, controller-runtime,
Flux) decide from these headers whether to drop their own rate limit, so the flows and header
names are a contract; the server gives each flow one uid for its life (:mod:`..apiserver`).
"""

from __future__ import annotations

from .. import authz
from .routes import PUBLIC_PATHS

#: kube-apiserver's APF response headers: the FlowSchema and PriorityLevelConfiguration a request was classified to.
FLOW_SCHEMA_HEADER = "X-Kubernetes-PF-FlowSchema-UID"
PRIORITY_LEVEL_HEADER = "X-Kubernetes-PF-PriorityLevel-UID"
FLOWS = ("exempt", "global-default")


def flow_of(identity: authz.Identity, path: str) -> str:
    """The upstream default FlowSchema (and priority level of the same name) of a request.

    system:masters (our admin token) and health probes are ``exempt``; other users fall to
    ``global-default`` (upstream's catch-all for authenticated users that no narrower schema matches).
    """
    if identity.rules is None or path in PUBLIC_PATHS:
        return "exempt"
    return "global-default"
