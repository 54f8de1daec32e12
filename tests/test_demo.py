"""The README's main job: ``python -m dask_k8s_backend demo`` on the embedded default, for real."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.timeout(180)
def test_demo_runs_green_and_leaves_nothing():
    proc = subprocess.run([sys.executable, "-m", "dask_k8s_backend", "demo", "--workers", "3"],
                          capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "OK: results correct, nothing left behind" in out
    assert "pods left after close        0" in out
    assert "(correct)" in out and "WRONG" not in out


def test_demo_quiet_prints_nothing_on_success():
    proc = subprocess.run([sys.executable, "-m", "dask_k8s_backend", "demo", "--workers", "1", "--quiet"],
                          capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == ""
