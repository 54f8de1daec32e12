"""Rules of the executor pod builder: each feature step alone, then the whole builder."""

from __future__ import annotations

import copy
import dataclasses
import re

import pytest

from dask_k8s_backend import labels
from dask_k8s_backend.config import Settings, WorkerSettings
from dask_k8s_backend.pods.builder import (
    FEATURE_STEPS,
    AppSpec,
    ExecutorPodContext,
    basic_step,
    build_executor_pod,
    env_step,
    executor_pod_name,
    format_cpu,
    image_step,
    label_value,
    owner_reference_step,
    pod_memory_bytes,
    pod_name_prefix,
    resources_step,
    scheduling_step,
    security_context_step,
    service_account_step,
    worker_command_step,
)

GiB, MiB = 1 << 30, 1 << 20
APP = AppSpec(app_id="a1b2c3", app_name="analytics", namespace="team-ns")
ADDRESS = "tcp://10.1.2.3:8786"
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def settings(**worker: object) -> Settings:
    return Settings(worker=WorkerSettings(**worker))  # type: ignore[arg-type]


def ctx(s: Settings | None = None, **kw: object) -> ExecutorPodContext:
    return ExecutorPodContext(executor_id=kw.pop("executor_id", 7), app=kw.pop("app", APP),  # type: ignore[arg-type]
                              settings=s or Settings(), scheduler_address=ADDRESS, **kw)  # type: ignore[arg-type]


def empty_pod(*containers: dict) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {}, "spec": {"containers": list(containers) or [{"name": "w"}]}}


def env_of(pod: dict, index: int = 0) -> dict[str, dict]:
    return {e["name"]: e for e in pod["spec"]["containers"][index]["env"]}


# ----------------------------------------------------------------------------- names
def test_pod_name_is_prefix_exec_id():
    assert executor_pod_name("analytics", 7) == "analytics-exec-7"


def test_app_name_is_lowercased_and_invalid_characters_become_single_dashes():
    assert pod_name_prefix("My Fancy_App!!  v2") == "my-fancy-app-v2"


def test_name_prefix_starts_and_ends_alphanumeric():
    assert pod_name_prefix("--__Data.Team__--") == "data-team"


def test_long_app_name_truncates_prefix_so_name_fits_63_characters():
    name = executor_pod_name("x" * 200, 123456)
    assert len(name) == 63 and name.endswith("-exec-123456") and DNS_LABEL.match(name)


def test_truncation_never_leaves_a_dash_before_the_suffix():
    name = executor_pod_name("a" * 54 + "-bbbbbbbbbb", 1)  # the cut falls right after the dash
    assert "--" not in name and DNS_LABEL.match(name) and len(name) <= 63


def test_app_name_without_usable_characters_gives_dask_prefix():
    assert executor_pod_name("___!!!", 3) == "dask-exec-3"


@pytest.mark.parametrize("app_name", ["ÄÖÜ émoji 🎉 app", "UPPER", "a" * 63, "1-starts-with-digit", "-", "x.y.z"])
def test_every_app_name_gives_a_dns_label(app_name):
    for executor_id in (1, 10**9):
        name = executor_pod_name(app_name, executor_id)
        assert DNS_LABEL.match(name) and len(name) <= 63, name


def test_prefix_with_suffix_leaves_room_for_the_suffix():
    prefix = pod_name_prefix("y" * 100, suffix="-scheduler")
    assert len(prefix) + len("-scheduler") == 63


