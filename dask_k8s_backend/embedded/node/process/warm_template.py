"""The warm runtime's template process: import once, then fork one container per request.

Run by :mod:`.warm` as ``python -m dask_k8s_backend.embedded.node.process.warm_template FD PARENT_PID MODULES PAD``
with FD one end of a socket pair; PAD (spaces) and an environment variable of padding reserve room
in this process's argument and environment areas, which its children rewrite. Data flow: it imports the comma-separated MODULES (the
preload), checks that it is still single-threaded (forking a multi-threaded process can copy a
held lock), freezes the garbage collector (so collections in the children do not copy every
page), says ``("ready", pid, threads)`` and serves. For each request it forks and answers
``("started", id, pid)``; it reaps its children and reports ``("exited", pid, returncode)``
with ``Popen.returncode``'s meaning (negative for a signal). On end of file (the kubelet closed
the runtime or died) it kills what is left and exits.

The forked child leaves the serving loop by an exception (so no frame of the loop stays above
it) and becomes the container: new session, parent-death signal, stdin from /dev/null and fd 1/2
appended to the container's log, working directory, the kubelet's ``preexec`` hook, every other
fd closed, signals as a fresh interpreter has them, ``os.environ`` replaced, the preloaded
modules' environment-derived state refreshed, ``sys.argv``/``sys.path[0]`` set as ``python``
sets them, the argument and environment areas the kernel shows in ``/proc/PID/cmdline`` and
``/proc/PID/environ`` (``ps``, psutil) rewritten with the container's command line and
environment (they are the template's otherwise), then the command runs in-process; it exits as the interpreter would (``SystemExit``
and uncaught exceptions are left to Python, atexit handlers run).
"""

from __future__ import annotations

import builtins
import ctypes
import errno
import gc
import importlib
import multiprocessing.connection
import os
import pickle
import runpy
import selectors
import signal
import sys
import threading
import types
from typing import Any

from .parentdeath import die_with_parent

Request = dict[str, Any]

#: Signals a fresh CPython does not leave at SIG_DFL (it ignores these two at startup).
_IGNORED_AT_START = (signal.SIGPIPE, signal.SIGXFSZ)


class _Start(Exception):
    """Raised in a freshly forked child to leave the serving loop and become the container."""

    def __init__(self, request: Request) -> None:
        super().__init__(request.get("id"))
        self.request = request


# ------------------------------------------------------------------ template side

def _preload(modules: list[str]) -> None:
    for name in modules:
        importlib.import_module(name)
    sys.stdout.flush()
    sys.stderr.flush()
    gc.collect()
    gc.freeze()


def _reap(conn: multiprocessing.connection.Connection, children: set[int]) -> None:
    """Report every child that has exited (non-blocking)."""
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            children.clear()
            return
        if pid == 0:
            return
        children.discard(pid)
        conn.send(("exited", pid, os.waitstatus_to_exitcode(status)))


def _fork(conn: multiprocessing.connection.Connection, request: Request, children: set[int]) -> None:
    """Fork one container; in the child this raises :class:`_Start`."""
    try:
        pid = os.fork()
    except OSError as e:
        conn.send(("failed", request["id"], e.errno or errno.EAGAIN, e.strerror or str(e)))
        return
    if pid == 0:
        raise _Start(request)
    children.add(pid)
    conn.send(("started", request["id"], pid))


def _kill_children(children: set[int]) -> None:
    for pid in children:
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass


def serve(conn: multiprocessing.connection.Connection) -> None:
    """Fork on each request and report exits, until the kubelet's end of the socket closes."""
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # the wakeup fd does the work
    children: set[int] = set()
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(conn.fileno(), selectors.EVENT_READ, "request")
            selector.register(wake_r, selectors.EVENT_READ, "child")
            while True:
                for key, _ in selector.select():
                    if key.data == "child":
                        _drain(wake_r)
                        continue
                    try:
                        request = conn.recv()
                    except (EOFError, OSError):
                        _kill_children(children)
                        return
                    _fork(conn, request, children)
                _reap(conn, children)
    finally:
        os.close(wake_r)
        os.close(wake_w)


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


# ------------------------------------------------------------------ child side

def _redirect(log_path: str) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    null = os.open(os.devnull, os.O_RDONLY)
    log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(null)
    os.close(log)


def _close_inherited_fds() -> None:
    """Close every fd but 0, 1 and 2 (listed from /proc: RLIMIT_NOFILE may be huge)."""
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        os.closerange(3, 65536)
        return
    for fd in fds:
        if fd > 2:
            try:
                os.close(fd)
            except OSError:
                pass


def _reset_signals() -> None:
    """Dispositions and mask as a fresh interpreter has them (SIGINT raises KeyboardInterrupt)."""
    signal.set_wakeup_fd(-1)
    for sig in signal.valid_signals():
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        try:
            signal.signal(sig, signal.SIG_IGN if sig in _IGNORED_AT_START else signal.SIG_DFL)
        except (OSError, ValueError):
            pass
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def _set_environment(env: dict[str, str]) -> None:
    os.environ.clear()
    os.environ.update(env)
    _refresh_preloaded()


def _refresh_preloaded() -> None:
    """Recompute what preloaded modules derived from the environment at import (a fresh process would).

    The kubelet only warm-starts a container whose interpreter-level variables (``PYTHON*``,
    locale, HOME, DASK_CONFIG) match the template's; the rest of the environment is read again
    here: dask's configuration (``DASK_*`` variables such as ``DASK_SCHEDULER_ADDRESS``),
    distributed's logging set up from it, and multiprocessing's per-process secret key.
    """
    import tempfile

    tempfile.tempdir = None
    if "multiprocessing" in sys.modules:
        import multiprocessing

        multiprocessing.current_process().authkey = os.urandom(32)
    if "dask.config" in sys.modules:
        import dask.config

        logging_before = _logging_config(dask.config.config)
        dask.config.refresh()
        if "distributed.config" in sys.modules and _logging_config(dask.config.config) != logging_before:
            _reconfigure_distributed_logging(dask.config.config)


