"""The warm container runtime of the process kubelet: Python containers forked from a preloaded template.

Why: a ``dask worker`` pod boots two interpreters that each import distributed (0.5-1 s of CPU
each); the pods are Running in a fraction of a second and then wait for that.
Like multiprocessing's forkserver with a preload, one single-threaded template process per
kubelet imports distributed once and forks a child per container, which then runs the command
in-process. It serves every pod alike (any client's), so it is a runtime feature, not a
shortcut for our own workers; ``k8s-backend.embedded.warm-runtime: false`` turns it off.

Memory: a forked container is charged its resident set like any other (processes.tree_rss), so
it pays for the preloaded modules as a fresh interpreter that imported them would; a container
whose memory limit is below :data:`MIN_LIMIT_FACTOR` times the template's resident set is exec'd,
so a small container is not charged (and OOMKilled) for modules it never imports.

Data flow: the kubelet asks :meth:`WarmRuntime.start_container` with the resolved command line;
:func:`classify` accepts ``python -m MOD``, ``python -c CODE``, ``python FILE`` and scripts whose
``#!`` names this interpreter (``dask``), and :func:`same_interpreter_env` requires the
variables that shape an interpreter's start (``PYTHON*``, locale, HOME, DASK_CONFIG) to equal
the template's; the command line and environment must fit the room the template reserves for
``/proc/PID/{cmdline,environ}`` (:data:`ARG_SPACE`, :data:`ENV_SPACE`) and the memory limit must
be large enough (above). Anything else returns None and the kubelet execs as before. The template
(:mod:`.warm_template`) is started lazily by this runtime's own thread, which then reads its
messages until it exits.

Exit statuses, and why not a subreaper: the container is the template's child, not ours, so
``waitpid`` cannot see it. ``PR_SET_CHILD_SUBREAPER`` on the kubelet's process would make orphans
ours, but that process is the user's (a notebook): every orphan of anything it runs would then
become its zombie, and the reparenting only happens after the template died anyway. Instead the
template reaps its children and reports each ``returncode`` over the socket; :class:`WarmProcess`
gives the kubelet ``subprocess.Popen``'s contract from those reports. If the template dies, its
children get SIGKILL (parent-death signal) and every open handle reports -9.
"""

from __future__ import annotations

import itertools
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Mapping

import dask.config

from . import parentdeath, podenv, processes, warm_template
from .processes import ContainerProcess, Preexec

logger = logging.getLogger(__name__)

CONFIG_KEY = "k8s-backend.embedded.warm-runtime"
#: Modules the template imports before it forks anything.
PRELOAD = ("distributed",)
START_TIMEOUT = 60.0  # the template's preload, on a loaded machine
FORK_TIMEOUT = 30.0
#: Bytes reserved in the template's argument and environment areas, which each child rewrites with
#: its command line and environment (what ps and /proc/PID/{cmdline,environ} show); a container
#: whose command line or environment is larger is exec'd.
ARG_SPACE = 16 << 10
ENV_SPACE = 64 << 10
_ENV_PAD = "DASK_K8S_WARM_RUNTIME_ENV_SPACE"
#: A container's memory limit must leave it this many times the template's resident set to be forked.
MIN_LIMIT_FACTOR = 2.0
#: Environment variables read while an interpreter starts (or by the preload at import), which a
#: forked child could not honour: a container that sets them differently is exec'd.
_INTERPRETER_VARIABLES = ("LANG", "LC_ALL", "LC_CTYPE", "HOME", "DASK_CONFIG", "DASK_ROOT_CONFIG")


def supported() -> bool:
    """Linux only: the children need the parent-death signal, and forking after imports is only safe there."""
    return parentdeath.supported()


def enabled_in_config() -> bool:
    """``k8s-backend.embedded.warm-runtime`` (default true; ``DASK_K8S_BACKEND__EMBEDDED__WARM_RUNTIME=false``)."""
    value = dask.config.get(CONFIG_KEY, default=True)
    if isinstance(value, str):
        return value.strip().lower() not in ("false", "no", "0", "off")
    return bool(value)


