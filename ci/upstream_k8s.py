#!/usr/bin/env python3
"""``python ci/upstream_k8s.py build | up``: the upstream Kubernetes control plane on the loopback.

``build`` builds (or reuses) the pinned etcd, kube-apiserver, kube-controller-manager and
kube-scheduler (ci/upstream/build.sh). ``up`` starts them plus N node agents
(``python -m dask_k8s_backend node``), writes the admin kubeconfig (0600, written then renamed),
prints the URL and how to use it, and serves in the foreground until SIGINT/SIGTERM, then stops
everything it started and removes its state: the same shape as ``python -m dask_k8s_backend
embedded``, so anything that takes a kubeconfig can use either.

Only argument parsing, signals and printing live here; the work is in ``ci/upstream/`` (see
its ``__init__``). ``UpstreamKubernetes`` is re-exported for fixtures that start one in-process.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from kubernetes.utils import parse_quantity

from dask_k8s_backend.embedded.api.tls import write_private
from upstream.binaries import BuildError, ensure_built
from upstream.control_plane import KUBELETS, NodeOptions, UpstreamKubernetes
from upstream.processes import ComponentDied
from upstream.readiness import StartTimeout

__all__ = ["UpstreamKubernetes", "NodeOptions", "main"]

logger = logging.getLogger("upstream_k8s")


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived: unwind through every ``finally`` so children are stopped."""


MAX_NODES = 155  # node agents' pod IP blocks 100-254, one each

# -- option types: each error names the option's value and how to fix it (argparse adds the option) --
def _node_count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of nodes; give a whole number >= 0, e.g. --nodes 2")
    if value > MAX_NODES:
        raise argparse.ArgumentTypeError(f"{text!r} nodes: at most {MAX_NODES} (each node agent takes one block "
                                         "of pod IPs 127.100-254.x.y); give fewer, e.g. --nodes 20")
    return value


def _quantity(kind: str, example: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        try:
            ok = parse_quantity(text) > 0
        except ValueError:
            ok = False
        if not ok:
            raise argparse.ArgumentTypeError(f"{text!r} is not a positive Kubernetes {kind} quantity; "
                                             f"write it the way a Node's capacity does, e.g. {example}")
        return text
    return parse


def _pod_capacity(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a pod capacity; give a whole number >= 1, e.g. --pods 250")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds, e.g. 180")
    return value


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python ci/upstream_k8s.py", description=__doc__.split("\n\n")[0])
    top.add_argument("-q", "--quiet", action="store_true", help="log warnings only (default: progress at INFO)")
    commands = top.add_subparsers(dest="command", required=True)
    commands.add_parser("build", help="build (or reuse) the pinned upstream binaries; prints their bin directory")
    up = commands.add_parser("up", help="start the control plane and node agents; serve until interrupted")
    up.add_argument("--kubeconfig", required=True, type=_kubeconfig_path,
                    help="where to write the admin kubeconfig (mode 0600) that kubectl and clients use")
    up.add_argument("--nodes", type=_node_count, default=1, help="node agents to start (default: 1)")
    up.add_argument("--kubelet", choices=KUBELETS, default="process", help="node agents' runtime (default: process)")
    up.add_argument("--cpu", type=_quantity("cpu", "4 or 500m"), default="4", help="cpu capacity per node (default: 4)")
    up.add_argument("--memory", type=_quantity("memory", "8Gi or 512Mi"), default="8Gi",
                    help="memory capacity per node (default: 8Gi)")
    up.add_argument("--pods", type=_pod_capacity, default=110,
                    help="pod capacity per node (default: 110, the kubelet's); e.g. 250 with --nodes 20 for 5000 pods")
    up.add_argument("--start-timeout", type=_seconds, default=180.0,
                    help="seconds each start step may take (default: 180)")
    up.add_argument("--keep-logs", type=Path, default=None,
                    help="copy the component logs to this directory on exit (the state directory is removed)")
    return top


def _kubeconfig_path(text: str) -> Path:
    target = Path(text).expanduser()
    if target.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a directory; give a file path, e.g. {target / 'kubeconfig'}")
    return target


@contextmanager
def _signals_raise() -> Iterator[None]:
    """The first SIGINT/SIGTERM raises :class:`Interrupted`; later ones are ignored so cleanup can finish."""
    fired = threading.Event()

    def handler(signum: int, _frame: object) -> None:
        if fired.is_set():
            logger.warning("Signal %s again: still stopping (bounded), please wait", signum)
            return
        fired.set()
        raise Interrupted(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _publish_kubeconfig(source: str, target: Path) -> None:
    """Copy 0600 under a temporary name, then rename: a reader never sees it partial or readable by others."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    write_private(partial, Path(source).read_bytes())
    os.replace(partial, target)


def _serve(kube: UpstreamKubernetes, args: argparse.Namespace, target: Path) -> int:
    """Print how to use it, then wait for a signal; a component that dies ends the run with exit code 1."""
    version = (kube.admin_api().get_json("/version") or {}).get("gitVersion", "?")
    print(f"Upstream Kubernetes {version} serving at {kube.url} "
          f"({args.nodes} {args.kubelet} node(s); state and logs: {kube.state_dir})", flush=True)
    print(f"kubeconfig: {target}  (try: kubectl --kubeconfig {target} get nodes)", flush=True)
    print(f"Suites on it: python -m pytest tests/upstream tests/cluster --k8s-master k8s:// --k8s-kubeconfig {target}",
          flush=True)
    print("Press Ctrl-C to stop.", flush=True)
    while True:
        try:
            kube.check_alive()
        except ComponentDied as e:
            print(f"upstream_k8s: {e}", file=sys.stderr, flush=True)
            return 1
        time.sleep(1.0)


def up(args: argparse.Namespace, target: Path) -> int:
    """Start, publish the kubeconfig, serve; exit code 0 after a signal, 1 when starting or serving failed."""
    nodes = NodeOptions(count=args.nodes, kubelet=args.kubelet, cpu=args.cpu, memory=args.memory,
                        pods=args.pods)
    try:
        with _signals_raise():
            with UpstreamKubernetes(nodes=nodes, start_timeout=args.start_timeout, keep_logs=args.keep_logs) as kube:
                _publish_kubeconfig(kube.kubeconfig, target)
                return _serve(kube, args, target)
    except Interrupted as e:
        print(f"Stopped the upstream Kubernetes ({e}).", flush=True)
        return 0
    except (BuildError, ComponentDied, StartTimeout) as e:
        print(f"upstream_k8s: {e}", file=sys.stderr, flush=True)
        return 1


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 done, 1 start/serve failed, 2 bad options or (build) the binaries cannot be built."""
    top = parser()
    args = top.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "build":
        try:
            print(ensure_built())
        except BuildError as e:
            print(f"upstream_k8s: {e}", file=sys.stderr)
            return 2
        return 0
    return up(args, args.kubeconfig)


if __name__ == "__main__":
    sys.exit(main())
