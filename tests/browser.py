"""Headless Chromium for tests that look at HTML the way a user's browser does.

``render(html_file)`` loads a file in a fresh, isolated Chromium profile and returns the DOM after
scripts and layout ran (``--dump-dom``), and writes a screenshot beside it when asked. Imported as
``from browser import ...`` (pytest puts ``tests/`` on ``sys.path`` for its conftest).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync")
TIMEOUT = 90


def chromium_or_skip() -> str:
    """The chromium binary; missing, a skip on a laptop but a failure in CI (CI=true), where ci/install_chromium.sh
    should have installed it."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary:
        return binary
    message = "chromium is not installed (Debian: apt-get install -y chromium, or run ci/install_chromium.sh)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def artifacts_dir() -> Path:
    """Where screenshots are kept: $DASK_K8S_ARTIFACTS (CI collects it), else a new temporary directory."""
    path = Path(os.environ.get("DASK_K8S_ARTIFACTS") or tempfile.mkdtemp(prefix="dask-k8s-artifacts-"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _run(binary: str, *args: str) -> str:
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        done = subprocess.run([binary, *FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=TIMEOUT)
    if done.returncode != 0:
        raise AssertionError(f"chromium {' '.join(args)} exited with {done.returncode}:\n{done.stderr[-2000:]}")
    return done.stdout


def render(html_file: Path, screenshot: Path | None = None) -> str:
    """The DOM Chromium built from ``html_file``; with ``screenshot``, also a 1200x900 PNG of the page."""
    binary = chromium_or_skip()
    url = html_file.resolve().as_uri()
    if screenshot is not None:
        _run(binary, f"--screenshot={screenshot}", "--window-size=1200,900", url)
        if not screenshot.exists():
            raise AssertionError(f"chromium wrote no screenshot at {screenshot}")
    return _run(binary, "--dump-dom", url)
