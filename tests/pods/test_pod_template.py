"""Pod template loading: every bad template is refused with the option, the file, the problem and the fix."""

from __future__ import annotations

import json
import os

import pytest

from dask_k8s_backend.pods.template import load_pod_template, worker_container_index

GOOD = "apiVersion: v1\nkind: Pod\nmetadata:\n  labels: {team: a}\nspec:\n  containers:\n  - name: side\n  - name: worker\n"


def write(tmp_path, text: str, name: str = "template.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_yaml_file_is_loaded(tmp_path):
    pod = load_pod_template(write(tmp_path, GOOD))
    assert pod["metadata"]["labels"] == {"team": "a"} and len(pod["spec"]["containers"]) == 2


def test_json_file_is_loaded(tmp_path):
    path = write(tmp_path, json.dumps({"kind": "Pod", "spec": {"containers": [{"name": "w"}]}}), "t.json")
    assert load_pod_template(str(path))["spec"]["containers"] == [{"name": "w"}]


def test_dict_is_copied_not_shared():
    source = {"kind": "Pod", "spec": {"containers": [{"name": "w"}]}}
    pod = load_pod_template(source)
    pod["spec"]["containers"][0]["name"] = "changed"
    assert source["spec"]["containers"][0]["name"] == "w"


def test_cached_file_is_returned_as_a_fresh_copy_each_time(tmp_path):
    path = write(tmp_path, GOOD)
    first = load_pod_template(path)
    first["spec"]["containers"].clear()
    assert len(load_pod_template(path)["spec"]["containers"]) == 2


def test_edited_file_is_reread(tmp_path):
    path = write(tmp_path, GOOD)
    load_pod_template(path)
    path.write_text(GOOD.replace("team: a", "team: bb"))
    os.utime(path, ns=(0, 10**18))  # make sure the modification time differs on coarse clocks
    assert load_pod_template(path)["metadata"]["labels"] == {"team": "bb"}


def test_missing_file_names_the_option_and_the_path(tmp_path):
    with pytest.raises(ValueError, match=r"k8s-backend.worker.pod-template: .*nope.yaml.* does not exist; check the path"):
        load_pod_template(tmp_path / "nope.yaml")


def test_directory_is_refused(tmp_path):
    with pytest.raises(ValueError, match="is a directory"):
        load_pod_template(tmp_path)


def test_invalid_yaml_names_the_file_and_the_line(tmp_path):
    path = write(tmp_path, "kind: Pod\nspec:\n  containers: [\n    - name: x\n")
    with pytest.raises(ValueError, match=r"template.yaml.* is not valid YAML or JSON: .*line \d+.*fix the syntax"):
        load_pod_template(path)


def test_empty_file_is_refused(tmp_path):
    with pytest.raises(ValueError, match="is empty"):
        load_pod_template(write(tmp_path, "# only a comment\n"))


def test_several_documents_are_refused(tmp_path):
    with pytest.raises(ValueError, match="holds 2 YAML documents; keep only the Pod"):
        load_pod_template(write(tmp_path, GOOD + "---\n" + GOOD))


def test_not_a_mapping_is_refused(tmp_path):
    with pytest.raises(ValueError, match="must be a mapping .*got list"):
        load_pod_template(write(tmp_path, "- a\n- b\n"))


def test_kind_other_than_pod_is_refused(tmp_path):
    with pytest.raises(ValueError, match="has kind 'Deployment', expected 'Pod'"):
        load_pod_template(write(tmp_path, "kind: Deployment\nspec:\n  containers: [{name: w}]\n"))


def test_missing_spec_is_refused(tmp_path):
    with pytest.raises(ValueError, match="has no spec"):
        load_pod_template(write(tmp_path, "kind: Pod\nmetadata: {}\n"))


@pytest.mark.parametrize("containers", ["[]", "null", "{name: w}"])
def test_no_containers_is_refused(tmp_path, containers):
    with pytest.raises(ValueError, match="has no spec.containers; add at least one container"):
        load_pod_template(write(tmp_path, f"kind: Pod\nspec:\n  containers: {containers}\n"))


def test_container_that_is_not_a_mapping_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"spec.containers\[0\] is not a mapping"):
        load_pod_template(write(tmp_path, "kind: Pod\nspec:\n  containers: [worker]\n"))


def test_container_name_not_found_lists_the_containers_and_the_option(tmp_path):
    path = write(tmp_path, GOOD)
    with pytest.raises(ValueError, match=r"pod-template-container-name: container 'wrker' is not in .*template.yaml.*\['side', 'worker'\]"):
        load_pod_template(path, container_name="wrker")


def test_dict_errors_say_it_was_a_dict():
    with pytest.raises(ValueError, match="the pod template given as a dict has kind 'Job'"):
        load_pod_template({"kind": "Job", "spec": {"containers": [{"name": "w"}]}})


def test_named_container_is_the_worker_else_the_first(tmp_path):
    pod = load_pod_template(write(tmp_path, GOOD), container_name="worker")
    assert worker_container_index(pod, "worker") == 1
    assert worker_container_index(pod, None) == 0


def test_kind_may_be_omitted():
    assert load_pod_template({"spec": {"containers": [{"name": "w"}]}})["spec"]["containers"][0]["name"] == "w"
