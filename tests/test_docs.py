"""The documentation site builds with ``mkdocs build --strict``: any warning (a broken link or anchor, a page
missing from the navigation, a docstring mkdocstrings cannot render, a missing snippet) fails the suite."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "ci"))

import gen_config_docs  # noqa: E402

BUILD_TIMEOUT = 180  # seconds; the build takes about 2 s on 2 cores


def test_docs_site_builds_strict_without_warnings(tmp_path):
    try:
        import mkdocs  # noqa: F401
    except ImportError:
        pytest.fail("mkdocs is missing: the docs tools come with the test extra, pip install '.[test]'")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # Material's end-of-life banner is not a build warning
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    warnings = [line for line in output.splitlines() if "WARNING" in line or "ERROR" in line]
    assert not warnings, "\n".join(warnings)
    api = (tmp_path / "site" / "api" / "index.html").read_text(encoding="utf-8")
    for name in ("cluster.kube_spark_cluster.KubeSparkCluster", "cluster.kube_spark_cluster.KubeSparkCluster.add_worker_group",
                 "config.load_settings", "kube.errors.NotFound", "cluster.preflight.MissingPermissionsError",
                 "cluster.waiting.ExecutorFailuresError", "backend.allocation.stranded.WorkerGroupStopped"):
        assert f'id="dask_k8s_backend.{name}"' in api, f"{name} is missing from the API reference"
    for command in ("demo", "embedded", "node", "status", "gc"):  # the command line, from the click commands
        assert f"python -m dask_k8s_backend {command} [OPTIONS]" in api, command
    assert (tmp_path / "site" / "configuration" / "index.html").exists()


def test_configuration_page_is_current():
    page = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert gen_config_docs.splice(page) == page, "run: python ci/gen_config_docs.py"
    assert "`k8s-backend.worker.memory`" in page


def test_readme_links_to_every_docs_page_and_every_link_resolves():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    linked = set(re.findall(r"\]\((docs/[^)#\s]+)", readme))
    pages = {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")}
    assert pages <= linked, f"not linked from README.md: {sorted(pages - linked)}"
    relative = [t for t in re.findall(r"\]\(([^)#\s]+)", readme) if "://" not in t]
    assert all((ROOT / t).exists() for t in relative), [t for t in relative if not (ROOT / t).exists()]
    assert not gen_config_docs.has_markers(readme), "the configuration reference lives in docs/configuration.md"


def test_every_docs_page_is_in_the_navigation():
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    pages = sorted(p.name for p in (ROOT / "docs").glob("*.md"))
    assert pages and all(f" {name}" in nav for name in pages), pages
