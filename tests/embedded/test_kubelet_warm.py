"""The warm container runtime keeps every promise a pod makes, and no pod outlives its kubelet's process.

The pod-semantics suites (test_kubelet_process.py, test_kubelet_e2e.py) run with the runtime on
and off; these tests check what only a forked container could get wrong: that it is forked at
all, its env, working directory and log, nothing of the template leaking into it (threads, file
descriptors), signals and exit codes, memory charged to the container and not to the template,
and, for both runtimes, death of every pod process when the kubelet's process is SIGKILLed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import psutil
import pytest
from kubelet_fixtures import container_state, make_store, pod, python, store_events, wait_for, wait_phase

from dask_k8s_backend.embedded.node.process import podenv, warm
from dask_k8s_backend.embedded.node.process.kubelet import ProcessKubelet
from dask_k8s_backend.embedded.control.scheduler import EmbeddedScheduler

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the warm runtime's tests need Linux")]

REPORT = textwrap.dedent("""
    import json, os, sys, threading
    fds = {}
    for name in os.listdir('/proc/self/fd'):
        try:
            fds[name] = os.readlink('/proc/self/fd/' + name)
        except OSError:  # the directory listing's own descriptor, closed by now
            pass
    print(json.dumps({'ppid': os.getppid(), 'cwd': os.getcwd(), 'env': dict(os.environ), 'argv': sys.argv,
                      'fds': fds, 'threads': [t.name for t in threading.enumerate()],
                      'preloaded': 'distributed' in sys.modules, 'sid': os.getsid(0) == os.getpid()}))
    print('to stderr', file=sys.stderr)