@dataclass(frozen=True)
class Launch:
    """How a warm child runs a command: ``kind`` module/code/path, its target and its ``sys.argv``."""

    kind: str
    target: str
    argv: tuple[str, ...]
    orig_argv: tuple[str, ...]


def classify(argv: list[str]) -> Launch | None:
    """The in-process form of a resolved command line, or None when only exec can run it faithfully."""
    program, args = argv[0], argv[1:]
    if program == sys.executable:
        return _python_launch(argv)
    if _runs_with_this_interpreter(program):
        return Launch("path", program, (program, *args), (sys.executable, program, *args))
    return None


def _python_launch(argv: list[str]) -> Launch | None:
    """``python -m MOD ...``, ``python -c CODE ...`` or ``python FILE ...``; any interpreter option -> None."""
    args = argv[1:]
    if not args:
        return None
    first = args[0]
    if first == "-m" and len(args) >= 2:
        return Launch("module", args[1], (args[1], *args[2:]), tuple(argv))
    if first.startswith("-m") and len(first) > 2:
        return Launch("module", first[2:], (first[2:], *args[1:]), tuple(argv))
    if first == "-c" and len(args) >= 2:
        return Launch("code", args[1], ("-c", *args[2:]), tuple(argv))
    if not first.startswith("-"):
        return Launch("path", first, tuple(args), tuple(argv))
    return None


def _runs_with_this_interpreter(path: str) -> bool:
    """A script whose ``#!`` line is this interpreter (console scripts such as ``dask``), without options.

    pip writes the interpreter's versioned name (``python3.11``) where ``sys.executable`` may be
    ``python``: the same file in the same folder is the same interpreter. Another folder is not,
    even for the same file (a venv's ``bin/python`` links to the base interpreter, whose prefix differs).
    """
    try:
        with open(path, "rb") as f:
            line = f.readline(512)
    except OSError:
        return False
    if not line.startswith(b"#!"):
        return False
    interpreter = os.fsdecode(line[2:].strip())
    if not interpreter or " " in interpreter:
        return False
    if os.path.dirname(interpreter) != os.path.dirname(sys.executable):
        return False
    try:
        return os.path.samefile(interpreter, sys.executable)
    except OSError:
        return False


def same_interpreter_env(env: Mapping[str, str], template_env: Mapping[str, str]) -> bool:
    """True when every start-up variable of ``env`` equals the template's (so a fork behaves as an exec)."""
    names = {k for k in (*env, *template_env) if k.startswith("PYTHON") or k in _INTERPRETER_VARIABLES}
    return all(env.get(k) == template_env.get(k) for k in names)


class WarmProcess:
    """A warm-started container's main process, with ``subprocess.Popen``'s contract.

    Its exit is learnt from the template's report (see the module docstring), not from waitpid.
    """

    def __init__(self, pid: int, args: list[str]) -> None:
        self.pid = pid
        self.args = args
        self.returncode: int | None = None
        self._exited = threading.Event()

    def __repr__(self) -> str:
        return f"WarmProcess(pid={self.pid}, returncode={self.returncode})"

    def exited(self, returncode: int) -> None:
        if self.returncode is None:
            self.returncode = returncode
            self._exited.set()

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._exited.wait(timeout):
            raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:  # once reaped, the pid may belong to someone else
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class _Template:
    """One running template: its process, our end of the socket, the requests and children in flight."""

    def __init__(self) -> None:
        self.ready = threading.Event()
        self.error: str | None = None
        self.proc: subprocess.Popen | None = None
        self.conn: Connection | None = None
        self.send_lock = threading.Lock()
        self.pending: dict[int, tuple[Future, list[str]]] = {}
        self.children: dict[int, WarmProcess] = {}
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self.rss = 0  # resident bytes once the preload is done


