"""The API server the preflight tests run on: the embedded Kubernetes, or upstream's with ``--k8s-kubeconfig``.

Both kinds offer the tests one face (:class:`EmbeddedServer`, :class:`UpstreamServer`): ``kind``,
``url``, ``kubeconfig`` (the admin's), ``namespace`` (where the restricted identities' namespaced
rules apply), ``kubeconfig_for(user)``, ``user_name(user)`` (the name the server authenticates
that user as, which its 403 messages show) and ``create_namespace`` / ``delete_namespace``.

Restricted users are given as ``{name: [rule, ...]}`` in the YAML shape of Role rules; a rule
with ``namespaces`` applies in the test namespace, one without applies cluster-wide.

* Embedded: the users are registered with ``EmbeddedKubernetes(users=...)``; the namespace is
  ``default``. Names in ``service_accounts`` are registered as ``system:serviceaccount:default:<name>``
  (what a SubjectAccessReview asks about) and get a ServiceAccount object.
* Upstream: every user is made for real through the API with the admin kubeconfig, in a fresh
  namespace: a ServiceAccount, a Role with its namespaced rules and a RoleBinding, a ClusterRole
  and ClusterRoleBinding for its cluster-wide rules, and a kubeconfig with a TokenRequest token for
  the same server and CA. A user given ``manifests`` (deploy/rbac.yaml) is instead the ServiceAccount
  of those manifests, applied as they are in the test namespace: bound to exactly the shipped Role.
  Closing deletes the cluster-wide objects and the namespace (with all in it).

A test that can run on one kind only calls :func:`only_on`; tests/conftest.py lists those skips at
the end of the run.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes import config as kube_config
from kubernetes import utils as kube_utils

from dask_k8s_backend.embedded.cluster import EmbeddedKubernetes
from dask_k8s_backend.embedded.api.tls import write_kubeconfig
from dask_k8s_backend.cluster.preflight_access import service_account_user

from k8s_helpers import one_server_only_reason, wait_until

RBAC_GROUP = "rbac.authorization.k8s.io"
TOKEN_SECONDS = 3600  # longer than any preflight module runs
ACCOUNT_TIMEOUT = 60.0  # the serviceaccount controller makes a new namespace's `default` in well under a second


def only_on(kube: Any, kind: str, why: str) -> None:
    """Skip the calling test unless it runs on ``kind`` ("embedded" or "upstream"), saying why."""
    if kube.kind != kind:
        pytest.skip(one_server_only_reason(kind, why))


class EmbeddedServer:
    """The embedded Kubernetes as the preflight tests see it (its users are plain user names)."""

    kind = "embedded"
    namespace = "default"

    def __init__(self, embedded: EmbeddedKubernetes, service_accounts: Sequence[str] = ()) -> None:
        self.embedded = embedded
        self._service_accounts = set(service_accounts)

    @property
    def url(self) -> str:
        return self.embedded.url

    @property
    def kubeconfig(self) -> str:
        return self.embedded.kubeconfig

    def user_name(self, user: str) -> str:
        if user in self._service_accounts:
            return service_account_user(self.namespace, user)
        return user

    def kubeconfig_for(self, user: str) -> str:
        return self.embedded.kubeconfig_for(self.user_name(user))

    def create_namespace(self, core_api: Any, name: str) -> None:
        core_api.create_namespace({"metadata": {"name": name}})

    def delete_namespace(self, core_api: Any, name: str) -> None:
        core_api.delete_namespace(name)


class UpstreamServer:
    """An upstream kube-apiserver whose restricted users are ServiceAccounts bound to Roles made for them."""

    kind = "upstream"

    def __init__(self, admin_kubeconfig: str, work_dir: Path, prefix: str = "preflight") -> None:
        self.kubeconfig = admin_kubeconfig
        self.api = kube_config.new_client_from_config(config_file=admin_kubeconfig)
        self.core = k8s.CoreV1Api(self.api)
        self.rbac = k8s.RbacAuthorizationV1Api(self.api)
        self.namespace = f"{prefix}-{uuid.uuid4().hex[:6]}"
        self._work_dir = work_dir
        self._kubeconfigs: dict[str, str] = {}
        self._accounts: dict[str, str] = {}  # user -> the ServiceAccount of the manifests it was given
        self._cluster_objects: list[str] = []  # ClusterRole and ClusterRoleBinding names (the same name)

    @property
    def url(self) -> str:
        return self.api.configuration.host

    def account(self, user: str) -> str:
        """The ServiceAccount that authenticates as ``user``."""
        return self._accounts.get(user, user)

    def user_name(self, user: str) -> str:
        return service_account_user(self.namespace, self.account(user))

    def start(self, users: Mapping[str, list[dict]], service_accounts: Sequence[str] = (),
              manifests: Mapping[str, Path] | None = None) -> None:
        self.create_namespace(self.core, self.namespace)
        for name in service_accounts:
            if name not in users:
                self.core.create_namespaced_service_account(self.namespace, {"metadata": {"name": name}})
        for name, path in (manifests or {}).items():
            self.apply_manifests(name, path)
        for name, rules in users.items():
            if name not in self._accounts:
                self.add_user(name, rules)

    def apply_manifests(self, user: str, path: Path) -> None:
        """Create the objects of ``path`` (a ServiceAccount, a Role, a RoleBinding) in the test namespace, as a
        user deploying us would; ``user`` authenticates as their ServiceAccount."""
        for doc in yaml.safe_load_all(path.read_text()):
            doc["metadata"]["namespace"] = self.namespace
            for subject in doc.get("subjects") or []:
                subject["namespace"] = self.namespace
            if doc["kind"] == "ServiceAccount":
                self._accounts[user] = doc["metadata"]["name"]
            kube_utils.create_from_dict(self.api, doc, namespace=self.namespace)
        if user not in self._accounts:
            raise ValueError(f"{path} has no ServiceAccount for user {user!r} to authenticate as; add one")

    def add_user(self, name: str, rules: list[dict]) -> None:
        """A ServiceAccount ``name`` bound to exactly ``rules`` (namespaced ones in a Role, the rest in a ClusterRole)."""
        self.core.create_namespaced_service_account(self.namespace, {"metadata": {"name": name}})
        subject = [{"kind": "ServiceAccount", "name": name, "namespace": self.namespace}]
        namespaced = [role_rule(r) for r in rules if r.get("namespaces")]
        cluster_wide = [role_rule(r) for r in rules if not r.get("namespaces")]
        if namespaced:
            self.rbac.create_namespaced_role(self.namespace, {"metadata": {"name": name}, "rules": namespaced})
            self.rbac.create_namespaced_role_binding(self.namespace, binding(name, "Role", subject))
        if cluster_wide:
            global_name = f"{self.namespace}-{name}"
            self._cluster_objects.append(global_name)
            self.rbac.create_cluster_role({"metadata": {"name": global_name}, "rules": cluster_wide})
            self.rbac.create_cluster_role_binding(binding(global_name, "ClusterRole", subject))

    def kubeconfig_for(self, user: str) -> str:
        """A kubeconfig (0600) with a bearer token of ``user``'s ServiceAccount (TokenRequest), made once."""
        if user not in self._kubeconfigs:
            request = {"spec": {"expirationSeconds": TOKEN_SECONDS}}
            account = self.account(user)
            token = self.core.create_namespaced_service_account_token(account, self.namespace, request).status.token
            ca_file = self.api.configuration.ssl_ca_cert  # the admin kubeconfig's CA, written out by the client
            path = write_kubeconfig(self._work_dir / f"kubeconfig-{user}", server=self.url,
                                    ca_file=Path(ca_file) if ca_file else None, token=token, name=user)
            self._kubeconfigs[user] = str(path)
        return self._kubeconfigs[user]

    def create_namespace(self, core_api: Any, name: str) -> None:
        """Create ``name`` and wait for its ``default`` ServiceAccount: until the serviceaccount controller
        made it, ServiceAccount admission refuses every pod of the namespace."""
        core_api.create_namespace({"metadata": {"name": name}})
        wait_until(lambda: any(a.metadata.name == "default"
                               for a in core_api.list_namespaced_service_account(name).items),
                   timeout=ACCOUNT_TIMEOUT, interval=0.1, what=f"namespace {name}'s default service account")

    def delete_namespace(self, core_api: Any, name: str) -> None:
        core_api.delete_namespace(name)  # finished in the background by the namespace controller

    def close(self) -> None:
        """Delete what :meth:`start` made; each step runs even if one before it failed, and the first failure
        (other than already gone) is raised at the end: a leftover ClusterRole would outlive the run."""
        steps = [(self.rbac.delete_cluster_role_binding, name) for name in self._cluster_objects]
        steps += [(self.rbac.delete_cluster_role, name) for name in self._cluster_objects]
        steps.append((self.core.delete_namespace, self.namespace))
        failures = []
        for delete, name in steps:
            try:
                delete(name)
            except k8s.ApiException as e:
                if e.status != 404:
                    failures.append(e)
        self.api.close()
        if failures:
            raise failures[0]


