"""Where the pinned upstream binaries are, building them with ci/upstream/build.sh when missing.

Why a wrapper around the shell script: the launcher must say "Go >= 1.26 is needed" in one line
before a build starts (not halfway through a stack trace), and must reuse a finished cache
folder without invoking Go at all. The script stays the one place that knows how to build and
where the cache folder is.
"""

from __future__ import annotations

import fcntl
import logging
import shutil
import subprocess
from pathlib import Path

logger = logging.getLogger(__name__)

BUILD_SCRIPT = Path(__file__).resolve().parent / "build.sh"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")


class BuildError(RuntimeError):
    """The binaries are missing and cannot be built here."""


def _require_go() -> None:
    if shutil.which("go") is None:
        raise BuildError("Go >= 1.26 is needed to build the upstream Kubernetes control plane (etcd, kube-apiserver, "
                         "kube-controller-manager, kube-scheduler), and `go` is not on PATH: install Go and retry.")


def _complete(folder: Path) -> bool:
    return (folder / "COMPLETE").is_file() and all((folder / "bin" / b).is_file() for b in BINARIES)


def cache_folder() -> Path:
    """The folder build.sh builds into for the current pins (it hashes the Go version, so Go is required)."""
    _require_go()
    out = subprocess.run([str(BUILD_SCRIPT), "--print"], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def build() -> Path:
    """Build, or reuse the cache; returns the ``bin`` directory. Build output goes to stderr as it runs."""
    _require_go()
    result = subprocess.run([str(BUILD_SCRIPT)], stdout=subprocess.PIPE, text=True)
    if result.returncode != 0:
        raise BuildError(f"{BUILD_SCRIPT} failed with exit code {result.returncode}; its output above says why.")
    folder = Path(result.stdout.strip().splitlines()[-1])
    if not _complete(folder):
        raise BuildError(f"{BUILD_SCRIPT} reported {folder}, but it lacks COMPLETE or one of {', '.join(BINARIES)}.")
    return folder / "bin"


def ensure_built() -> Path:
    """The ``bin`` directory, building only when the cache folder for the current pins is incomplete.

    Launchers started together (parallel CI jobs, pytest-xdist) serialize on a lock next to the
    cache, so only the first one builds and the others reuse its result.
    """
    folder = cache_folder()
    if _complete(folder):
        logger.info("Reusing upstream binaries in %s", folder)
        return folder / "bin"
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _complete(folder):
            return folder / "bin"
        return build()
