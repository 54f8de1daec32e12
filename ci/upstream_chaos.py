#!/usr/bin/env python
"""Run the chaos scenarios that need a real control plane (ci/upstream/chaos.py) and print figures.

Usage: ``python ci/upstream_chaos.py [--only restart,compaction,node-loss] [--deadline 900]``.
Starts its own UpstreamKubernetes twice: two simulated node agents (64 cpu each) for the API server
restart during scale(50) and the etcd compaction, then two process node agents for the node loss.
Exit status 0 only when every scenario held; 1 when one did not; 2 when one raised or the whole run
passed ``--deadline`` seconds (SIGALRM). The printed lines are what the README quotes.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import FrameType

sys.path.insert(0, str(Path(__file__).resolve().parent))

from upstream.chaos import run_apiserver_restart, run_etcd_compaction, run_node_loss  # noqa: E402
from upstream.control_plane import NodeOptions, UpstreamKubernetes  # noqa: E402

SCENARIOS = ("restart", "compaction", "node-loss")
SIMULATED = NodeOptions(count=2, kubelet="simulated", cpu="64", memory="128Gi")
PROCESS = NodeOptions(count=2, kubelet="process", cpu="4", memory="8Gi")


class DeadlinePassed(RuntimeError):
    """The whole run took longer than --deadline."""


def _alarm(signum: int, frame: FrameType | None) -> None:
    raise DeadlinePassed("ci/upstream_chaos.py passed its --deadline")


def restart_lines(kube: UpstreamKubernetes) -> tuple[bool, list[str]]:
    r = run_apiserver_restart(kube, target=50)
    return r.ok, [
        f"  API server restarted during scale({r.target}): restarted when {r.pods_before_restart} pods existed, "
        f"not serving for {r.outage_seconds:.1f} s",
        f"    watch resumed {r.watch_restarts} time(s), of which {r.watch_relists} by listing again (410 Gone)",
        f"    pods ever seen: {r.pods_seen}, creates that succeeded: {r.pods_created} (target {r.target}); "
        f"executor ids twice: {len(r.executor_ids_twice)}; highest id {r.highest_executor_id} "
        f"({r.highest_executor_id - r.pods_created} creations refused while it was down, ids never reused)",
        f"    {r.target} Running {r.target_seconds:.1f} s after scale({r.target})",
    ]


def compaction_lines(kube: UpstreamKubernetes) -> tuple[bool, list[str]]:
    r = run_etcd_compaction(kube, target=20)
    return r.ok, [
        f"  etcd compacted to revision {r.revision_compacted} after churn ({r.churn}), then the API server restarted",
        f"    the backend's watch listed again {r.watch_relists} time(s) (410 Gone); executors == Running pods: "
        f"{r.executors_equal_pods}; target {r.target} held 5 s later: {r.target_held}; "
        f"executor ids twice: {len(r.executor_ids_twice)}",
    ]


def node_loss_lines(kube: UpstreamKubernetes) -> tuple[bool, list[str]]:
    r = run_node_loss(kube, target=4, toleration_seconds=10)
    return r.ok, [
        f"  node agent {r.victim_node} SIGKILLed with executors {r.executors_lost} while a dask.array sum ran",
        f"    unreachable taint after {r.unreachable_seconds:.1f} s (node-monitor-grace 20 s), pods evicted after "
        f"{r.evicted_seconds:.1f} s (tolerationSeconds {r.toleration_seconds} in the pod template), reported lost by "
        f"the backend after {r.reported_lost_seconds:.1f} s",
        f"    back at {r.target} registered workers on {r.replacements_node} {r.replaced_seconds:.1f} s after "
        f"the kill; "
        f"result correct: {r.result_correct}",
    ]


def run_group(nodes: NodeOptions, scenarios: list[Callable[[UpstreamKubernetes], tuple[bool, list[str]]]],
              keep_logs: Path | None) -> tuple[int, list[str]]:
    """One control plane for the given scenarios: (failures, printed lines); a raise counts as failure."""
    failures, lines = 0, []
    with UpstreamKubernetes(nodes=nodes, keep_logs=keep_logs) as kube:
        for scenario in scenarios:
            try:
                ok, out = scenario(kube)
            except Exception as e:
                traceback.print_exc()
                ok, out = False, [f"  {scenario.__name__.removesuffix('_lines')}: raised {type(e).__name__}: {e}"]
            failures += not ok
            lines += out if ok else [out[0] + "  <-- FAILED", *out[1:]]
    return failures, lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(SCENARIOS), help=f"comma-separated subset of {', '.join(SCENARIOS)}")
    parser.add_argument("--deadline", type=int, default=900, help="seconds for the whole run (default 900)")
    parser.add_argument("--keep-logs", type=Path, default=None, help="copy the component logs here")
    parser.add_argument("--log-file", type=Path, default=None,
                        help="log distributed and the backend at INFO into this file (quiet otherwise)")
    args = parser.parse_args(argv)
    chosen = set(args.only.split(","))
    if args.log_file:
        logging.basicConfig(filename=args.log_file, level=logging.INFO, force=True)
    else:
        logging.basicConfig(level=logging.ERROR)
    for name in ("distributed", "dask_k8s_backend"):
        logging.getLogger(name).setLevel(logging.INFO if args.log_file else logging.CRITICAL)
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(args.deadline)
    started = time.monotonic()
    failures, lines = 0, []
    try:
        simulated = [f for n, f in (("restart", restart_lines), ("compaction", compaction_lines)) if n in chosen]
        for nodes, group in ((SIMULATED, simulated), (PROCESS, [node_loss_lines] if "node-loss" in chosen else [])):
            if group:
                f, out = run_group(nodes, group, args.keep_logs)
                failures, lines = failures + f, lines + out
    except DeadlinePassed as e:
        print(f"{e}; lines so far:", *lines, sep="\n")
        return 2
    finally:
        signal.alarm(0)
    print(f"upstream chaos summary (kube-apiserver v1.36.3, {time.monotonic() - started:.0f} s)")
    print(*lines, sep="\n")
    print(f"  scenarios failed: {failures}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
