"""Where the kubectl binaries of several versions are: the default ``kubectl`` and ``kubectl.1.NN`` beside it.

The kubectl tests run with each version in :data:`KUBECTL_VERSIONS`; a missing one fails the run
under ``CI=true`` (CI must not lose a version silently) and is skipped with the same reason elsewhere.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

# The oldest and the newest of the kubectl.1.NN binaries installed beside the default kubectl, and
# the default itself (None): the kubectl tests run with each against both servers (issue 14).
KUBECTL_VERSIONS = ("1.27", "1.33", None)


def kubectl_id(version: str | None) -> str:
    return f"kubectl-{version or 'default'}"


def _missing_kubectl(message: str) -> None:
    """CI must not skip a kubectl version silently: a failure there, a skip with the reason elsewhere."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def find_kubectl(version: str | None) -> str:
    """The path of ``kubectl`` (``version`` None) or ``kubectl.<version>`` beside the resolved ``kubectl``.

    The versioned binaries sit in the folder of the default kubectl after following its symlinks
    (PATH often holds a link to it), so that folder is where they are looked for.
    """
    default = shutil.which("kubectl")
    if default is None:
        _missing_kubectl(f"kubectl is not on PATH ({os.environ.get('PATH', '')}); install kubectl to run the "
                         "kubectl tests")
    if version is None:
        return default
    folder = Path(default).resolve().parent
    binary = folder / f"kubectl.{version}"
    if not os.access(binary, os.X_OK):
        _missing_kubectl(f"kubectl {version} is missing: no executable {binary.name} in {folder}, the folder of "
                         f"the resolved kubectl ({default} -> {Path(default).resolve()})")
    return str(binary)