def test_label_value_is_valid_for_any_app_name():
    value = label_value("  My App / prod!! " + "z" * 80)
    assert len(value) <= 63 and re.match(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$", value)


# ----------------------------------------------------------------------------- basic step
def test_basic_step_sets_name_namespace_hostname_and_restart_policy_never():
    pod = basic_step(empty_pod(), ctx())
    assert pod["metadata"]["name"] == "analytics-a1b2c-exec-7"
    assert pod["metadata"]["namespace"] == "team-ns"
    assert pod["spec"]["hostname"] == "analytics-a1b2c-exec-7"
    assert pod["spec"]["restartPolicy"] == "Never"


def test_basic_step_sets_the_backend_labels():
    pod = basic_step(empty_pod(), ctx(group="gpu"))
    assert pod["metadata"]["labels"] == {
        labels.APP_ID: "a1b2c3", labels.APP_NAME: "analytics", labels.ROLE: labels.ROLE_WORKER,
        labels.EXECUTOR_ID: "7", labels.GROUP: "gpu",
    }


def test_user_labels_and_annotations_are_added_but_cannot_override_backend_labels():
    s = settings(labels={"team": "data", labels.APP_ID: "hijack"}, annotations={"note": "x"})
    pod = basic_step(empty_pod(), ctx(s))
    assert pod["metadata"]["labels"]["team"] == "data"
    assert pod["metadata"]["labels"][labels.APP_ID] == "a1b2c3"
    assert pod["metadata"]["annotations"] == {"note": "x"}


def test_template_labels_kept_and_user_labels_win_over_them():
    template = empty_pod()
    template["metadata"] = {"labels": {"team": "old", "tier": "batch"}, "annotations": {"a": "1"}}
    pod = basic_step(template, ctx(settings(labels={"team": "new"}, annotations={"b": "2"})))
    assert pod["metadata"]["labels"]["tier"] == "batch" and pod["metadata"]["labels"]["team"] == "new"
    assert pod["metadata"]["annotations"] == {"a": "1", "b": "2"}


def test_basic_step_owns_restart_policy_and_drops_server_fields_of_the_template():
    template = empty_pod()
    template["metadata"] = {"name": "copied", "uid": "u", "resourceVersion": "9", "creationTimestamp": "t"}
    template["spec"].update(restartPolicy="Always", nodeName="node-1")
    template["status"] = {"phase": "Running"}
    pod = basic_step(template, ctx())
    assert pod["metadata"]["name"] == "analytics-a1b2c-exec-7"
    assert not {"uid", "resourceVersion", "creationTimestamp"} & set(pod["metadata"])
    assert pod["spec"]["restartPolicy"] == "Never" and "nodeName" not in pod["spec"] and "status" not in pod


def test_steps_never_modify_their_input():
    template = empty_pod({"name": "w", "env": [{"name": "A", "value": "1"}], "resources": {"limits": {"cpu": "9"}}})
    template["metadata"] = {"labels": {"x": "y"}}
    template["spec"]["tolerations"] = [{"key": "k", "operator": "Exists"}]
    before = copy.deepcopy(template)
    s = settings(labels={"l": "v"}, env={"B": "2"}, node_selector={"n": "1"}, tolerations=[{"key": "t", "operator": "Exists"}],
                 service_account="sa", resources={"example.com/gpu": 1})
    for step in FEATURE_STEPS:
        step(template, ctx(s, owner={"apiVersion": "v1", "kind": "Pod", "name": "s", "uid": "u"}))
    assert template == before


# ----------------------------------------------------------------------------- worker command
def test_worker_command_names_the_executor_and_uses_the_pod_ip():
    s = settings(cores=4, memory=2 * GiB, death_timeout=45.0)
    container = worker_command_step(empty_pod(), ctx(s))["spec"]["containers"][0]
    assert container["command"] == ["dask", "worker"]
    assert container["args"] == [
        ADDRESS, "--name", "7", "--nthreads", "4", "--memory-limit", str(2 * GiB),
        "--death-timeout", "45", "--host", "$(POD_IP)", "--no-dashboard",
    ]


@pytest.mark.parametrize(("cores", "nthreads"), [(0.25, "1"), (1.0, "1"), (2.5, "2"), (8, "8")])
def test_nthreads_is_a_whole_number_at_least_one(cores, nthreads):
    args = worker_command_step(empty_pod(), ctx(settings(cores=cores)))["spec"]["containers"][0]["args"]
    assert args[args.index("--nthreads") + 1] == nthreads


def test_worker_resources_are_advertised_to_dask():
    args = worker_command_step(empty_pod(), ctx(settings(resources={"GPU": 1, "MEM": 1e9})))["spec"]["containers"][0]["args"]
    assert args[args.index("--resources") + 1] == "GPU=1,MEM=1e+09"


def test_extra_worker_args_are_appended():
    args = worker_command_step(empty_pod(), ctx(worker_args=("--nworkers", "2")))["spec"]["containers"][0]["args"]
    assert args[-2:] == ["--nworkers", "2"]


def test_worker_command_replaces_template_command_only_in_the_worker_container():
    template = empty_pod({"name": "sidecar", "command": ["proxy"]}, {"name": "w", "command": ["bash"], "args": ["-c", "x"]})
    pod = worker_command_step(template, ctx(container_index=1))
    assert pod["spec"]["containers"][0]["command"] == ["proxy"]
    assert pod["spec"]["containers"][1]["command"] == ["dask", "worker"]


# ----------------------------------------------------------------------------- env
def test_env_has_identity_and_downward_api_variables():
    env = env_of(env_step(empty_pod(), ctx()))
    assert env["DASK_K8S_EXECUTOR_ID"]["value"] == "7"
    assert env["DASK_K8S_APP_ID"]["value"] == "a1b2c3"
    assert env["DASK_SCHEDULER_ADDRESS"]["value"] == ADDRESS
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


def test_pod_ip_is_defined_before_user_variables_that_may_reference_it():
    pod = env_step(empty_pod(), ctx(settings(env={"MY_ADDR": "$(POD_IP):9000"})))
    names = [e["name"] for e in pod["spec"]["containers"][0]["env"]]
    assert names.index("POD_IP") < names.index("MY_ADDR")


def test_user_env_overrides_template_env_but_not_backend_env():
    template = empty_pod({"name": "w", "env": [{"name": "A", "value": "template"}, {"name": "KEEP", "value": "k"},
                                               {"name": "DASK_K8S_EXECUTOR_ID", "value": "99"}]})
    pod = env_step(template, ctx(settings(env={"A": "user", "DASK_SCHEDULER_ADDRESS": "tcp://evil:1"})))
    env = env_of(pod)
    assert env["A"]["value"] == "user" and env["KEEP"]["value"] == "k"
    assert env["DASK_K8S_EXECUTOR_ID"]["value"] == "7" and env["DASK_SCHEDULER_ADDRESS"]["value"] == ADDRESS
    names = [e["name"] for e in pod["spec"]["containers"][0]["env"]]
    assert len(names) == len(set(names))


def test_the_nanny_forks_its_worker_unless_the_template_or_the_user_says_otherwise():
    key = "DASK_DISTRIBUTED__WORKER__MULTIPROCESSING_METHOD"
    assert env_of(env_step(empty_pod(), ctx()))[key]["value"] == "fork"
    template = empty_pod({"name": "w", "env": [{"name": key, "value": "forkserver"}]})
    assert env_of(env_step(template, ctx()))[key]["value"] == "forkserver"
    assert env_of(env_step(template, ctx(settings(env={key: "spawn"}))))[key]["value"] == "spawn"


# ----------------------------------------------------------------------------- resources
def test_memory_overhead_follows_sparks_example_1g_plus_384m_is_1408mi():
    assert pod_memory_bytes(1 * GiB, 0.1, 384 * MiB) == 1408 * MiB


def test_memory_overhead_uses_the_factor_when_it_exceeds_the_minimum():
    assert pod_memory_bytes(10 * GiB, 0.1, 384 * MiB) == 10 * GiB + 1024 * MiB


def test_memory_is_rounded_up_to_whole_mib():
    assert pod_memory_bytes(1000, 0.0, 0) == MiB


def test_memory_request_equals_limit_including_overhead():
    resources = resources_step(empty_pod(), ctx(settings(memory=GiB)))["spec"]["containers"][0]["resources"]
    assert resources["requests"]["memory"] == resources["limits"]["memory"] == "1408Mi"


def test_cpu_request_is_cores_with_no_limit_by_default():
    resources = resources_step(empty_pod(), ctx(settings(cores=2)))["spec"]["containers"][0]["resources"]
    assert resources["requests"]["cpu"] == "2" and "cpu" not in resources["limits"]


def test_request_cores_and_limit_cores_win():
    resources = resources_step(empty_pod(), ctx(settings(cores=2, request_cores=0.5, limit_cores=3)))["spec"]["containers"][0]["resources"]
    assert resources["requests"]["cpu"] == "500m" and resources["limits"]["cpu"] == "3"


@pytest.mark.parametrize(("cores", "quantity"), [(1, "1"), (0.5, "500m"), (1.25, "1250m"), (0.1, "100m"), (0.0005, "1m")])
def test_cpu_quantities(cores, quantity):
    assert format_cpu(cores) == quantity


def test_template_cpu_memory_are_replaced_but_other_resources_kept():
    template = empty_pod({"name": "w", "resources": {"requests": {"cpu": "9", "ephemeral-storage": "1Gi"},
                                                      "limits": {"cpu": "9", "memory": "99Gi"}}})
    resources = resources_step(template, ctx())["spec"]["containers"][0]["resources"]
    assert resources["requests"] == {"cpu": "1", "memory": "1408Mi", "ephemeral-storage": "1Gi"}
    assert resources["limits"] == {"memory": "1408Mi"}


def test_kubernetes_extended_resources_of_a_group_are_requested_from_kubernetes():
    resources = resources_step(empty_pod(), ctx(settings(resources={"GPU": 1, "example.com/gpu": 2})))["spec"]["containers"][0]["resources"]
    assert resources["requests"]["example.com/gpu"] == resources["limits"]["example.com/gpu"] == "2"
    assert "GPU" not in resources["requests"]


def test_fractional_extended_resource_is_refused_with_the_key():
    with pytest.raises(ValueError, match=r"example.com/gpu.*whole number.*0.5"):
        resources_step(empty_pod(), ctx(settings(resources={"example.com/gpu": 0.5})))


# ----------------------------------------------------------------------------- scheduling, service account, image
def test_node_selector_merged_with_the_template_settings_winning():
    template = empty_pod()
    template["spec"]["nodeSelector"] = {"zone": "a", "disk": "ssd"}
    pod = scheduling_step(template, ctx(settings(node_selector={"zone": "b"})))
    assert pod["spec"]["nodeSelector"] == {"zone": "b", "disk": "ssd"}


def test_tolerations_appended_to_the_templates_without_duplicates():
    t1, t2 = {"key": "a", "operator": "Exists"}, {"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}
    template = empty_pod()
    template["spec"]["tolerations"] = [t1]
    pod = scheduling_step(template, ctx(settings(tolerations=[t1, t2])))
    assert pod["spec"]["tolerations"] == [t1, t2]


def test_no_scheduling_settings_leave_the_pod_unchanged():
    assert scheduling_step(empty_pod(), ctx()) == empty_pod()


def test_service_account_set_from_settings_else_template_kept():
    template = empty_pod()
    template["spec"]["serviceAccountName"] = "from-template"
    assert service_account_step(template, ctx())["spec"]["serviceAccountName"] == "from-template"
    assert service_account_step(template, ctx(settings(service_account="sa")))["spec"]["serviceAccountName"] == "sa"


def test_image_and_pull_policy_from_settings_when_template_has_none():
    s = dataclasses.replace(Settings(), image="registry/x:1", image_pull_policy="Always")
    container = image_step(empty_pod({}), ctx(s))["spec"]["containers"][0]
    assert container == {"name": "dask-worker", "image": "registry/x:1", "imagePullPolicy": "Always"}


def test_image_of_the_template_is_kept():
    s = dataclasses.replace(Settings(), image="registry/x:1")
    container = image_step(empty_pod({"name": "w", "image": "team/img:2", "imagePullPolicy": "Never"}), ctx(s))["spec"]["containers"][0]
    assert container["image"] == "team/img:2" and container["imagePullPolicy"] == "Never"


# ----------------------------------------------------------------------------- owner reference
SCHEDULER_POD = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "analytics-scheduler", "uid": "uid-1"}}