class WarmRuntime:
    """Starts eligible containers as forks of a preloaded template (see the module docstring)."""

    def __init__(self, work_dir: Path, *, preload: tuple[str, ...] = PRELOAD,
                 start_timeout: float = START_TIMEOUT) -> None:
        self.work_dir = Path(work_dir)
        self.preload = preload
        self.start_timeout = start_timeout
        self.template_env = podenv.base_env({})
        self.template_env.pop("HOSTNAME", None)
        # the template's argument and environment areas (the child's room to show its own)
        self._arg_area = ARG_SPACE + 1
        self._env_area = ENV_SPACE + len(_ENV_PAD) + 2 + sum(len(os.fsencode(f"{k}={v}")) + 1
                                                            for k, v in self.template_env.items())
        self._template: _Template | None = None
        self._disabled: str | None = None  # why the preload cannot be used: exec from then on
        self._lock = threading.Lock()
        self._ids = itertools.count(1)

    # ------------------------------------------------------------------ kubelet-facing
    def start_container(self, argv: list[str], env: Mapping[str, str], cwd: Path, log_path: Path,
                        preexec: Preexec | None = None, *, memory_limit: int | None = None) -> ContainerProcess | None:
        """Fork the container from the template, or None when it must be exec'd (not eligible, no template,
        ``memory_limit`` too small for the preload: see the module docstring)."""
        launch = classify(argv)
        if launch is None or not same_interpreter_env(env, self.template_env) or not self._fits(launch, env):
            return None
        hook = _pickled(preexec)
        if preexec is not None and hook is None:
            return None
        template = self._running_template()
        if template is None or (memory_limit is not None and memory_limit < MIN_LIMIT_FACTOR * template.rss):
            return None
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.touch()  # as a container runtime does: the log exists once the container is reported started
        request = {"id": next(self._ids), "kind": launch.kind, "target": launch.target, "argv": list(launch.argv),
                   "orig_argv": list(launch.orig_argv), "env": dict(env), "cwd": str(cwd), "log": str(log_path),
                   "preexec": hook}
        return self._fork(template, request, argv)

    def _fits(self, launch: Launch, env: Mapping[str, str]) -> bool:
        """The command line and environment fit the areas the child rewrites (see the template)."""
        return (warm_template.argv_block(list(launch.orig_argv), self._arg_area) is not None
                and warm_template.env_block(dict(env), self._env_area) is not None)

    def running_template(self) -> int | None:
        """The template's pid while it runs (for tests and diagnostics)."""
        template = self._template
        if template is None or template.error is not None or template.proc is None:
            return None
        return template.proc.pid if template.proc.poll() is None else None

    def close(self) -> None:
        """Stop the template (its remaining children die with it) and join the reading thread; idempotent.

        A later :meth:`start_container` starts a new template (a kubelet may be started again).
        """
        with self._lock:
            template, self._template = self._template, None
        if template is not None:
            self._stop(template)

    # ------------------------------------------------------------------ template lifecycle
    def _running_template(self) -> _Template | None:
        with self._lock:
            if self._disabled is not None:
                return None
            template = self._template
            if template is None or (template.ready.is_set() and template.error is not None):
                template = self._template = _Template()
                template.thread = threading.Thread(target=self._serve, args=(template,),
                                                   name="warm-runtime", daemon=True)
                template.thread.start()
        if not template.ready.wait(self.start_timeout):
            logger.warning("warm runtime: the template did not start within %.0f s; containers are exec'd",
                           self.start_timeout)
            return None
        return None if template.error else template

    def _serve(self, template: _Template) -> None:
        """Start the template from this thread (its parent-death signal follows this thread), then read it."""
        ours, theirs = socket.socketpair()
        try:
            log = self.work_dir / "warm-template.log"
            self.work_dir.mkdir(parents=True, exist_ok=True)
            argv = [sys.executable, "-m", "dask_k8s_backend.embedded.node.process.warm_template", str(theirs.fileno()),
                    str(os.getpid()), ",".join(self.preload), " " * ARG_SPACE]
            template.proc = self._spawn_template(argv, theirs.fileno(), log)
        except OSError as e:
            template.error = f"cannot start the template: {e}"
            template.ready.set()
            ours.close()
            return
        finally:
            theirs.close()
        template.conn = Connection(ours.detach())
        self._read(template)

    def _spawn_template(self, argv: list[str], fd: int, log_path: Path) -> subprocess.Popen:
        env = {**self.template_env, _ENV_PAD: " " * ENV_SPACE}
        with open(log_path, "ab", buffering=0) as log:
            return subprocess.Popen(argv, env=env, cwd=str(self.work_dir), stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, pass_fds=(fd,), start_new_session=True)

    def _read(self, template: _Template) -> None:
        conn = template.conn
        assert conn is not None
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                break
            self._handle(template, message)
        self._template_gone(template)

    def _handle(self, template: _Template, message: tuple) -> None:
        kind = message[0]
        if kind == "ready":
            template.rss = processes.tree_rss([message[1]]).get(message[1], 0)
            logger.debug("warm runtime: template %s ready (preloaded %s, %d bytes resident)", message[1],
                         ",".join(self.preload), template.rss)
            template.ready.set()
        elif kind == "broken":
            logger.warning("warm runtime disabled: %s; containers are exec'd", message[1])
            template.error = self._disabled = message[1]
            template.ready.set()
        elif kind == "started":
            with template.lock:
                future, args = template.pending.pop(message[1])
                proc = template.children[message[2]] = WarmProcess(message[2], args)
            if not future.set_running_or_notify_cancel():
                processes.kill_group(proc.pid)
                return
            future.set_result(proc)
        elif kind == "failed":
            with template.lock:
                future, _ = template.pending.pop(message[1])
            if future.set_running_or_notify_cancel():
                future.set_exception(OSError(message[2], message[3]))
        elif kind == "exited":
            with template.lock:
                proc = template.children.pop(message[1], None)
            if proc is not None:
                proc.exited(message[2])

    def _template_gone(self, template: _Template) -> None:
        """The template exited: its children were SIGKILLed with it; fail what was in flight."""
        if template.error is None:
            template.error = "the template exited"
        template.ready.set()
        with template.lock:
            pending, template.pending = list(template.pending.values()), {}
            children, template.children = list(template.children.values()), {}
        for future, _ in pending:
            if future.set_running_or_notify_cancel():
                future.set_exception(OSError("the warm runtime's template exited"))
        for proc in children:
            processes.kill_group(proc.pid)
            proc.exited(-signal.SIGKILL)
        if template.proc is not None:
            try:
                template.proc.wait(5)
            except subprocess.TimeoutExpired:
                template.proc.kill()
                template.proc.wait()
        if template.conn is not None:
            template.conn.close()

    def _fork(self, template: _Template, request: dict[str, Any], argv: list[str]) -> ContainerProcess | None:
        future: Future = Future()
        with template.lock:
            if template.error is not None:
                return None
            template.pending[request["id"]] = (future, argv)
        try:
            with template.send_lock:
                assert template.conn is not None
                template.conn.send(request)
        except OSError:
            with template.lock:
                template.pending.pop(request["id"], None)
            return None
        try:
            return future.result(FORK_TIMEOUT)
        except OSError as e:  # the template could not fork, died, or did not answer: exec instead
            if not future.cancel():  # answered just now: a child that started is the container
                try:
                    return future.result(FORK_TIMEOUT)
                except OSError:
                    pass
            logger.warning("warm runtime: starting %s failed (%s); the container is exec'd", argv[0], e)
            return None

    def _stop(self, template: _Template) -> None:
        """Shut the socket down: the template reads end of file and exits, the reading thread ends."""
        if template.conn is not None:
            try:
                with socket.socket(fileno=os.dup(template.conn.fileno())) as sock:
                    sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if template.thread is not None:
            template.thread.join(timeout=15)


def _pickled(preexec: Preexec | None) -> bytes | None:
    """The hook as the child will load it (by reference: module-level functions, partials of them)."""
    if preexec is None:
        return None
    try:
        return pickle.dumps(preexec)
    except (pickle.PicklingError, TypeError, AttributeError):
        logger.debug("warm runtime: preexec hook %r cannot be pickled; the container is exec'd", preexec)
        return None
