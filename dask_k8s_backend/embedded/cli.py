"""``python -m dask_k8s_backend embedded``: serve an embedded Kubernetes in the foreground.

:func:`run` starts an :class:`EmbeddedKubernetes`, copies its kubeconfig to the path the user
chose (mode 0600), prints the URL and how to use it, and blocks until SIGINT or SIGTERM, then
stops everything it started.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

from .api.tls import write_private
from .cluster import EmbeddedKubernetes


def run(kubeconfig: str, kubelet: str, nodes: int, cpu: str, memory: str, port: int, tls: bool) -> int:
    """Serve until interrupted; returns the process exit code (0)."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    kubelet_kind = None if kubelet in (None, "", "none") else kubelet
    try:
        with EmbeddedKubernetes(kubelet=kubelet_kind, nodes=nodes, cpu=cpu, memory=memory, port=port,
                                tls=tls) as kube:
            target = Path(kubeconfig).expanduser()
            target.parent.mkdir(parents=True, exist_ok=True)
            # Written 0600 under a temporary name, then renamed: a reader never sees it partial or readable.
            partial = target.with_name(f".{target.name}.partial")
            write_private(partial, Path(kube.kubeconfig).read_bytes())  # type: ignore[arg-type]
            os.replace(partial, target)
            print(f"Embedded Kubernetes serving at {kube.url} ({nodes} {kubelet} node(s))", flush=True)
            print(f"kubeconfig: {target}  (try: kubectl --kubeconfig {target} get nodes)", flush=True)
            print("Press Ctrl-C to stop.", flush=True)
            while not stop.wait(0.5):
                pass
            print("Stopping the embedded Kubernetes...", flush=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
