"""Pure rules of label/field selectors and of the three PATCH formats."""

from __future__ import annotations

import pytest

from dask_k8s_backend.embedded.api.patch import apply_patch, json_patch, merge_patch, strategic_merge
from dask_k8s_backend.embedded.store.selectors import parse_field_selector, parse_label_selector
from dask_k8s_backend.embedded.status import StatusError


def obj(labels=None, phase="Running", node="n1", name="p", namespace="default"):
    return {"metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
            "spec": {"nodeName": node}, "status": {"phase": phase}}


@pytest.mark.parametrize("selector, labels, expected", [
    ("app=x", {"app": "x"}, True),
    ("app==x", {"app": "y"}, False),
    ("app!=x", {}, True),
    ("app in (x, y)", {"app": "y"}, True),
    ("app notin (x,y)", {"app": "y"}, False),
    ("app notin (x)", {}, True),
    ("app", {"app": ""}, True),
    ("!app", {"app": "x"}, False),
    ("app=x,tier in (a),!canary", {"app": "x", "tier": "a"}, True),
    ("app=x,tier in (a),!canary", {"app": "x", "tier": "a", "canary": "1"}, False),
    ("dask-k8s-backend/app-id=a1", {"dask-k8s-backend/app-id": "a1"}, True),
])
def test_label_selectors_equality_and_set_based(selector, labels, expected):
    assert parse_label_selector(selector)(obj(labels)) is expected


@pytest.mark.parametrize("bad", ["app in (x", "a b c", "app=x y", "=x"])
def test_malformed_label_selector_is_400(bad):
    with pytest.raises(StatusError) as info:
        parse_label_selector(bad)
    assert info.value.code == 400


@pytest.mark.parametrize("selector, expected", [
    ("metadata.name=p", True), ("metadata.name==q", False), ("metadata.namespace!=default", False),
    ("status.phase!=Succeeded,spec.nodeName=n1", True), ("spec.nodeName=", False),
])
def test_field_selectors_on_pods(selector, expected):
    assert parse_field_selector(selector, "pods")(obj()) is expected


def test_unsupported_field_is_400():
    with pytest.raises(StatusError) as info:
        parse_field_selector("spec.containers=x", "pods")
    assert info.value.code == 400 and "field label not supported" in info.value.message


def test_merge_patch_null_deletes_and_lists_replace():
    target = {"a": {"b": 1, "c": 2}, "l": [1, 2]}
    assert merge_patch(target, {"a": {"b": None, "d": 3}, "l": [3]}) == {"a": {"c": 2, "d": 3}, "l": [3]}


def pod_with(*containers):
    return {"spec": {"containers": [{"name": n, "image": f"{n}:1"} for n in containers]}}


def test_strategic_merge_merges_containers_by_name():
    patched = strategic_merge(pod_with("a", "b"), {"spec": {"containers": [{"name": "b", "image": "b:2"},
                                                                           {"name": "c", "image": "c:1"}]}})
    assert patched["spec"]["containers"] == [{"name": "a", "image": "a:1"}, {"name": "b", "image": "b:2"},
                                             {"name": "c", "image": "c:1"}]


def test_strategic_merge_patch_delete_directive_removes_a_list_element():
    patched = strategic_merge(pod_with("a", "b"), {"spec": {"containers": [{"name": "a", "$patch": "delete"}]}})
    assert [c["name"] for c in patched["spec"]["containers"]] == ["b"]


def test_strategic_merge_finalizers_merge_and_delete_from_primitive_list():
    target = {"metadata": {"finalizers": ["a", "b"]}}
    assert strategic_merge(target, {"metadata": {"finalizers": ["c"]}})["metadata"]["finalizers"] == ["a", "b", "c"]
    patched = strategic_merge(target, {"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}})
    assert patched["metadata"]["finalizers"] == ["b"]


def test_json_patch_operations_and_failed_test_is_422():
    doc = {"metadata": {"labels": {"a": "1"}}, "l": [1, 2]}
    patched = json_patch(doc, [{"op": "add", "path": "/metadata/labels/b", "value": "2"},
                               {"op": "remove", "path": "/metadata/labels/a"},
                               {"op": "replace", "path": "/l/0", "value": 9},
                               {"op": "add", "path": "/l/-", "value": 3},
                               {"op": "copy", "from": "/l/0", "path": "/first"},
                               {"op": "move", "from": "/first", "path": "/moved"},
                               {"op": "test", "path": "/moved", "value": 9}])
    assert patched == {"metadata": {"labels": {"b": "2"}}, "l": [9, 2, 3], "moved": 9}
    assert doc == {"metadata": {"labels": {"a": "1"}}, "l": [1, 2]}
    with pytest.raises(StatusError) as info:
        json_patch(doc, [{"op": "test", "path": "/l/0", "value": 5}])
    assert info.value.code == 422


def test_unknown_patch_type_is_415():
    with pytest.raises(StatusError) as info:
        apply_patch("text/plain", {}, {})
    assert info.value.code == 415 and "apply-patch" not in info.value.message


def test_server_side_apply_is_refused_with_the_way_out():
    with pytest.raises(StatusError) as info:
        apply_patch("application/apply-patch+yaml", {}, {})
    assert info.value.code == 415 and "client-side `kubectl apply`" in info.value.message
