"""What a ``dask worker`` pod imports before its worker starts, beyond distributed itself.

``dask worker`` is dask's click CLI, and dask's CLI loads every ``dask_cli`` entry point of the
environment before it runs any subcommand. dask-kubernetes registers one (``dask kubernetes``),
whose import pulls in kopf, kr8s and kubernetes_asyncio: about 1 s of CPU on every worker start
(``dask worker --help``: 1.3 s user with dask-kubernetes installed, 0.45 s without, 2 cores).
On the embedded Kubernetes the pods run the environment of the server's interpreter, so a
benchmark whose workers are ``dask worker`` pods must not run them where dask-kubernetes is
installed, or every pod pays that import (and LocalCluster, which does not run the CLI, does not).
"""

from __future__ import annotations

import json
import subprocess
import sys

_LIST_FOREIGN = (
    "import importlib.metadata as m, json; "
    "print(json.dumps(sorted(f'{e.name} = {e.value}' for e in m.entry_points(group='dask_cli') "
    "if not e.value.startswith('distributed.'))))"
)


def foreign_dask_cli_commands(python: str = sys.executable) -> list[str]:
    """The ``dask_cli`` entry points other than distributed's that ``python``'s ``dask worker`` would import."""
    out = subprocess.run([python, "-c", _LIST_FOREIGN], capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout)


def server_python() -> str:
    """The interpreter to run the embedded server (and so its pods) with: outside any venv.

    Why: the bench extra (dask-kubernetes) belongs in a venv of its own; its base interpreter
    runs the pods without the ``dask kubernetes`` CLI plugin.
    """
    in_venv = sys.prefix != sys.base_prefix
    return getattr(sys, "_base_executable", sys.executable) if in_venv else sys.executable


def warn_foreign_commands(python: str) -> list[str]:
    """Print a warning naming the CLI plugins every ``dask worker`` pod of ``python`` would import."""
    foreign = foreign_dask_cli_commands(python)
    if foreign:
        print(f"WARNING: {python}'s `dask worker` loads dask CLI plugins at every start ({'; '.join(foreign)}): "
              "each worker pod pays their import. Install the bench extra in a venv of its own "
              "(see docs/performance.md).", file=sys.stderr, flush=True)
    return foreign