def test_no_owner_no_owner_reference():
    assert "ownerReferences" not in owner_reference_step(empty_pod(), ctx())["metadata"]


@pytest.mark.parametrize("owner", [SCHEDULER_POD, {"apiVersion": "v1", "kind": "Pod", "name": "analytics-scheduler", "uid": "uid-1"}])
def test_owner_reference_to_the_scheduler_pod_is_a_blocking_controller(owner):
    refs = owner_reference_step(empty_pod(), ctx(owner=owner))["metadata"]["ownerReferences"]
    assert refs == [{"apiVersion": "v1", "kind": "Pod", "name": "analytics-scheduler", "uid": "uid-1",
                     "controller": True, "blockOwnerDeletion": True}]


def test_owner_reference_keeps_template_references_but_only_one_controller():
    template = empty_pod()
    template["metadata"]["ownerReferences"] = [{"apiVersion": "v1", "kind": "ConfigMap", "name": "c", "uid": "u0", "controller": True}]
    refs = owner_reference_step(template, ctx(owner=SCHEDULER_POD))["metadata"]["ownerReferences"]
    assert [r["uid"] for r in refs] == ["u0", "uid-1"] and [r.get("controller") for r in refs] == [None, True]


def test_owner_without_uid_is_refused():
    with pytest.raises(ValueError, match="uid"):
        owner_reference_step(empty_pod(), ctx(owner={"metadata": {"name": "x"}}))