def _logging_config(config: dict[str, Any]) -> Any:
    keys = ("logging", "logging-file-config")
    return [repr(config.get(k)) for k in keys] + [repr((config.get("distributed") or {}).get(k)) for k in keys]


def _reconfigure_distributed_logging(config: dict[str, Any]) -> None:
    """distributed configures its loggers once, at import; do it again for this container's config."""
    import logging

    import distributed.config

    for logger in [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)]:
        if not logger.propagate and logger.handlers:  # the handlers distributed installed at import
            logger.handlers.clear()
            logger.propagate = True
    distributed.config.initialize_logging(config)


def _set_argv(request: Request) -> None:
    kind, target, argv = request["kind"], request["target"], list(request["argv"])
    sys.argv = argv
    sys.orig_argv = list(request["orig_argv"])
    if kind == "path":
        sys.path[0] = os.path.dirname(os.path.realpath(target))
    elif kind == "module":
        sys.path[0] = os.getcwd()
    else:
        sys.path[0] = ""


def _proc_areas() -> tuple[int, int, int, int]:
    """arg_start, arg_end, env_start, env_end of this process (fields 48-51 of /proc/self/stat)."""
    with open("/proc/self/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    arg_start, arg_end, env_start, env_end = (int(x) for x in fields[45:49])
    return arg_start, arg_end, env_start, env_end


def argv_block(argv: list[str], size: int) -> bytes | None:
    """``argv`` NUL-separated, the last argument padded with spaces to ``size`` bytes; None if too long."""
    data = b"\0".join(os.fsencode(a) for a in argv)
    if len(data) + 1 > size:
        return None
    return data + b" " * (size - len(data) - 1) + b"\0"


def env_block(env: dict[str, str], size: int) -> bytes | None:
    """``KEY=value`` entries NUL-terminated, NUL-padded to ``size`` bytes (a double NUL ends the list)."""
    data = b"".join(os.fsencode(f"{k}={v}") + b"\0" for k, v in env.items())
    if len(data) + 1 > size:
        return None
    return data + b"\0" * (size - len(data))


def _rewrite_proc_views(argv: list[str], env: dict[str, str] | None) -> None:
    """Write the container's command line and environment over the template's, where the kernel reads them.

    The areas keep the template's size (the kubelet only sends what fits); the old environment
    strings are no longer referenced once ``os.environ`` was replaced (putenv copies).
    """
    try:
        arg_start, arg_end, env_start, env_end = _proc_areas()
    except (OSError, ValueError):
        return
    areas = [(arg_start, arg_end, argv_block(argv, arg_end - arg_start))]
    if env is not None:  # only once os.environ no longer points into the old area
        areas.append((env_start, env_end, env_block(env, env_end - env_start)))
    for start, end, block in areas:
        if block is not None and start and end - start == len(block):
            ctypes.memmove(start, block, len(block))


def become_container(request: Request, template_pid: int) -> None:
    """Turn this forked child into the container's process and run its command (see module docstring)."""
    # Signals first: until then the template's SIGCHLD handler and wakeup fd are live here, and a
    # signal arriving after the fds are closed printed "Exception ignored ... wakeup fd" into the log.
    _reset_signals()
    os.setsid()
    die_with_parent(template_pid)
    _redirect(request["log"])
    try:
        os.chdir(request["cwd"])
    except OSError as e:
        print(f"warm runtime: cannot enter working directory {request['cwd']!r}: {e.strerror}", file=sys.stderr)
        os._exit(128)
    if request.get("preexec"):
        pickle.loads(request["preexec"])()
    _close_inherited_fds()
    _set_environment(request["env"])
    _rewrite_proc_views(request["orig_argv"], request["env"])
    _set_argv(request)
    run(request["kind"], request["target"])


def run(kind: str, target: str) -> None:
    """Run the command as ``python -m``, ``python -c`` or ``python FILE`` would; exceptions propagate."""
    if kind == "module":
        runpy.run_module(target, run_name="__main__", alter_sys=True)
    elif kind == "code":
        main = types.ModuleType("__main__")
        main.__dict__["__builtins__"] = builtins
        sys.modules["__main__"] = main
        exec(compile(target, "<string>", "exec"), main.__dict__)
    else:
        runpy.run_path(target, run_name="__main__")


# ------------------------------------------------------------------ entry point

def main(argv: list[str]) -> int:
    fd, parent_pid, modules = int(argv[1]), int(argv[2]), [m for m in argv[3].split(",") if m]
    die_with_parent(parent_pid)
    conn = multiprocessing.connection.Connection(fd)
    try:
        _preload(modules)
    except BaseException as e:  # reported, not raised: the kubelet falls back to exec
        conn.send(("broken", f"importing {modules} failed: {type(e).__name__}: {e}"))
        return 1
    threads = [t.name for t in threading.enumerate()]
    if len(threads) != 1:
        conn.send(("broken", f"the preload started threads {threads}; forking it would be unsafe"))
        return 1
    _rewrite_proc_views(sys.orig_argv[:-1], None)  # ps shows the template without its padding
    conn.send(("ready", os.getpid(), threads))
    template_pid = os.getpid()
    request = None
    try:
        serve(conn)
    except _Start as start:
        request = start.request
    if request is None:
        return 0
    conn.close()
    become_container(request, template_pid)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
