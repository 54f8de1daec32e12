#!/usr/bin/env python
"""Run the chaos scenarios of tests/reliability on a fresh embedded Kubernetes and print figures.

Usage: ``python ci/chaos.py [--seed N]``. Exit status 0 only when every scenario ended with a
correct result, no pod leaked and no executor id reused. The figures (kills survived, faults
injected, pods created vs. target + replacements, pods leaked, wrong results) are what the
Reliability page (docs/reliability.md) quotes.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from reliability.scenarios import (  # noqa: E402
    run_api_faults, run_client_kill_while_pending, run_kill_chaos, run_scheduler_kill,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=7, help="seed of the kill timing and victims (default 7)")
    parser.add_argument("--kills", type=int, default=6, help="workers killed during the computation (default 6)")
    args = parser.parse_args(argv)
    import distributed  # noqa: F401  (configures its loggers; quieten them after)
    from dask_k8s_backend.embedded.cluster import EmbeddedKubernetes

    logging.basicConfig(level=logging.ERROR)
    for name in ("distributed", "dask_k8s_backend"):
        logging.getLogger(name).setLevel(logging.CRITICAL)

    started = time.monotonic()
    with EmbeddedKubernetes(kubelet="process", nodes=2, cpu="8", memory="16Gi", faults=True) as kube:
        kills = run_kill_chaos(kube, seed=args.seed, target=4, kills=args.kills)
        faults = run_api_faults(kube, seed=args.seed + 4, target=3)
        dead = run_scheduler_kill(kube, workers=2)
        orphans = run_client_kill_while_pending(kube, pending=2)
    wrong = int(not kills.result_correct) + int(not faults.result_correct)
    leaked = kills.pods_leaked + faults.pods_leaked + dead.pods_leaked + orphans.pods_leaked
    reused = kills.executor_ids_reused + faults.executor_ids_reused
    gc_summary = "; ".join(line for line in dead.gc_output.splitlines() if "deleted" in line or "secret" in line)
    print(f"chaos summary (seed {args.seed}, {time.monotonic() - started:.0f} s)")
    print(f"  kills survived:        {len(kills.kills)} "
          f"({', '.join(f'{m} of executor {e} at {t:.1f}s' for t, m, e in kills.kills)})")
    print(f"  recovered to target:   {kills.target} workers {kills.recovery_seconds:.1f} s after the last kill")
    print(f"  pods created (kills):  {kills.pods_created} <= target {kills.target} + replacements {len(kills.kills)}")
    print(f"  faults injected:       {faults.errors_injected} error answers (429/503), {faults.watch_drops} "
          f"watch streams dropped, 1 outage of {faults.outage_seconds:.0f} s, {faults.replacements} pods deleted")
    print(f"  pods created (faults): {faults.pods_created} <= target {faults.target} + replacements "
          f"{faults.replacements}; caught up {faults.caught_up_seconds:.1f} s after the outage")
    print(f"  scheduler SIGKILLed:   {dead.workers} worker pods exited in {dead.exit_seconds:.1f} s "
          f"(death-timeout {dead.death_timeout:.0f} s), gc: {gc_summary}")
    print(f"  client SIGKILLed while Pending: {orphans.pending} Pending pods, left alone by gc while alive "
          f"({orphans.left_by_early_gc}), dead by heartbeat {orphans.dead_after_seconds:.1f} s after the kill "
          f"(lease {orphans.lease_duration:.0f} s), gone {orphans.gone_after_gc_seconds:.1f} s after gc without --app")
    print(f"  executor ids reused:   {len(reused)}")
    print(f"  pods leaked:           {leaked}")
    print(f"  wrong results:         {wrong}")
    ok = (not wrong and leaked == 0 and not reused and orphans.left_by_early_gc == orphans.pending and kills.pods_created <= kills.target + len(kills.kills)
          and faults.pods_created <= faults.target + faults.replacements)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