# ----------------------------------------------------------------------------- security context
def test_secure_defaults_drop_capabilities_and_privilege_escalation():
    security = security_context_step(empty_pod(), ctx())["spec"]["containers"][0]["securityContext"]
    assert security == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                        "seccompProfile": {"type": "RuntimeDefault"}}


def test_run_as_non_root_only_when_the_template_sets_a_non_root_user():
    template = empty_pod()
    template["spec"]["securityContext"] = {"runAsUser": 1000}
    security = security_context_step(template, ctx())["spec"]["containers"][0]["securityContext"]
    assert security["runAsNonRoot"] is True
    root = empty_pod({"name": "w", "securityContext": {"runAsUser": 0}})
    assert "runAsNonRoot" not in security_context_step(root, ctx())["spec"]["containers"][0]["securityContext"]


def test_template_security_context_values_win_over_defaults():
    template = empty_pod({"name": "w", "securityContext": {"allowPrivilegeEscalation": True, "capabilities": {"add": ["SYS_PTRACE"]}}})
    template["spec"]["securityContext"] = {"seccompProfile": {"type": "Unconfined"}}
    security = security_context_step(template, ctx())["spec"]["containers"][0]["securityContext"]
    assert security == {"allowPrivilegeEscalation": True, "capabilities": {"add": ["SYS_PTRACE"]}}


