"""Every final state and every pending reason gets one sentence a user can act on."""

from __future__ import annotations

import pytest

from dask_k8s_backend import labels
from dask_k8s_backend.pods.exits import explain, format_bytes, parse_memory_quantity, pending_reason
from dask_k8s_backend.pods.states import (
    PodDeleted,
    PodFailed,
    PodPending,
    PodRunning,
    PodSucceeded,
    PodTerminating,
    PodUnknown,
    classify,
)


def pod(phase: str = "Failed", statuses: list | None = None, *, memory: str = "1408Mi", containers: int = 1,
        init_statuses: list | None = None, **status: object) -> dict:
    names = ["dask-worker"] + [f"side-{i}" for i in range(1, containers)]
    return {
        "metadata": {"name": "app-exec-7", "labels": {labels.EXECUTOR_ID: "7"}},
        "spec": {"containers": [{"name": n, "image": "ghcr.io/dask/dask:2026.8.0",
                                 "resources": {"limits": {"memory": memory}}} for n in names]},
        "status": {"phase": phase, "containerStatuses": statuses or [], "initContainerStatuses": init_statuses or [], **status},
    }


def terminated(code: int, reason: str = "Error", name: str = "dask-worker", message: str | None = None) -> dict:
    term = {"exitCode": code, "reason": reason}
    if message:
        term["message"] = message
    return {"name": name, "image": "sha256:abc", "state": {"terminated": term}}


def waiting(reason: str, message: str | None = None, name: str = "dask-worker") -> dict:
    return {"name": name, "image": "ghcr.io/dask/dask:2026.8.0", "state": {"waiting": {"reason": reason, "message": message}}}


def failed(*statuses: dict, **kw: object) -> str:
    return explain(PodFailed(pod("Failed", list(statuses), **kw)))


def test_exit_0_completed():
    assert explain(PodSucceeded(pod("Succeeded", [terminated(0, "Completed")]))).startswith("executor 7 completed")


def test_exit_1_points_to_the_executor_log():
    text = failed(terminated(1))
    assert text.startswith("executor 7 failed") and "code 1" in text and "cluster.logs(7)" in text


@pytest.mark.parametrize(("code", "words"), [(126, "not executable"), (127, "command not found")])
def test_bad_command_codes_point_to_image_and_command(code, words):
    text = failed(terminated(code))
    assert words in text and "ghcr.io/dask/dask:2026.8.0" in text and "check the image" in text


def test_oom_killed_names_the_memory_limit_and_the_fix():
    text = failed(terminated(137, "OOMKilled"))
    assert text == ("executor 7 OOMKilled: container used more than its 1.4 GiB memory limit (exit code 137); raise worker memory "
                    "(k8s-backend.worker.memory) or its overhead (worker.memory-overhead-factor).")


def test_oom_killed_small_limit_in_mib():
    assert "512 MiB memory limit" in failed(terminated(137, "OOMKilled"), memory="512Mi")


def test_137_without_oom_is_sigkill_from_outside():
    text = failed(terminated(137))
    assert "SIGKILL from outside" in text and "not OOMKilled" in text


def test_139_is_a_segfault():
    assert "segmentation fault" in failed(terminated(139))


def test_143_is_sigterm():
    assert "SIGTERM" in failed(terminated(143))


def test_other_signal_codes_name_the_signal():
    assert "signal 6 (SIGABRT" in failed(terminated(134))


def test_other_exit_codes_give_the_code_and_the_log():
    text = failed(terminated(3, message="boom"))
    assert "exited with code 3 (Error: boom)" in text and "cluster.logs(7)" in text


def test_container_cannot_run_shows_the_runtime_message():
    text = failed(terminated(128, "ContainerCannotRun", message='exec: "dask": executable file not found'))
    assert "ContainerCannotRun" in text and "executable file not found" in text and "check the image" in text


def test_all_containers_are_examined_not_just_the_first():
    text = failed(terminated(0, "Completed"), terminated(137, "OOMKilled", name="side-1"), containers=2)
    assert "OOMKilled (container 'side-1')" in text


