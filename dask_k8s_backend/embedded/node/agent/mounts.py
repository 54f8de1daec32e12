"""A container's own view of one path: a private mount namespace with a directory bind-mounted in it.

Why: a pod using the in-cluster configuration reads its service-account token from the fixed path
``/var/run/secrets/kubernetes.io/serviceaccount``; every pod on this machine needs its own token
there. :func:`bind_preexec` returns a function the process kubelet runs in the container's child
process before exec: ``unshare(CLONE_NEWNS)``, make ``/`` private (nothing leaks back to the host),
then bind-mount the pod's directory on the target. Needs root (CAP_SYS_ADMIN);
:func:`mount_namespaces_supported` checks once, in a throw-away child, and the caller falls back
(without the mount) when it is not.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
from pathlib import Path
from typing import Callable

logger = logging.getLogger(__name__)

CLONE_NEWNS = 0x00020000
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000


@functools.lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL:
    # the interpreter's own symbols include libc's; find_library would run ldconfig in a child process,
    # which must not happen in a container's child before exec
    return ctypes.CDLL(None, use_errno=True)


def _enter(source: bytes, target: bytes) -> None:
    libc = _libc()
    if libc.unshare(CLONE_NEWNS) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS) failed")
    if libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        raise OSError(ctypes.get_errno(), "making / a private mount failed")
    if libc.mount(source, target, None, MS_BIND, None) != 0:
        raise OSError(ctypes.get_errno(), f"bind-mounting {source!r} on {target!r} failed")


def bind_preexec(source: Path, target: Path) -> Callable[[], None]:
    """A preexec function: the child gets its own mount namespace with ``source`` mounted on ``target``.

    A partial of a module-level function, so it pickles: the warm runtime runs it in its template's child.
    """
    _libc()  # load before fork: the child only calls into it
    return functools.partial(_enter, os.fsencode(source), os.fsencode(target))


@functools.lru_cache(maxsize=1)
def mount_namespaces_supported() -> bool:
    """Whether this process may create mount namespaces (root with CAP_SYS_ADMIN); probed once in a child."""
    if os.geteuid() != 0:
        return False
    pid = os.fork()
    if pid == 0:  # the child only probes, then leaves without running any Python cleanup
        code = 0 if _libc().unshare(CLONE_NEWNS) == 0 else 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


def ensure_target(target: Path) -> bool:
    """Create the mount point on the host (an empty directory); False when that is not possible."""
    try:
        target.mkdir(parents=True, exist_ok=True)
        return True
    except OSError as e:
        logger.warning("cannot create the mount point %s: %s", target, e)
        return False
