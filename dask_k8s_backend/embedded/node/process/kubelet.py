"""The process kubelet: runs the pods bound to its node as local processes, like a real kubelet.

Data flow: :class:`~.agent.KubeletBase` hands each new pod of this node to a :class:`PodWorker`
thread (pods start concurrently: one slow start never delays another). The worker gives the
pod a loopback IP, "pulls" images (recorded, not pulled; a name containing ``invalid`` fails
with ErrImagePull then ImagePullBackOff), resolves env and command (:mod:`.podenv`), runs init
containers one by one, then every app container as a process in its own session writing to its
log file (:mod:`.processes`), and writes each state change as the pod's status (built by
:mod:`.podstatus`). A waiter thread per process wakes the worker when it exits; one monitor
thread per kubelet samples the memory of every container tree and SIGKILLs a tree over its
``limits.memory`` (OOMKilled, 137). Deletion: SIGTERM to each container's main process only (as
the runtime signals PID 1: a Dask nanny then closes its worker itself), SIGKILL to the whole tree
once that process exits or the grace period ends, final status, then the transport's ``finish_deletion``;
a pod gone from the store is killed at once.
:meth:`ProcessKubelet.launch` starts a container process: forked from the warm runtime's
preloaded template when the command is Python's (:mod:`.warm`, ``warm_runtime=False`` or
``k8s-backend.embedded.warm-runtime: false`` turns it off), exec'd otherwise; either way it gets
SIGKILL if the process running the kubelet dies, even by SIGKILL.
:meth:`ProcessKubelet.stop` kills every process it started and joins every thread it started;
interpreter exit stops every kubelet still running.
"""

from __future__ import annotations

import atexit
import logging
import signal
import subprocess
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Mapping

from ..kubelet_base import HOST_IP, Key, KubeletBase, Pod, pod_key, pod_uid
from . import podenv, processes, warm
from dask_k8s_backend.embedded.podstatus import ContainerRecord, PodRuntimeView, container_id, image_ref, pod_status
from .sandbox import ContainerSetup, NoSandbox, PodSandbox
from dask_k8s_backend.kube.resources import container_memory_limit

logger = logging.getLogger(__name__)

DEFAULT_GRACE = 30.0
BACKOFF_START, BACKOFF_MAX = 1.0, 20.0
PULL_BACKOFF = 1.0  # ErrImagePull shows this long before ImagePullBackOff
IDLE_WAIT = 5.0  # workers wake on events (exit, deletion, OOM); this only bounds a missed one


def image_pull_error(image: str) -> str | None:
    """The containerd message for an image we pretend cannot be pulled (its name contains ``invalid``)."""
    if "invalid" not in image:
        return None
    ref = image_ref(image)
    return (f'failed to pull and unpack image "{ref}": failed to resolve reference "{ref}": pull access denied, '
            "repository does not exist or may require authorization: server message: insufficient_scope: "
            "authorization failed")


class _Run:
    """One run of one container: its process, log file and whether the memory monitor killed it."""

    def __init__(self, proc: processes.ContainerProcess, log_path: Path, memory_limit: int | None) -> None:
        self.proc = proc
        self.log_path = log_path
        self.memory_limit = memory_limit
        self.oom_killed = False
        self.rss = 0


