"""Command line: ``python -m dask_k8s_backend {demo, embedded, node, status, gc}``.

Only argument parsing lives here; each subcommand delegates to the module that owns the work
(``demo.main``, ``embedded.cli.run``, ``node.agent.run``, ``admin.run_status`` / ``admin.run_gc``), imported lazily
so ``--help`` stays fast and a missing piece gives a clear message instead of an ImportError.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Callable
from typing import Any

import click

logger = logging.getLogger(__name__)


def _delegate(module: str, function: str) -> Callable[..., Any] | None:
    """The function that implements a subcommand, or None while that module is not written."""
    try:
        return getattr(importlib.import_module(module), function)
    except ImportError as e:
        if e.name == module:  # the module itself is missing, not one of its imports
            return None
        raise
    except AttributeError:
        return None


def _exit(code: Any) -> None:
    sys.exit(int(code or 0))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="dask-k8s-backend")
@click.option("-v", "--verbose", is_flag=True, help="Log at INFO level.")
def cli(verbose: bool) -> None:
    """dask-k8s-backend: Dask workers as Kubernetes pods, managed the way Spark manages executors."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@cli.command()
@click.option("--master", default=None, help="Master URL (default: k8s-backend.master, i.e. embedded://).")
@click.option("--workers", default=4, show_default=True, type=click.IntRange(min=1), help="Workers to scale to.")
@click.option("--quiet", is_flag=True, help="Print only the final report.")
def demo(master: str | None, workers: int, quiet: bool) -> None:
    """Start a cluster, scale it, compute, adapt back to zero and close, reporting each step."""
    main = _delegate("dask_k8s_backend.ops.demo", "main")
    if main is None:
        click.echo(f"demo: would start a KubeSparkCluster on {master or 'embedded://'}, scale to {workers} "
                   "workers, run a computation and close (not implemented yet).")
        return
    _exit(main(master=master, workers=workers, quiet=quiet))


@cli.command()
@click.option("--kubeconfig", type=click.Path(dir_okay=False), required=True,
              help="Where to write the kubeconfig (mode 0600) that kubectl and clients use.")
@click.option("--kubelet", type=click.Choice(["process", "simulated"]), default="process", show_default=True)
@click.option("--nodes", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--cpu", default="4", show_default=True, help="cpu capacity of each node.")
@click.option("--memory", default="8Gi", show_default=True, help="Memory capacity of each node.")
@click.option("--port", type=click.IntRange(0, 65535), default=0, show_default=True, help="0 picks a free port.")
@click.option("--no-tls", is_flag=True, help="Serve plain http (tokens are then not sent by kubectl).")
def embedded(kubeconfig: str, kubelet: str, nodes: int, cpu: str, memory: str, port: int, no_tls: bool) -> None:
    """Serve an embedded Kubernetes in the foreground until interrupted."""
    run = _delegate("dask_k8s_backend.embedded.cli", "run")
    if run is None:
        click.echo("embedded: not implemented yet (dask_k8s_backend.embedded.cli is missing).", err=True)
        sys.exit(1)
    _exit(run(kubeconfig=kubeconfig, kubelet=kubelet, nodes=nodes, cpu=cpu, memory=memory, port=port,
              tls=not no_tls))


@cli.command()
@click.option("--kubeconfig", required=True, help="kubeconfig of the API server to join (any Kubernetes).")
@click.option("--name", required=True, help="Node name.")
@click.option("--kubelet", default="process", show_default=True,
              help="process (pods run as local processes) or simulated (phases only, no processes).")
@click.option("--cpu", default="4", show_default=True, help="cpu capacity.")
@click.option("--memory", default="8Gi", show_default=True, help="Memory capacity.")
@click.option("--pods", type=int, default=110, show_default=True, help="Pod capacity.")
@click.option("--labels", default=None, help="Node labels: k=v,k2=v2.")
@click.option("--taints", default=None, help="Node taints: key=value:NoSchedule,...")
@click.option("--resources", default=None, help="Extended resources: name=qty,... (e.g. nvidia.com/gpu=2).")
@click.option("--port", type=int, default=0, show_default=True, help="Kubelet HTTPS port; 0 picks a free one.")
@click.option("--ip-block", type=int, default=None,
              help="Second octet of the pods' 127.x.y.z IPs (default: derived from the name, 100-254).")
def node(kubeconfig: str, name: str, kubelet: str, cpu: str, memory: str, pods: int, labels: str | None,
         taints: str | None, resources: str | None, port: int, ip_block: int | None) -> None:
    """Join an API server as a node and run the pods bound to it, in the foreground until interrupted."""
    run = _delegate("dask_k8s_backend.embedded.node.agent.node_agent", "run")
    if run is None:
        click.echo("node: not implemented yet (dask_k8s_backend.embedded.node.agent.node_agent is missing).", err=True)
        sys.exit(1)
    _exit(run(kubeconfig=kubeconfig, name=name, kubelet=kubelet, cpu=cpu, memory=memory, pods=pods, labels=labels,
              taints=taints, resources=resources, port=port, ip_block=ip_block))


_MASTER = click.option("--master", default="k8s://", show_default=True,
                       help="Cluster to look at (k8s:// uses the kubeconfig).")
_NAMESPACE = click.option("--namespace", default=None, help="Namespace (default: all the client may list).")


def _admin(function: str, **kwargs: Any) -> None:
    target = _delegate("dask_k8s_backend.ops.admin", function)
    if target is None:
        click.echo(f"{function.removeprefix('run_')}: not implemented yet.", err=True)
        sys.exit(1)
    try:
        _exit(target(**kwargs))
    except ValueError as e:
        raise click.UsageError(str(e)) from None


@cli.command()
@_MASTER
@_NAMESPACE
def status(master: str, namespace: str | None) -> None:
    """List dask-k8s-backend applications and their pods."""
    _admin("run_status", master=master, namespace=namespace)


@cli.command()
@_MASTER
@_NAMESPACE
@click.option("--app", "app_id", default=None, help="Only this application id.")
@click.option("--dry-run", is_flag=True, help="Only print what would be deleted.")
def gc(master: str, namespace: str | None, app_id: str | None, dry_run: bool) -> None:
    """Delete pods left behind by applications whose scheduler is gone."""
    _admin("run_gc", master=master, namespace=namespace, app_id=app_id, dry_run=dry_run)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (``dask-k8s-backend``) and ``python -m dask_k8s_backend``."""
    cli.main(args=argv, prog_name="python -m dask_k8s_backend")
