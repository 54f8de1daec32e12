"""README and CI agree: CI runs the README's test command, verbatim, in a fresh virtual environment."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "ci"))

import gen_config_docs  # noqa: E402
import readme_commands  # noqa: E402


def test_readme_starts_with_exactly_two_setup_commands():
    commands = readme_commands.setup_commands((ROOT / "README.md").read_text())
    assert len(commands) == 2
    assert commands[0].startswith("pip install .") and "python -m dask_k8s_backend demo" in commands[0]
    assert "[test]" in commands[1] and "pytest" in commands[1]


def test_ci_script_takes_its_test_command_from_the_readme():
    script = (ROOT / ".ci" / "run").read_text()
    assert script.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in script
    assert 'ci/readme_commands.py" --test' in script and '"$TEST_COMMAND"' in script
    assert "pytest" not in script.replace("pytest collected", "")  # never a second copy of the command


def test_readme_commands_rejects_a_block_without_exactly_two_commands(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n```bash\n# comment\npip install .\na\nb\n```\n")
    assert readme_commands.main(["--readme", str(readme)]) == 1
    assert "exactly two commands, found 3" in capsys.readouterr().err


def _fake_repo(tmp_path: Path, test_command: str) -> Path:
    """A repository copy whose README's test command is ``test_command``."""
    repo = tmp_path / "repo"
    (repo / ".ci").mkdir(parents=True)
    shutil.copy(ROOT / ".ci" / "run", repo / ".ci" / "run")
    shutil.copytree(ROOT / "ci", repo / "ci", ignore=shutil.ignore_patterns("__pycache__"))
    (repo / "dask_k8s_backend").symlink_to(ROOT / "dask_k8s_backend")
    reference = gen_config_docs.render()
    (repo / "README.md").write_text(f"# t\n\n```bash\ntrue\n{test_command}\n```\n\n{reference}\n")
    return repo


@pytest.mark.parametrize("exit_code, expected", [(0, 0), (3, 3), (5, 1)])
def test_ci_runs_the_readme_command_in_a_fresh_venv_and_fails_on_failure(tmp_path, exit_code, expected):
    probe = tmp_path / "probe"
    command = (f"python -c \"import sys; open('{probe}', 'w').write(sys.prefix + ' ' + sys.base_prefix); "
               f"sys.exit({exit_code})\"")
    repo = _fake_repo(tmp_path, command)
    env = {**os.environ, "DASK_K8S_CI_NO_PIP": "1", "PYTHON": sys.executable}
    result = subprocess.run(["bash", str(repo / ".ci" / "run")], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == expected, result.stderr
    prefix, base = probe.read_text().split(" ")
    assert prefix != base and Path(prefix).name == "venv"  # ran inside the fresh venv
    assert not Path(prefix).exists()  # and the venv was removed afterwards