def role_rule(rule: Mapping[str, Any]) -> dict[str, Any]:
    """A test's rule as an RBAC PolicyRule: the core group by default, no ``namespaces`` key."""
    out = {"apiGroups": list(rule.get("apiGroups", [""])), "resources": list(rule["resources"]),
           "verbs": list(rule["verbs"])}
    if rule.get("resourceNames"):
        out["resourceNames"] = list(rule["resourceNames"])
    return out


def binding(name: str, kind: str, subjects: list[dict]) -> dict[str, Any]:
    return {"metadata": {"name": name}, "subjects": subjects,
            "roleRef": {"apiGroup": RBAC_GROUP, "kind": kind, "name": name}}


@contextmanager
def api_server(request: pytest.FixtureRequest, users: Mapping[str, list[dict]], service_accounts: Sequence[str] = (),
               manifests: Mapping[str, Path] | None = None, **embedded: Any) -> Iterator[EmbeddedServer | UpstreamServer]:
    """Upstream's API server when pytest got ``--k8s-kubeconfig``, else an EmbeddedKubernetes(**embedded).

    ``manifests``: on upstream, users made from manifest files instead of their rules (which the
    embedded server registers, having no RoleBindings).
    """
    kubeconfig = request.config.getoption("--k8s-kubeconfig")
    if kubeconfig:
        with tempfile.TemporaryDirectory(prefix="preflight-kubeconfigs-") as work_dir:
            server = UpstreamServer(kubeconfig, Path(work_dir))
            try:
                server.start(users, service_accounts, manifests)
                yield server
            finally:
                server.close()
        return
    registered = {service_account_user(EmbeddedServer.namespace, n) if n in service_accounts else n: rules
                  for n, rules in users.items()}
    with EmbeddedKubernetes(users=registered, **embedded) as kube:
        for name in service_accounts:
            kube.store.create("serviceaccounts", EmbeddedServer.namespace, {
                "apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": {"name": name, "namespace": EmbeddedServer.namespace}})
        yield EmbeddedServer(kube, service_accounts)


def create_quota(core_api: Any, namespace: str, hard: dict[str, str], name: str = "compute") -> None:
    """Create a ResourceQuota and wait until the quota controller has filled its status.

    Until then upstream's quota admission may not enforce it (seen here: a pod admitted next to a
    just-created ``pods: 0`` quota) or answer "status unknown for quota"; the embedded controller
    fills the status too, so the wait holds on both.
    """
    core_api.create_namespaced_resource_quota(namespace, {"metadata": {"name": name}, "spec": {"hard": hard}})

    def counted() -> bool:
        status = core_api.read_namespaced_resource_quota(name, namespace).status  # None or empty until then
        return status is not None and set(status.hard or {}) == set(hard)

    wait_until(counted, timeout=30, interval=0.05, what=f"ResourceQuota {name}'s status from the quota controller")
