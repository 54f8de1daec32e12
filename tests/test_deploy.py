"""deploy/ stays true to the code: manifests parse, the Role covers every API call, versions match."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

import yaml

import dask_k8s_backend

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dask_k8s_backend"

# Calls of the official client's CoreV1Api found in the code, e.g. ``core.delete_collection_namespaced_pod(``.
CALL = re.compile(r"\.(create|list|read|delete_collection|delete|patch|replace)_namespaced_([a-z_]+?)(_log|_status)?\b")
VERBS = {"create": "create", "list": "list", "read": "get", "delete": "delete", "delete_collection": "deletecollection", "patch": "patch", "replace": "update"}
PLURALS = {"pod": "pods", "service": "services", "event": "events", "secret": "secrets", "config_map": "configmaps",
           "resource_quota": "resourcequotas", "limit_range": "limitranges", "service_account": "serviceaccounts"}
# The embedded Kubernetes serves these calls itself; it is not something a real cluster's Role grants.
EXCLUDED_DIRS = ("embedded",)


def api_calls_in_code() -> set[tuple[str, str]]:
    """(verb, resource) for every namespaced CoreV1Api call in the package, watches included."""
    found: set[tuple[str, str]] = set()
    for path in PACKAGE.rglob("*.py"):
        if any(part in EXCLUDED_DIRS for part in path.relative_to(PACKAGE).parts):
            continue
        text = path.read_text()
        for match in CALL.finditer(text):
            verb, resource, sub = match.group(1), match.group(2), match.group(3)
            plural = PLURALS.get(resource, resource + "s")
            if sub == "_log":
                plural += "/log"
            elif sub == "_status":
                plural += "/status"
            found.add((VERBS[verb], plural))
            call_tail = text[match.end(): match.end() + 300]
            if verb == "list" and re.search(r"watch\s*=\s*True", call_tail):
                found.add(("watch", plural))
    return found


def role_rules() -> set[tuple[str, str]]:
    docs = list(yaml.safe_load_all((ROOT / "deploy" / "rbac.yaml").read_text()))
    role = next(d for d in docs if d["kind"] == "Role")
    return {(verb, res) for rule in role["rules"] for res in rule["resources"] for verb in rule["verbs"]}


def test_manifests_parse_and_bind_the_role_to_the_service_account():
    docs = list(yaml.safe_load_all((ROOT / "deploy" / "rbac.yaml").read_text()))
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) == {"ServiceAccount", "Role", "RoleBinding"}
    binding = kinds["RoleBinding"]
    assert binding["roleRef"]["name"] == kinds["Role"]["metadata"]["name"]
    assert binding["subjects"][0]["name"] == kinds["ServiceAccount"]["metadata"]["name"]
    template = yaml.safe_load((ROOT / "deploy" / "pod-template.yaml").read_text())
    assert template["kind"] == "Pod" and template["spec"]["containers"]


def test_role_covers_every_api_call_the_code_makes():
    calls = api_calls_in_code()
    assert ("create", "pods") in calls and ("watch", "pods") in calls, calls  # the scan itself works
    missing = calls - role_rules()
    assert not missing, f"deploy/rbac.yaml lacks {sorted(missing)}"


def test_role_grants_nothing_the_code_does_not_use():
    unused = role_rules() - api_calls_in_code()
    assert not unused, f"deploy/rbac.yaml grants unused permissions {sorted(unused)}"


def test_dockerfile_installs_the_version_in_setup_cfg():
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    declared = re.search(r"ARG DASK_K8S_BACKEND_VERSION=(\S+)", dockerfile).group(1)
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert cfg["metadata"]["version"] == "attr: dask_k8s_backend.__version__"
    assert declared == dask_k8s_backend.__version__
    assert "USER 1000" in dockerfile and "pip install --no-cache-dir ." in dockerfile
