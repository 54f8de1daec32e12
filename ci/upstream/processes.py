"""Child processes of the launcher: start with a log file, notice death, stop in bounded time.

Why: every component (etcd, the three control-plane binaries, each node agent) must be stopped
on every exit path, and a component that dies during start must be reported with the end of its
log rather than as a timeout. A :class:`Component` owns one process in its own session, so
stopping it also reaches anything it spawned (the process kubelet's pods). Each child also asks
the kernel for SIGKILL when the launcher dies (even by SIGKILL), so no etcd or apiserver outlives
it (SIGKILL, not SIGTERM: a kube-apiserver whose etcd went away at the same moment was seen to
hang in its graceful shutdown; a node agent's pods die with it the same way); the signal follows the *thread* that started the child, so start components from a thread
that lives as long as they should (the main thread, in the launcher and in pytest fixtures).
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path

from dask_k8s_backend.embedded.node.process.parentdeath import die_with_parent

logger = logging.getLogger(__name__)


class ComponentDied(RuntimeError):
    """A component exited while the control plane needed it; the message ends with its log tail."""


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback TCP ports nobody listens on right now.

    All are held open until every one is picked, so no two are equal; the race with other
    programs after they are closed is accepted (a component then fails to bind, loudly).
    """
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def log_tail(path: Path, lines: int = 25) -> str:
    """The last lines of a log file, or a note that there is none."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:]) or f"({path} is empty)"


class Component:
    """One child process whose stdout and stderr go to ``<log_dir>/<name>.log``."""

    def __init__(self, name: str, argv: Sequence[str], *, log_dir: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log = log_dir / f"{name}.log"
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start it; stdin is closed so nothing waits on the launcher's terminal."""
        logger.info("Starting %s (log: %s)", self.name, self.log)
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=self.env,
                start_new_session=True, preexec_fn=functools.partial(die_with_parent, os.getpid(), signal.SIGKILL))

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def check_alive(self) -> None:
        """Raise :class:`ComponentDied` with the log tail if the process has exited."""
        if self.process is None:
            raise ComponentDied(f"{self.name} was never started.")
        code = self.process.poll()
        if code is not None:
            raise ComponentDied(f"{self.name} exited with code {code} while the control plane needed it "
                                f"(command: {' '.join(self.argv)}). Last lines of {self.log}:\n{log_tail(self.log)}")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM to its process group, then SIGKILL after ``timeout`` seconds; idempotent."""
        self.terminate()
        self.wait_or_kill(timeout)

    def terminate(self) -> None:
        """Send SIGTERM to its process group if it still runs (several can then wind down together)."""
        if self.process is not None and self.process.poll() is None:
            logger.info("Stopping %s (pid %s)", self.name, self.process.pid)
            self._signal_group(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL its process group now and reap the leader (a crash, not a shutdown)."""
        if self.process is not None and self.process.poll() is None:
            logger.info("Killing %s (pid %s)", self.name, self.process.pid)
            self._signal_group(signal.SIGKILL)
            self.process.wait(timeout=10)

    def wait_or_kill(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the exit, then SIGKILL; leftovers in its group are killed."""
        process = self.process
        if process is None:
            return
        try:
            process.wait(timeout=max(timeout, 0.0))
        except subprocess.TimeoutExpired:
            logger.warning("%s did not exit %.0f s after SIGTERM; sending SIGKILL", self.name, timeout)
            self._signal_group(signal.SIGKILL)
            process.wait(timeout=10)
        self._reap_group()

    def _signal_group(self, sig: signal.Signals) -> None:
        """Signal the session it leads: the process itself and whatever it started."""
        assert self.process is not None
        try:
            os.killpg(self.process.pid, sig)
        except ProcessLookupError:
            pass

    def _reap_group(self) -> None:
        """Leftovers of an exited leader (e.g. a pod its agent did not stop) still share its group: kill them."""
        if self.process is not None:
            self._signal_group(signal.SIGKILL)