def test_failed_init_container_is_explained():
    text = failed(init_statuses=[terminated(127, name="dask-worker")])
    assert "command not found" in text


def test_running_phase_with_a_dead_worker_container_is_explained():
    state = classify(pod("Running", [terminated(1)]))
    assert isinstance(state, PodFailed) and "code 1" in explain(state)


def test_evicted_quotes_the_kubelet_message():
    text = failed(reason="Evicted", message="The node was low on resource: memory")
    assert text.startswith("executor 7 was evicted by the kubelet: The node was low on resource: memory.")


@pytest.mark.parametrize("reason", ["ErrImagePull", "ImagePullBackOff"])
def test_image_pull_errors_name_the_image_and_registry_credentials(reason):
    text = pending_reason(pod("Pending", [waiting(reason, "manifest unknown")]))
    assert reason in text and "'ghcr.io/dask/dask:2026.8.0'" in text and "manifest unknown" in text
    assert "credentials" in text and "registry" in text


def test_invalid_image_name_points_to_the_image_option():
    assert "fix k8s-backend.image" in pending_reason(pod("Pending", [waiting("InvalidImageName")]))


def test_create_container_config_error_shows_the_message():
    text = pending_reason(pod("Pending", [waiting("CreateContainerConfigError", 'secret "creds" not found')]))
    assert 'secret "creds" not found' in text and "CreateContainerConfigError" in text


def test_unschedulable_quotes_the_schedulers_message():
    conditions = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                   "message": "0/1 nodes are available: 1 Insufficient cpu."}]
    text = pending_reason(pod("Pending", conditions=conditions))
    assert text.startswith("Unschedulable: 0/1 nodes are available: 1 Insufficient cpu. Lower")
    assert explain(PodPending(pod("Pending", conditions=conditions))).startswith("executor 7 is pending: Unschedulable")


def test_failed_pod_that_never_started_explains_the_waiting_reason():
    assert "failed before starting: ErrImagePull" in failed(waiting("ErrImagePull"))


def test_normal_container_creation_is_not_a_pending_problem():
    assert pending_reason(pod("Pending", [waiting("ContainerCreating")])) is None
    assert pending_reason(pod("Pending")) is None


def test_pending_without_reason_is_waiting():
    assert explain(PodPending(pod("Pending"))) == "executor 7 is pending: waiting to be scheduled and started."


def test_deleted_externally():
    text = explain(PodDeleted(pod("Running")))
    assert text.startswith("executor 7 was deleted from outside the backend")


def test_deleted_after_a_failure_explains_the_failure():
    assert "OOMKilled" in explain(PodDeleted(pod("Running", [terminated(137, "OOMKilled")])))


def test_failed_without_anything_suggests_describe():
    assert "kubectl describe pod" in failed()


def test_failed_with_only_a_pod_reason_shows_it():
    assert "DeadlineExceeded: too slow" in failed(reason="DeadlineExceeded", message="too slow")


def test_non_final_states_have_sentences_too():
    assert explain(PodRunning(pod("Running"))) == "executor 7 is running."
    assert "terminating" in explain(PodTerminating(pod("Running")))
    assert "unknown state" in explain(PodUnknown(pod("Unknown")))


def test_pod_without_executor_label_is_named_by_pod_name():
    p = pod("Failed", [terminated(1)])
    p["metadata"]["labels"] = {}
    assert explain(PodFailed(p)).startswith("pod app-exec-7 failed") and "kubectl logs app-exec-7" in explain(PodFailed(p))


@pytest.mark.parametrize(("text", "value"), [("1408Mi", 1408 << 20), ("2Gi", 2 << 30), ("1G", 10**9), ("1e9", 10**9),
                                              ("512", 512), ("bad", None), ("3Zi", None)])
def test_memory_quantities(text, value):
    assert parse_memory_quantity(text) == value


def test_format_bytes():
    assert (format_bytes(1408 << 20), format_bytes(512 << 20), format_bytes(100)) == ("1.4 GiB", "512 MiB", "100 B")