class PodWorker:
    """Runs one pod from start to deletion in its own thread; only this thread writes the pod's status."""

    def __init__(self, kubelet: "ProcessKubelet", pod: Pod) -> None:
        self.kubelet = kubelet
        self.pod = pod
        self.key: Key = pod_key(pod)
        self.uid = pod_uid(pod)
        spec = pod.get("spec") or {}
        self.restart_policy = spec.get("restartPolicy") or "Always"
        self.view = PodRuntimeView(
            host_ip=HOST_IP,
            init_records=[ContainerRecord(c["name"], c.get("image", ""), init=True) for c in spec.get("initContainers") or []],
            records=[ContainerRecord(c["name"], c.get("image", "")) for c in spec.get("containers") or []],
        )
        if self.view.init_records:
            for r in self.view.init_records + self.view.records:
                r.reason = "PodInitializing"
            self.view.init_records[0].reason = "ContainerCreating"
        self.runs: dict[str, _Run] = {}
        self.lock = threading.Lock()  # guards runs against the monitor and stop()
        self.wake = threading.Event()
        self.grace: float | None = None  # set when deletion is requested
        self.removed = False  # gone from the store: kill at once, write nothing
        self.stopping = False  # the kubelet is stopping
        self.end_lock = threading.Lock()  # orders "thread ended" against "deletion requested"
        self.kill_at = float("inf")  # monotonic time of the SIGKILL once stopping has begun
        self.ended = False
        self.dir = kubelet.work_dir / "pods" / f"{self.key[0]}_{self.key[1]}_{self.uid}"
        self.thread = threading.Thread(target=self._main, name=f"pod-{self.key[1]}", daemon=True)
        self.waiters: list[threading.Thread] = []
        deadline = spec.get("activeDeadlineSeconds")
        self.deadline = time.monotonic() + float(deadline) if deadline else None
        self.expired = False  # activeDeadlineSeconds passed: stopped like a deletion, phase Failed
        self.setup = ContainerSetup()  # what the node's sandbox adds to every container (env, preexec)

    # ------------------------------------------------------------------ signals from other threads
    def request_delete(self, pod: Pod) -> None:
        """Deletion requested (or its grace period shortened by a second delete, as kubectl --now does)."""
        meta = pod.get("metadata") or {}
        grace = meta.get("deletionGracePeriodSeconds")
        if grace is None:
            grace = (pod.get("spec") or {}).get("terminationGracePeriodSeconds", DEFAULT_GRACE)
        grace = float(grace)
        with self.end_lock:
            first = self.grace is None
            if not first and grace >= (self.grace or 0.0):
                return
            self.grace = grace
            self.kill_at = min(self.kill_at, time.monotonic() + grace)
            ended = self.ended
        self.wake.set()
        if ended and first:  # the pod had already finished: nothing left to stop
            self.kubelet.finalize(self.key, self.uid)

    def remove(self) -> None:
        self.removed = True
        self.kill_all()
        self.wake.set()

    def kill_all(self) -> None:
        with self.lock:
            runs = list(self.runs.values())
        for run in runs:
            if run.proc.poll() is None:
                processes.kill_tree(run.proc.pid)

    @property
    def done(self) -> bool:
        return self.grace is not None or self.removed or self.stopping or self.expired

    def _sleep(self) -> None:
        """Wait for an event (exit, deletion, OOM, stop), at most until ``activeDeadlineSeconds`` runs out."""
        timeout = IDLE_WAIT
        if self.deadline is not None:
            timeout = max(0.0, min(timeout, self.deadline - time.monotonic()))
        self.wake.wait(timeout)
        self.wake.clear()
        if self.deadline is not None and not self.expired and time.monotonic() >= self.deadline:
            self.expired = True
            self.view.reason = "DeadlineExceeded"
            self.view.message = "Pod was active on the node longer than the specified deadline"
            self.event("DeadlineExceeded", self.view.message, "Warning")

    # ------------------------------------------------------------------ main
    def _main(self) -> None:
        try:
            self._lifecycle()
        except Exception:
            logger.exception("kubelet %s: pod %s/%s failed unexpectedly", self.kubelet.node_name, *self.key)
            self.kill_all()
        finally:
            self.kill_all()
            self.kubelet.sandbox.release(self.uid)
            with self.end_lock:
                self.ended = True
                finalize = self.grace is not None and not self.removed and not self.stopping
            if finalize:
                self.kubelet.finalize(self.key, self.uid)

    def _lifecycle(self) -> None:
        now = self.kubelet.clock()
        self.view.pod_ip = self.kubelet.ips.allocate(self.uid)
        self.view.start_time = now
        self._write()
        if not self._prepare_sandbox():
            self._wait_until_done()
            return
        if not self._pull_images():
            self._wait_until_done()
            return
        if not self._run_init_containers():
            self._finish()
            return
        for index, record in enumerate(self.view.records):
            self._start(self.pod["spec"]["containers"][index], record)
        self._write()
        self._supervise()
        self._finish()

    def _prepare_sandbox(self) -> bool:
        """The node's additions for every container (service-account token, API address); False if they failed."""
        try:
            self.setup = self.kubelet.sandbox.prepare(self.pod, self.dir)
            return True
        except Exception as e:
            message = f"MountVolume.SetUp failed for the service-account token: {e}"
            for record in self.view.init_records + self.view.records:
                record.wait("ContainerCreating", message)
            self.event("FailedMount", message, "Warning")
            self._write()
            return False

    def _wait_until_done(self) -> None:
        while not self.done:
            self._sleep()

    def _pull_images(self) -> bool:
        """Pulled events, or ErrImagePull then ImagePullBackOff (the pod stays Pending until deleted)."""
        for record in self.view.init_records + self.view.records:
            error = image_pull_error(record.image)
            if error is None:
                self.event("Pulled", f'Container image "{record.image}" already present on machine')
                continue
            self.event("Pulling", f'Pulling image "{record.image}"')
            self.event("Failed", f'Failed to pull image "{record.image}": {error}', "Warning")
            self.event("Failed", "Error: ErrImagePull", "Warning")
            record.wait("ErrImagePull", error)
            self._write()
            self.wake.wait(PULL_BACKOFF)
            if self.done:
                return False
            record.wait("ImagePullBackOff", f'Back-off pulling image "{record.image}"')
            self.event("BackOff", f'Back-off pulling image "{record.image}"')
            self.event("Failed", "Error: ImagePullBackOff", "Warning")
            self._write()
            return False
        return True

    def _run_init_containers(self) -> bool:
        specs = (self.pod.get("spec") or {}).get("initContainers") or []
        for index, (spec, record) in enumerate(zip(specs, self.view.init_records)):
            while True:
                if not self._start(spec, record):
                    return False
                self._write()
                while record.state == "running" and not self.done:
                    self._sleep()
                    self._reap()
                if self.done:
                    return False
                if record.succeeded:
                    break
                if self.restart_policy == "Never":
                    self._write()
                    return False
                self._backoff(record)
            if index + 1 < len(self.view.init_records):
                self.view.init_records[index + 1].wait("ContainerCreating")
            self._write()
        for record in self.view.records:
            record.wait("ContainerCreating")
        return True

    # ------------------------------------------------------------------ one container
    def _start(self, spec: dict[str, Any], record: ContainerRecord) -> bool:
        """Start one container; on failure record CreateContainerConfigError or ContainerCannotRun."""
        now = self.kubelet.clock()
        pod = dict(self.pod)
        pod["status"] = {**(pod.get("status") or {}), "podIP": self.view.pod_ip, "hostIP": HOST_IP,
                         "podIPs": [{"ip": self.view.pod_ip}], "hostIPs": [{"ip": HOST_IP}]}
        try:
            env = podenv.container_env(pod, spec, self.kubelet.lookup)
            env = {**self.setup.env, **env}
        except (podenv.ContainerConfigError, ValueError) as e:
            record.wait("CreateContainerConfigError", str(e))
            self.event("Failed", f"Error: {e}", "Warning")
            return False
        argv = podenv.command_line(spec, env)
        cid = container_id(self.uid, record.name, record.restart_count)
        program = podenv.resolve_program(argv[0], env.get("PATH", ""))
        log_path = self.dir / record.name / f"{record.restart_count}.log"
        try:
            if program is None:
                raise FileNotFoundError(argv[0])
            self.dir.mkdir(parents=True, exist_ok=True)
            proc = self.kubelet.launch([program] + argv[1:], env, self._working_dir(spec), log_path, self.setup.preexec,
                                       memory_limit=container_memory_limit(spec))
        except (OSError, subprocess.SubprocessError) as e:
            message = (f'failed to create containerd task: failed to create shim task: OCI runtime create failed: '
                       f'runc create failed: unable to start container process: exec: "{argv[0]}": '
                       f'{"executable file not found in $PATH" if isinstance(e, FileNotFoundError) else getattr(e, "strerror", None) or e}: unknown')
            record.run(now, cid)
            record.terminate(127 if isinstance(e, FileNotFoundError) else 126, now, "ContainerCannotRun", message)
            self.event("Failed", f"Error: {message}", "Warning")
            return False
        limit = container_memory_limit(spec)
        with self.lock:
            self.runs[record.name] = _Run(proc, log_path, limit)
        record.run(now, cid)
        waiter = threading.Thread(target=self._await_exit, args=(proc,), name=f"wait-{proc.pid}", daemon=True)
        self.waiters.append(waiter)
        waiter.start()
        self.event("Created", f"Created container {record.name}")
        self.event("Started", f"Started container {record.name}")
        return True

    def _working_dir(self, spec: dict[str, Any]) -> Path:
        """``workingDir`` when it exists on this machine, else the pod's own directory (shared by its containers)."""
        wanted = spec.get("workingDir")
        return Path(wanted) if wanted and Path(wanted).is_dir() else self.dir

    def _await_exit(self, proc: processes.ContainerProcess) -> None:
        proc.wait()
        self.wake.set()

    def _reap(self) -> bool:
        """Record the exit of every container process that has ended; True if any did."""
        changed = False
        for record in self.view.init_records + self.view.records:
            with self.lock:
                run = self.runs.get(record.name)
            if run is None or record.state != "running" or run.proc.poll() is None:
                continue
            code = processes.exit_code(run.proc.returncode)
            processes.kill_group(run.proc.pid)  # what it left behind goes with it, as with a container
            if run.oom_killed:
                record.terminate(137, self.kubelet.clock(), "OOMKilled")
            else:
                record.terminate(code, self.kubelet.clock())
            changed = True
        return changed

    def _backoff(self, record: ContainerRecord) -> None:
        """CrashLoopBackOff: wait (doubling, capped) before the next run; deletion cuts it short."""
        delay = min(BACKOFF_MAX, BACKOFF_START * (2 ** record.restart_count))
        record.restart()
        record.wait("CrashLoopBackOff",
                    f"back-off {delay:g}s restarting failed container={record.name} pod={self.key[1]}_{self.key[0]}({self.uid})")
        self._write()
        deadline = time.monotonic() + delay
        while not self.done and time.monotonic() < deadline:
            self.wake.wait(deadline - time.monotonic())
            self.wake.clear()

    def _should_restart(self, record: ContainerRecord) -> bool:
        return self.restart_policy == "Always" or (self.restart_policy == "OnFailure" and not record.succeeded)

    # ------------------------------------------------------------------ running
    def _supervise(self) -> None:
        specs = {c["name"]: c for c in self.pod["spec"]["containers"]}
        while not self.done:
            if all(r.state == "terminated" for r in self.view.records):
                return
            self._sleep()
            if self.done:
                return
            if not self._reap():
                continue
            self._write()
            for record in self.view.records:
                if record.state == "terminated" and self._should_restart(record) and not self.done:
                    self._backoff(record)
                    if not self.done and self._start(specs[record.name], record):
                        self._write()

    def _finish(self) -> None:
        """Stop whatever still runs (grace period on deletion), record final states, write the last status."""
        if self.removed:
            self.kill_all()
            return
        if self.grace is not None or self.stopping or self.expired:
            self._terminate_all(0.0 if self.stopping and not self.kubelet.graceful_stop else self.grace_period())
        self._reap()
        for record in self.view.records + self.view.init_records:
            if record.state == "running":  # its process could not be reaped: count it as killed
                record.terminate(137, self.kubelet.clock())
        phase = None
        if self.expired:
            phase = "Failed"
        elif self.grace is not None or self.stopping:
            phase = "Failed" if any(not r.succeeded for r in self.view.records) else "Succeeded"
        self._write(phase)

    def grace_period(self) -> float:
        if self.grace is not None:
            return self.grace
        return float((self.pod.get("spec") or {}).get("terminationGracePeriodSeconds", DEFAULT_GRACE))

    def _terminate_all(self, grace: float) -> None:
        """SIGTERM each live container's main process; SIGKILL its whole tree once it exits or the (possibly
        shortened) grace period ends, as a container runtime tears down the PID namespace."""
        with self.lock:
            live = [(name, run) for name, run in self.runs.items() if run.proc.poll() is None]
        if not live:
            return
        trees = {name: processes.descendants(run.proc.pid) for name, run in live}
        for name, run in live:
            self.event("Killing", f"Stopping container {name}")
            processes.signal_main(run.proc, signal.SIGTERM)
        with self.end_lock:
            self.kill_at = min(self.kill_at, time.monotonic() + grace)
        while not self.removed and any(run.proc.poll() is None for _, run in live):
            remaining = self.kill_at - time.monotonic()
            if remaining <= 0:
                break
            self.wake.wait(remaining)
            self.wake.clear()
        self.kill_all()
        for name, run in live:  # PID 1 is gone or out of time: like a PID namespace, everything else goes
            processes.signal_tree(run.proc.pid, signal.SIGKILL, trees[name])
        for _, run in live:
            try:
                run.proc.wait(5)
            except subprocess.TimeoutExpired:
                logger.warning("kubelet %s: process %s of pod %s/%s survived SIGKILL", self.kubelet.node_name,
                               run.proc.pid, *self.key)

    def _write(self, phase: str | None = None) -> None:
        if self.removed or self.kubelet.closing:
            return
        view = self.view
        pod = self.kubelet.write_status(self.key, self.uid,
                                        lambda p: pod_status(p, view, self.kubelet.clock(), phase))
        if pod is not None:
            self.pod = pod

    def event(self, reason: str, message: str, type_: str = "Normal") -> None:
        if not self.removed and not self.kubelet.closing:
            self.kubelet.event(self.pod, reason, message, type_)

    def log_path(self, container: str, previous: bool) -> Path | None:
        for record in self.view.init_records + self.view.records:
            if record.name == container:
                number = record.restart_count - (1 if previous else 0)
                if number < 0:
                    return None
                path = self.dir / container / f"{number}.log"
                return path if path.exists() else None
        return None