""")


class Node:
    """Store, scheduler and one process kubelet with the warm runtime on."""

    def __init__(self, work_dir) -> None:
        self.store = make_store()
        self.scheduler = EmbeddedScheduler(self.store)
        self.kubelet = ProcessKubelet(self.store, "node-1", work_dir=work_dir, memory_sample_interval=0.1,
                                      cpu="4", memory="8Gi", warm_runtime=True)
        self.scheduler.start()
        self.kubelet.start()

    def run(self, manifest: dict) -> str:
        self.store.create("pods", "default", manifest)
        return manifest["metadata"]["name"]

    def log(self, name: str) -> str:
        path = self.kubelet.container_log_path("default", name, "main")
        return path.read_text() if path else ""

    def report(self, name: str) -> dict:
        wait_phase(self.store, name, "Succeeded", "Failed")
        return json.loads(next(line for line in self.log(name).splitlines() if line.startswith("{")))

    def stop(self) -> None:
        self.kubelet.stop()
        self.scheduler.stop()


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@pytest.fixture
def node(tmp_path):
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    threads = set(threading.enumerate())
    n = Node(tmp_path)
    yield n
    n.stop()
    left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before and _alive(p.pid)]
    assert left == [], f"processes left behind (the template included): {left}"
    assert [t for t in threading.enumerate() if t not in threads and t.is_alive()] == []


def test_python_commands_and_scripts_of_this_interpreter_are_forked_the_rest_exec_d(tmp_path):
    py = sys.executable
    assert warm.classify([py, "-m", "distributed.cli.dask_worker", "a"]) == warm.Launch(
        "module", "distributed.cli.dask_worker", ("distributed.cli.dask_worker", "a"), (py, "-m", "distributed.cli.dask_worker", "a"))
    assert warm.classify([py, "-c", "pass", "x"]).argv == ("-c", "x")
    assert warm.classify([py, "job.py", "x"]) == warm.Launch("path", "job.py", ("job.py", "x"), (py, "job.py", "x"))
    dask_script = str(podenv.interpreter_bin() / "dask")
    assert warm.classify([dask_script, "worker"]).kind == "path"
    other = tmp_path / "other"
    other.write_text("#!/usr/bin/env python3\n")
    for argv in ([py], [py, "-u", "-c", "pass"], [py, "-"], ["/bin/sh", "-c", "true"], [str(other)]):
        assert warm.classify(argv) is None, argv


def test_a_container_whose_interpreter_variables_differ_from_the_template_s_is_exec_d():
    template = {"PATH": "/bin", "HOME": "/root", "PYTHONPATH": "/a"}
    assert warm.same_interpreter_env({"PATH": "/x", "HOME": "/root", "PYTHONPATH": "/a", "DASK_X": "1"}, template)
    for changed in ({"PYTHONPATH": "/b"}, {"PYTHONPATH": None}, {"PYTHONHASHSEED": "0"}, {"HOME": "/home/x"},
                    {"DASK_CONFIG": "/etc/x"}, {"LANG": "C"}):
        env = {**template, **changed}
        assert not warm.same_interpreter_env({k: v for k, v in env.items() if v is not None}, template), changed


def test_a_python_container_is_forked_from_the_template_with_its_env_cwd_argv_and_log(node, tmp_path):
    workdir = tmp_path / "wd"
    workdir.mkdir()
    manifest = pod("forked", ["python", "-c", REPORT], args=["$(GREETING)"],
                   env=[{"name": "GREETING", "value": "hi"}, {"name": "DASK_SCHEDULER_ADDRESS", "value": "tcp://x:1"}])
    manifest["spec"]["containers"][0]["workingDir"] = str(workdir)
    report = node.report(node.run(manifest))
    assert report["ppid"] == node.kubelet.warm.running_template() and report["preloaded"]
    assert report["cwd"] == str(workdir) and report["argv"] == ["-c", "hi"] and report["sid"]
    assert report["env"]["GREETING"] == "hi" and "HOSTNAME" in report["env"]
    assert not set(report["env"]) - {"GREETING", "DASK_SCHEDULER_ADDRESS", "HOSTNAME", "PATH", "HOME", "LANG",
                                     "LC_ALL", "TMPDIR", "PYTHONPATH", "SYSTEMROOT", "USER"}, "the template's env leaked"
    assert "to stderr" in node.log("forked")


def test_the_log_file_exists_before_the_container_is_forked(node, monkeypatch):
    """The pod is Running once the fork is asked for; a log request then must find the file, not a 400."""
    seen: list[bool] = []
    fork = node.kubelet.warm._fork

    def checking_fork(template, request, argv):
        seen.append(os.path.exists(request["log"]))
        return fork(template, request, argv)

    monkeypatch.setattr(node.kubelet.warm, "_fork", checking_fork)
    node.run(pod("early", python("print('hello')")))
    assert wait_for(lambda: seen, what="the container to be forked") == [True]
    assert wait_for(lambda: "hello" in node.log("early"), what="the container's output")


def test_ps_and_proc_show_a_forked_container_s_own_command_line_and_environment(node):
    """Tools that read /proc/PID/{cmdline,environ} (ps, psutil, our leak checks) see the container, not the template."""
    code = "import time; print('ready', flush=True); time.sleep(30)"
    name = node.run(pod("shown", python(code), env=[{"name": "MARK", "value": "m1"}]))
    wait_for(lambda: "ready" in node.log(name), what="container ready")
    # The kubelet records the run only after launch() returns, and the forked child can print first.
    (pid,) = wait_for(node.kubelet.running_processes, what="the kubelet to record the container's process")
    proc = psutil.Process(pid)
    assert proc.ppid() == node.kubelet.warm.running_template()
    cmdline = proc.cmdline()
    assert cmdline[:2] == [sys.executable, "-c"] and cmdline[2].rstrip() == code and len(cmdline) == 3
    environ = proc.environ()
    assert environ["MARK"] == "m1" and not any(k.startswith("DASK_K8S_WARM") for k in environ)


def test_a_forked_container_reads_its_own_dask_config_from_its_env(node):
    code = "import dask.config; print('address', dask.config.get('scheduler-address'))"
    name = node.run(pod("config", python(code), env=[{"name": "DASK_SCHEDULER_ADDRESS", "value": "tcp://x:1"}]))
    wait_phase(node.store, name, "Succeeded")
    assert "address tcp://x:1" in node.log(name)


def test_no_thread_or_file_descriptor_of_the_template_leaks_into_a_container(node):
    report = node.report(node.run(pod("clean", python(REPORT))))
    assert report["threads"] == ["MainThread"]
    assert sorted(report["fds"]) == ["0", "1", "2"], report["fds"]
    assert report["fds"]["0"] == "/dev/null"
    assert report["fds"]["1"] == report["fds"]["2"] and report["fds"]["1"].endswith("/main/0.log")


def test_exit_codes_are_those_of_a_fresh_interpreter(node):
    cases = {"code3": ("raise SystemExit(3)", 3), "uncaught": ("raise ValueError('boom')", 1),
             "message": ("import sys; sys.exit('bye')", 1), "ok": ("print('fine')", 0)}
    for name, (code, _) in cases.items():
        node.run(pod(name, python(code)))
    for name, (_, expected) in cases.items():
        p = wait_phase(node.store, name, "Succeeded", "Failed")
        assert container_state(p)["terminated"]["exitCode"] == expected, name
    assert "ValueError: boom" in node.log("uncaught") and "bye" in node.log("message")


def test_sigterm_ends_a_default_container_with_143_and_one_ignoring_it_is_killed_after_the_grace_period(node):
    node.run(pod("default", python("import time; print('ready', flush=True); time.sleep(60)")))
    stubborn = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); "
                "time.sleep(60)")
    node.run(pod("stubborn", python(stubborn)))
    for name in ("default", "stubborn"):
        wait_for(lambda n=name: "ready" in node.log(n), what=f"{name} ready")
    history: list[dict] = []
    node.store.add_listener(lambda kind, obj: history.append(obj) if kind == "MODIFIED" else None)
    started = time.monotonic()
    node.store.delete("pods", "default", "default", grace_period_seconds=10)
    node.store.delete("pods", "default", "stubborn", grace_period_seconds=1)

    def final(name):
        states = [container_state(o).get("terminated") for o in history if o["metadata"]["name"] == name]
        return next((s for s in reversed(states) if s), None)

    assert wait_for(lambda: final("default"), timeout=5)["exitCode"] == 143
    assert wait_for(lambda: final("stubborn"), timeout=10)["exitCode"] == 137
    assert 0.9 <= time.monotonic() - started < 5


def test_a_forked_container_over_its_memory_limit_is_oom_killed(node):
    code = ("import os, time; print('parent', os.getppid(), flush=True); time.sleep(0.5); "
            "x = bytearray(500 * 2**20); x[::4096] = b'x' * len(x[::4096]); time.sleep(30)")
    name = node.run(pod("hog", python(code), memory_limit="300Mi", memory="300Mi"))
    wait_for(lambda: "parent" in node.log(name), what="the container started")
    template = node.kubelet.warm.running_template()
    p = wait_phase(node.store, name, "Failed")
    assert f"parent {template}" in node.log(name)
    assert (container_state(p)["terminated"]["exitCode"], container_state(p)["terminated"]["reason"]) == (137, "OOMKilled")
    assert any(e["reason"] == "OOMKilling" for e in store_events(node.store, name))


def test_a_container_whose_limit_is_too_small_for_the_preload_is_exec_d(node):
    """Charged its resident set like any container, a fork would pay for modules it may never import."""
    name = node.run(pod("small", python("import os; print('parent', os.getppid())"), memory_limit="64Mi",
                        memory="64Mi"))
    p = wait_phase(node.store, name, "Succeeded", "Failed", timeout=20)
    assert container_state(p)["terminated"]["exitCode"] == 0, container_state(p)
    assert f"parent {os.getpid()}" in node.log(name)


def test_commands_the_template_cannot_run_faithfully_are_execd(node):
    code = "import os; print('parent', os.getppid())"
    node.run(pod("option", ["python", "-u", "-c", code]))
    node.run(pod("pythonpath", python(code), env=[{"name": "PYTHONPATH", "value": "/nowhere"}]))
    for name in ("option", "pythonpath"):
        wait_phase(node.store, name, "Succeeded")
        assert f"parent {os.getpid()}" in node.log(name), name


KILLED_OWNER = textwrap.dedent("""
    import json, sys, time
    from dask_k8s_backend.embedded.cluster import EmbeddedKubernetes
    kube = EmbeddedKubernetes(kubelet="process", nodes=1, warm_runtime=sys.argv[1] == "warm").start()
    for name, command in (("py", ["python", "-c", "import time; time.sleep(120)"]),
                          ("sh", ["sh", "-c", "sleep 120"])):
        kube.store.create("pods", "default", {"metadata": {"name": name}, "spec": {"restartPolicy": "Never",
                          "containers": [{"name": "main", "image": "x", "command": command}]}})
    kubelet = kube.kubelets["node-1"]
    while len(kubelet.running_processes()) < 2:
        time.sleep(0.05)
    template = kubelet.warm.running_template() if kubelet.warm else None
    print(json.dumps({"pods": kubelet.running_processes(), "template": template}), flush=True)
    if sys.argv[2] == "wait":
        time.sleep(120)
