"""Tie a process's life to its parent's: Linux's parent-death signal (``prctl(PR_SET_PDEATHSIG)``).

Why: the process kubelet runs inside whatever Python process holds the embedded Kubernetes (a
notebook, ``python -m dask_k8s_backend embedded``). If that process is killed with SIGKILL, no
Python code runs, so nothing could stop its pods; the kernel can, when each container process
(and the warm runtime's template) asked for a signal on its parent's death.

Data flow: called in a freshly forked child (Popen's ``preexec_fn``, or the warm template's child)
with the pid the parent had before the fork. The signal is delivered when the *thread* that forked
the child exits, so callers fork from threads that live as long as the children should.

Standard library only: the warm template imports it before anything else.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1

# The interpreter's own symbols include libc's (find_library would run ldconfig in a subprocess).
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def supported() -> bool:
    """True where the kernel offers a parent-death signal (Linux)."""
    return _libc is not None


def die_with_parent(parent_pid: int, sig: int = signal.SIGKILL) -> None:
    """Ask for ``sig`` when the parent dies; exit at once if it already died before this call.

    Resolved before any fork (module import), so the forked child only makes one foreign call.
    """
    if _libc is None:
        return
    _libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died between fork and prctl: the signal would never come
        os._exit(128 + int(sig))