class ProcessKubelet(KubeletBase):
    """One node whose pods are local processes (see the module docstring)."""

    def __init__(self, store: Any, node_name: str, *, memory_sample_interval: float = 0.25,
                 warm_runtime: bool | None = None, sandbox: PodSandbox | None = None, **kwargs: Any) -> None:
        super().__init__(store, node_name, **kwargs)
        self.memory_sample_interval = memory_sample_interval
        self.sandbox: PodSandbox = sandbox if sandbox is not None else NoSandbox()
        enabled = warm.enabled_in_config() if warm_runtime is None else warm_runtime
        self.warm = warm.WarmRuntime(self.work_dir / "warm-runtime") if enabled and warm.supported() else None
        self._workers: dict[Key, PodWorker] = {}
        self._workers_lock = threading.Lock()
        self._monitor: threading.Thread | None = None
        self._monitor_stop = threading.Event()
        self.closing = False
        self.graceful_stop = False

    def start(self) -> None:
        self.closing = False
        self.graceful_stop = False
        self._monitor_stop.clear()
        super().start()
        _RUNNING.add(self)
        self._monitor = threading.Thread(target=self._watch_memory, name=f"kubelet-{self.node_name}-memory", daemon=True)
        self._monitor.start()

    # ------------------------------------------------------------------ hooks
    def knows(self, pod: Pod) -> bool:
        worker = self._workers.get(pod_key(pod))
        return worker is not None and worker.uid == pod_uid(pod)

    def pod_added(self, pod: Pod) -> None:
        worker = PodWorker(self, pod)
        with self._workers_lock:
            old = self._workers.get(worker.key)
            if old is not None:
                old.remove()
            self._workers[worker.key] = worker
        worker.thread.start()

    def pod_deleting(self, pod: Pod) -> None:
        worker = self._workers.get(pod_key(pod))
        if worker is not None and worker.uid == pod_uid(pod):
            worker.request_delete(pod)

    def pod_removed(self, pod: Pod) -> None:
        with self._workers_lock:
            worker = self._workers.get(pod_key(pod))
            if worker is None or worker.uid != pod_uid(pod):
                return
            del self._workers[worker.key]
        worker.remove()

    def stop_pods(self, graceful: bool = False) -> None:
        """Stop every pod and join every thread: at once, or (``graceful``) SIGTERM, the pod's grace, SIGKILL.

        Graceful stops still write each pod's final status; the immediate one writes nothing.
        """
        self.graceful_stop = graceful
        self.closing = not graceful
        self._monitor_stop.set()
        if self._monitor is not None:
            self._monitor.join(timeout=10)
            self._monitor = None
        with self._workers_lock:
            workers = list(self._workers.values())
            self._workers.clear()
        for worker in workers:
            worker.stopping = True
            if not graceful:
                worker.kill_all()
            worker.wake.set()
        for worker in workers:
            worker.thread.join(timeout=15 + (worker.grace_period() if graceful else 0.0))
            for waiter in worker.waiters:
                waiter.join(timeout=5)
            self.ips.release(worker.uid)
        if self.warm is not None:
            self.warm.close()
        _RUNNING.discard(self)

    # ------------------------------------------------------------------ container processes
    def launch(self, argv: list[str], env: Mapping[str, str], cwd: Path, log_path: Path,
               preexec: processes.Preexec | None = None, *, memory_limit: int | None = None) -> processes.ContainerProcess:
        """Start a container's process: warm-forked when the runtime takes it, exec'd otherwise.

        ``preexec`` runs in the child before the command (exec or in-process run); ``memory_limit``
        (bytes) lets the runtime exec a container too small to carry the preload.
        Raises OSError when the program cannot be executed.
        """
        if self.warm is not None:
            proc = self.warm.start_container(argv, env, cwd, log_path, preexec, memory_limit=memory_limit)
            if proc is not None:
                return proc
        return processes.spawn(argv, env, cwd, log_path, preexec)

    # ------------------------------------------------------------------ services for workers
    def container_log_path(self, namespace: str, pod: str, container: str, previous: bool = False) -> Path | None:
        worker = self._workers.get((namespace, pod))
        return None if worker is None else worker.log_path(container, previous)

    def running_processes(self) -> list[int]:
        """Pids of the container processes still running (for tests and diagnostics)."""
        with self._workers_lock:
            workers = list(self._workers.values())
        pids = []
        for worker in workers:
            with worker.lock:
                pids += [run.proc.pid for run in worker.runs.values() if run.proc.poll() is None]
        return pids

    # ------------------------------------------------------------------ memory limits
    def _watch_memory(self) -> None:
        while not self._monitor_stop.wait(self.memory_sample_interval):
            try:
                self._check_memory()
            except Exception:
                logger.exception("kubelet %s: memory sampling failed", self.node_name)

    def _check_memory(self) -> None:
        limited: list[tuple[PodWorker, str, _Run]] = []
        with self._workers_lock:
            workers = list(self._workers.values())
        for worker in workers:
            with worker.lock:
                limited += [(worker, name, run) for name, run in worker.runs.items()
                            if run.memory_limit is not None and run.proc.poll() is None and not run.oom_killed]
        if not limited:
            return
        usage = processes.tree_rss(run.proc.pid for _, _, run in limited)
        for worker, name, run in limited:
            run.rss = usage.get(run.proc.pid, 0)
            if run.rss > (run.memory_limit or 0):
                run.oom_killed = True
                processes.kill_tree(run.proc.pid)
                logger.info("kubelet %s: container %s of pod %s/%s used %d bytes, over its limit of %d: OOMKilled",
                            self.node_name, name, worker.key[0], worker.key[1], run.rss, run.memory_limit)
                worker.event("OOMKilling", f"Memory cgroup out of memory: Killed process {run.proc.pid} "
                                            f"(container {name}) total-rss:{run.rss // 1024}kB, limit {run.memory_limit // 1024}kB",
                              "Warning")
                worker.wake.set()



#: Kubelets started and not yet stopped, stopped at interpreter exit (nothing outlives its owner).
_RUNNING: "weakref.WeakSet[ProcessKubelet]" = weakref.WeakSet()


@atexit.register
def _stop_running_kubelets() -> None:
    """Kill the pods of every kubelet still running; no API call (the server may be gone already)."""
    for kubelet in list(_RUNNING):
        try:
            kubelet.stop_pods()
        except Exception:
            logger.exception("kubelet %s: stopping at interpreter exit failed", kubelet.node_name)