""")


@pytest.mark.parametrize("runtime,end", [("warm", "kill -9"), ("exec", "kill -9"), ("warm", "exit")])
def test_no_pod_process_outlives_the_process_running_the_kubelet(runtime, end):
    """Killed by SIGKILL (parent-death signal) or exiting without stopping anything (atexit): nothing is left."""
    owner = subprocess.Popen([sys.executable, "-c", KILLED_OWNER, runtime, "wait" if end == "kill -9" else "exit"],
                             stdout=subprocess.PIPE, text=True)
    try:
        line = owner.stdout.readline()
        assert line, "the embedded Kubernetes did not start its pods"
        started = json.loads(line)
        pids = started["pods"] + ([started["template"]] if started["template"] else [])
        assert len(pids) == (3 if runtime == "warm" else 2)
        if end == "kill -9":
            os.kill(owner.pid, signal.SIGKILL)
        owner.wait(30)
        deadline = time.monotonic() + 5
        while any(os.path.exists(f"/proc/{pid}") and _alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [pid for pid in pids if _alive(pid)] == []
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
        owner.stdout.close()


def test_a_template_whose_preload_fails_disables_the_warm_runtime_and_containers_are_exec_d(tmp_path, caplog):
    runtime = warm.WarmRuntime(tmp_path, preload=("no_such_module_for_the_warm_runtime",))
    try:
        for _ in range(2):  # not retried: the preload would fail again
            started = runtime.start_container([sys.executable, "-c", "pass"], dict(runtime.template_env), tmp_path,
                                              tmp_path / "log")
            assert started is None and runtime.running_template() is None
    finally:
        runtime.close()
    assert [r.getMessage() for r in caplog.records if "warm runtime disabled" in r.getMessage()] == [
        "warm runtime disabled: importing ['no_such_module_for_the_warm_runtime'] failed: ModuleNotFoundError: "
        "No module named 'no_such_module_for_the_warm_runtime'; containers are exec'd"]


def test_a_killed_template_takes_its_containers_with_it_and_the_next_container_gets_a_new_one(node):
    node.run(pod("first", python("import time; print('ready', flush=True); time.sleep(60)")))
    wait_for(lambda: "ready" in node.log("first"), what="first container ready")
    template = node.kubelet.warm.running_template()
    os.kill(template, signal.SIGKILL)
    p = wait_phase(node.store, "first", "Failed", timeout=10)
    assert container_state(p)["terminated"]["exitCode"] == 137
    report = node.report(node.run(pod("second", python(REPORT))))
    assert report["ppid"] == node.kubelet.warm.running_template() != template


def test_the_warm_runtime_is_switched_off_by_config_or_environment(tmp_path):
    import dask.config

    store = make_store()
    with dask.config.set({warm.CONFIG_KEY: False}):
        assert ProcessKubelet(store, "off", work_dir=tmp_path / "off").warm is None
    assert ProcessKubelet(store, "on", work_dir=tmp_path / "on").warm is not None
    assert ProcessKubelet(store, "kw", work_dir=tmp_path / "kw", warm_runtime=False).warm is None
    code = "from dask_k8s_backend.embedded.node.process import warm; print(warm.enabled_in_config())"
    env = {**os.environ, "DASK_K8S_BACKEND__EMBEDDED__WARM_RUNTIME": "false"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False", done.stderr