def test_secure_defaults_can_be_switched_off():
    assert security_context_step(empty_pod(), ctx(settings(secure_defaults=False))) == empty_pod()


# ----------------------------------------------------------------------------- whole builder
def test_build_without_template_gives_a_complete_worker_pod():
    pod = build_executor_pod(executor_id=3, app=APP, settings=Settings(), scheduler_address=ADDRESS)
    container = pod["spec"]["containers"][0]
    assert pod["metadata"]["name"] == "analytics-a1b2c-exec-3" and pod["spec"]["restartPolicy"] == "Never"
    assert container["name"] == "dask-worker" and container["image"] == Settings().image
    assert container["args"][:3] == [ADDRESS, "--name", "3"]
    assert container["resources"]["limits"]["memory"] == "1408Mi"


def test_template_other_containers_and_volumes_are_kept_and_named_container_is_the_worker():
    template = {"kind": "Pod", "metadata": {}, "spec": {
        "containers": [{"name": "sidecar", "image": "proxy:1"}, {"name": "worker", "image": "team/img:2"}],
        "volumes": [{"name": "scratch", "emptyDir": {}}], "priorityClassName": "batch"}}
    s = Settings(worker=WorkerSettings(pod_template_container_name="worker"))
    pod = build_executor_pod(executor_id=1, app=APP, settings=s, scheduler_address=ADDRESS, template=template)
    sidecar, worker = pod["spec"]["containers"]
    assert sidecar == {"name": "sidecar", "image": "proxy:1"}
    assert worker["command"] == ["dask", "worker"] and worker["image"] == "team/img:2"
    assert pod["spec"]["volumes"] == [{"name": "scratch", "emptyDir": {}}] and pod["spec"]["priorityClassName"] == "batch"


def test_template_file_from_settings_is_used(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("kind: Pod\nspec:\n  containers:\n  - name: w\n    image: team/img:3\n")
    s = Settings(worker=WorkerSettings(pod_template=str(path)))
    pod = build_executor_pod(executor_id=1, app=APP, settings=s, scheduler_address=ADDRESS)
    assert pod["spec"]["containers"][0]["image"] == "team/img:3"


def test_dict_template_with_unknown_container_name_is_refused():
    s = Settings(worker=WorkerSettings(pod_template_container_name="nope"))
    with pytest.raises(ValueError, match="pod-template-container-name.*'nope'"):
        build_executor_pod(executor_id=1, app=APP, settings=s, scheduler_address=ADDRESS, template=empty_pod())


@pytest.mark.parametrize("executor_id", [-1, True, 1.5, "3"])
def test_bad_executor_id_is_refused(executor_id):
    with pytest.raises(ValueError, match="executor_id"):
        build_executor_pod(executor_id=executor_id, app=APP, settings=Settings(), scheduler_address=ADDRESS)


def test_the_example_deploy_template_builds_a_secure_non_root_pod():
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "deploy" / "pod-template.yaml"
    s = Settings(worker=WorkerSettings(pod_template=str(path)))
    pod = build_executor_pod(executor_id=2, app=APP, settings=s, scheduler_address=ADDRESS)
    container = pod["spec"]["containers"][0]
    assert container["securityContext"]["runAsNonRoot"] is True
    assert pod["metadata"]["labels"]["team"] == "analytics"
    assert {"name": "DASK_TEMPORARY_DIRECTORY", "value": "/scratch"} in container["env"]


def test_check_executor_pod_refuses_a_bad_template_file_before_any_pod_exists(tmp_path):
    from dask_k8s_backend.pods.builder import check_executor_pod

    path = tmp_path / "t.yaml"
    path.write_text("kind: Deployment\n")
    with pytest.raises(ValueError, match="k8s-backend.worker.pod-template: .*t.yaml.* has kind 'Deployment'"):
        check_executor_pod(app=APP, settings=Settings(worker=WorkerSettings(pod_template=str(path))))


def test_check_executor_pod_refuses_a_fractional_extended_resource():
    from dask_k8s_backend.pods.builder import check_executor_pod

    with pytest.raises(ValueError, match="nvidia.com/gpu"):
        check_executor_pod(app=APP, settings=settings(resources={"nvidia.com/gpu": 1.5}))
