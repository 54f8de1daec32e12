"""Dask conventions a user relies on (issue 17), on the embedded Kubernetes reached as k8s://.

Each warning is printed once; a closed cluster says it is closed; ``add_worker_group`` speaks the
constructor's argument names and takes an image per group.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings
from collections import Counter

import pytest

from dask_k8s_backend import KubeSparkCluster
from dask_k8s_backend.cluster.kube_spark_cluster import ClusterClosedError
from k8s_helpers import app_pods, wait_until

from .conftest import cluster_kwargs

pytestmark = pytest.mark.timeout(240)

WARNINGS_SCRIPT = textwrap.dedent("""
    import sys, time
    from dask_k8s_backend import KubeSparkCluster

    url, kubeconfig, namespace = sys.argv[1:4]
    with KubeSparkCluster(master="k8s://" + url, namespace=namespace, worker_memory="64GiB",
                          authenticate={"kubeconfig": kubeconfig}, worker={"memroy": "1GiB", "death-timeout": "20s"},
                          executor={"delete-grace-period": "1s"}) as cluster:
        cluster.add_worker_group("more", worker_cores=1)  # the worker settings are validated again
        cluster.scale(2)  # the quota holds 1 pod; the pod that is created can never be scheduled
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            events = cluster.refresh_status().events
            if sum("is pending" in e for e in events) >= 2:
                break
            time.sleep(0.2)
        print("EVENTS", events, flush=True)
""")

# Each of these messages must reach the terminal (stdout or stderr) exactly once.
ONCE = {
    "unknown key": "Unknown configuration key 'k8s-backend.worker.memroy'",
    "quota before scaling": "scale(2) needs 2 more worker pods, but only 1 fit",
    "pending reason": "is pending: Unschedulable",
    "quota refusal": "ResourceQuota is used up",
}


@pytest.fixture
def namespace(core_api, request):
    name = ("c-" + request.node.name.replace("_", "-"))[:40].strip("-").lower()
    core_api.create_namespace({"metadata": {"name": name}})
    yield name
    core_api.delete_namespace(name)


def test_each_backend_warning_is_printed_once(kube, core_api, namespace):
    core_api.create_namespaced_resource_quota(namespace, {"metadata": {"name": "one"}, "spec": {"hard": {"pods": "1"}}})
    done = subprocess.run([sys.executable, "-c", WARNINGS_SCRIPT, kube.url, kube.kubeconfig, namespace],
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    lines = (done.stdout + done.stderr).splitlines()
    for what, fragment in ONCE.items():
        shown = Counter(line for line in lines if fragment in line and not line.startswith("EVENTS"))
        assert shown, f"{what}: never shown\n{done.stdout}\n{done.stderr}"
        assert set(shown.values()) == {1}, f"{what} printed more than once: {shown}"


def test_a_closed_cluster_refuses_scale_and_adapt_and_reports_itself_closed(kube, core_api):
    cluster = KubeSparkCluster(**cluster_kwargs(kube))
    cluster.scale(1)
    cluster.wait_for_workers(1, timeout=60)
    wait_until(lambda: "Running=1" in repr(cluster), timeout=10, what="the running pod in the repr")
    cluster.close()
    for call, what in ((lambda: cluster.scale(2), "scale(2)"), (lambda: cluster.adapt(minimum=0, maximum=3), "adapt("),
                       (lambda: cluster.add_worker_group("late"), "add_worker_group('late'"),
                       (lambda: cluster.scale_down(["1"]), "scale_down(")):
        with pytest.raises(ClusterClosedError) as info:
            call()
        message = str(info.value)
        assert message.startswith(what) and "this cluster is closed" in message, message
        assert "create a new KubeSparkCluster" in message
    for view in (repr(cluster), cluster._repr_html_(), cluster.status_table):
        assert "closed" in view.lower() and "Running" not in view, view
    assert cluster.refresh_status().executors == ()
    assert app_pods(core_api, cluster.app.app_id) == []


def test_add_worker_group_takes_the_constructors_argument_names_and_an_image(kube, core_api):
    image = "registry.example/team/dask-gpu:2026.8"
    with KubeSparkCluster(**cluster_kwargs(kube)) as cluster:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the constructor's names are not deprecated
            cluster.add_worker_group("own", worker_cores=1, worker_memory="640MiB", image=image, env={"TEAM": "a"})
        cluster.scale(1, group="own")
        cluster.scale(1)
        pods = wait_until(lambda: len(app_pods(core_api, cluster.app.app_id)) == 2 and app_pods(core_api, cluster.app.app_id),
                          timeout=60, what="one pod of each group")
        by_group = {p["metadata"]["labels"]["dask-k8s-backend/group"]: p["spec"]["containers"][0] for p in pods}
        assert by_group["own"]["image"] == image
        assert by_group["default"]["image"] == cluster.settings.image != image
        assert by_group["own"]["resources"]["requests"]["cpu"] in ("1", 1)
        assert {"name": "TEAM", "value": "a"} in by_group["own"]["env"]


def test_the_old_group_argument_names_still_work_with_a_future_warning(kube):
    with KubeSparkCluster(**cluster_kwargs(kube)) as cluster:
        with pytest.warns(FutureWarning, match=r"add_worker_group\(cores=\.\.\.\) is deprecated.*use worker_cores=2"):
            cluster.add_worker_group("old", cores=2)
        assert cluster._group_recipes["old"][0].worker.cores == 2
        with pytest.raises(ValueError, match=r"memory is the deprecated name of worker_memory; pass only worker_memory"):
            cluster.add_worker_group("both", memory="1GiB", worker_memory="2GiB")


@pytest.mark.parametrize("image, expected", [
    ("", "expected an image reference"),
    (" spaced ", "expected an image reference"),
])
def test_a_bad_group_image_is_refused_before_the_group_exists(kube, image, expected):
    with KubeSparkCluster(**cluster_kwargs(kube)) as cluster:
        with pytest.raises(ValueError, match=rf"add_worker_group\('bad', image={image!r}\): {expected}"):
            cluster.add_worker_group("bad", image=image)
        template = {"spec": {"containers": [{"name": "worker", "image": "pinned:1"}]}}
        with pytest.raises(ValueError, match=r"pod_template already sets the worker container's image to 'pinned:1'"):
            cluster.add_worker_group("bad", image="other:2", pod_template=template)
        assert "bad" not in cluster.refresh_status().targets


def test_cluster_mode_that_outlives_this_process_is_refused_on_the_in_process_embedded_kubernetes():
    with pytest.raises(ValueError) as info:
        KubeSparkCluster(master="embedded://", deploy_mode="cluster", shutdown_on_close=False, quiet=True)
    message = str(info.value)
    assert "shutdown_on_close=False" in message and "nothing was created" in message
    assert "python -m dask_k8s_backend embedded --kubeconfig" in message and 'master="k8s://"' in message
