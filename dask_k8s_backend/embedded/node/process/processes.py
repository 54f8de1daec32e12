"""Operating-system side of the process kubelet: start, signal, measure and reap container processes.

Data flow: the kubelet starts each container with :func:`spawn` (its own session, so its own
process group; stdout and stderr into the container's log file; SIGKILL on the death of the
thread that started it, see :mod:`.parentdeath`; then an optional ``preexec`` hook) or through
the warm runtime (:mod:`.warm`), whose handles keep the same :class:`ContainerProcess` contract,
signals the whole tree with
:func:`signal_tree` (the group plus any descendant that left it), and once per sampling period
asks :func:`tree_rss` for the resident memory of every container tree in one pass over the
process table (cheap with 50 containers). :func:`exit_code` turns a ``wait`` status into the
exit code a container runtime reports (128 + signal number for a signal).

Memory: every container tree is charged its resident set, a warm-started one included: a fork of
the template counts the preloaded modules' pages, as a fresh interpreter that imported them would
(the warm runtime execs containers whose limit is too small for that, see :mod:`.warm`).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from pathlib import Path
from typing import Callable, Iterable, Mapping, Protocol

import psutil

from .parentdeath import die_with_parent

logger = logging.getLogger(__name__)


#: A hook run in the container's process after fork, before exec (or before a warm run).
Preexec = Callable[[], None]


class ContainerProcess(Protocol):
    """What the kubelet needs of a container's main process: ``subprocess.Popen``'s contract."""

    pid: int
    returncode: int | None

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def send_signal(self, sig: int) -> None: ...

    def kill(self) -> None: ...


def spawn(argv: list[str], env: Mapping[str, str], cwd: Path, log_path: Path,
          preexec: Preexec | None = None) -> subprocess.Popen:
    """Start ``argv`` in a new session with stdin closed and both output streams appended to ``log_path``.

    The process gets SIGKILL when the calling thread's process dies (even by SIGKILL), then runs
    ``preexec`` if given. Raises OSError (FileNotFoundError, PermissionError) when the program
    cannot be executed.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    parent = os.getpid()

    def in_child() -> None:
        die_with_parent(parent)
        if preexec is not None:
            preexec()

    with open(log_path, "ab", buffering=0) as log:
        return subprocess.Popen(
            argv, env=dict(env), cwd=str(cwd), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True, preexec_fn=in_child,
        )


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def signal_main(proc: ContainerProcess, sig: int) -> None:
    """Signal only the container's main process (its PID 1), as a container runtime does on stop."""
    try:
        proc.send_signal(sig)
    except (ProcessLookupError, PermissionError):
        pass


def signal_tree(pid: int, sig: int, known: Iterable[psutil.Process] = ()) -> None:
    """Send ``sig`` to the process group led by ``pid`` and to every descendant (some may have left the group)."""
    tree = list(known) or descendants(pid)
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
    for proc in tree:
        try:
            proc.send_signal(sig)
        except psutil.Error:
            pass


def kill_group(pid: int) -> None:
    """SIGKILL what is left of an exited process's group (safe: a live group's id is never reused)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def kill_tree(pid: int) -> None:
    """SIGKILL the group and all descendants (collected first, so orphans are not missed)."""
    signal_tree(pid, signal.SIGKILL, descendants(pid))


def tree_rss(roots: Iterable[int]) -> dict[int, int]:
    """Resident bytes of each root's process tree, from one scan of the process table."""
    roots = list(roots)
    if not roots:
        return {}
    children: dict[int, list[int]] = {}
    for proc in psutil.process_iter(["ppid"]):
        children.setdefault(proc.info.get("ppid") or 0, []).append(proc.pid)
    totals: dict[int, int] = {}
    for root in roots:
        total, stack, seen = 0, [root], set()
        while stack:
            pid = stack.pop()
            if pid in seen:
                continue
            seen.add(pid)
            total += _rss(pid)
            stack.extend(children.get(pid, ()))
        totals[root] = total
    return totals


def _rss(pid: int) -> int:
    try:
        return psutil.Process(pid).memory_info().rss
    except psutil.Error:
        return 0


def exit_code(returncode: int) -> int:
    """Popen's ``returncode`` (negative for a signal) -> a runtime's exit code (128 + signal)."""
    return 128 - returncode if returncode < 0 else returncode
