#!/usr/bin/env python3
"""CI's upstream stage: build (or reuse) the upstream control plane, start it, run the suites on it, stop it.

Why a script of its own: the stage owns a background launcher that must be stopped on every exit
path (a failed suite, a timeout, SIGINT/SIGTERM from CI), and it runs several pytest commands
with their own options, which .ci/run keeps out of itself (that file runs the README's command
and nothing else that looks like it). Standard library only, so it runs in any venv.

Data flow: ``python ci/upstream_k8s.py build`` (Go missing -> the stage fails with that
message; never skipped) -> ``up --kubeconfig WORK/upstream.kubeconfig --nodes 2 --kubelet
process`` in the background -> wait for the kubeconfig -> each suite in :data:`SUITES` in turn
(exit 5, "no tests collected", is a failure) -> SIGTERM to the launcher (SIGKILL after a bound)
-> a summary with every step's result and duration. Exit code 0 only if every step passed.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAUNCHER = ROOT / "ci" / "upstream_k8s.py"
NODES = 2
START_TIMEOUT = 420.0  # a loaded 2-core machine starts the control plane in ~15 s; agents add their own start
STOP_TIMEOUT = 120.0  # the launcher: agents 45 s (pod grace periods), then 4 components x 10 s
# All suites together; with the README suite before it, CI stays under 45 minutes on a warm cache.
SUITES_BUDGET = 1500.0


@dataclass(frozen=True)
class Suite:
    """One pytest command against the running control plane; ``{kc}`` is the kubeconfig path."""

    name: str
    args: tuple[str, ...]
    timeout: float


SUITES = (
    Suite("tests/upstream (kubectl smoke: version, nodes, run/logs/delete; cluster mode under deploy/rbac.yaml)",
          ("tests/upstream", "--k8s-kubeconfig", "{kc}"), 300),
    Suite("node agent (tests/node: registration, lease, phases, logs via pods/log, SIGTERM/SIGKILL, tokens)",
          ("tests/node", "--k8s-kubeconfig", "{kc}"), 300),
    # The same requests against the embedded API server and this one (issue 14's differential conformance).
    Suite("API conformance, embedded vs upstream (tests/embedded/test_api_conformance.py)",
          ("tests/embedded/test_api_conformance.py", "--k8s-kubeconfig", "{kc}"), 300),
    # kubectl 1.27, 1.33 and the default one against the embedded server and this one (issue 14).
    Suite("kubectl of several versions, embedded vs upstream (tests/embedded/test_api_kubectl.py)",
          ("tests/embedded/test_api_kubectl.py", "--k8s-kubeconfig", "{kc}"), 300),
    # Real RBAC (ServiceAccounts with exactly each restricted user's Role, deploy/rbac.yaml as shipped)
    # and upstream's quota and LimitRange admission.
    Suite("preflight (tests/preflight: real RBAC, deploy/rbac.yaml client mode, quota and LimitRange admission)",
          ("tests/preflight", "--k8s-kubeconfig", "{kc}"), 300),
    # Its fixture applies deploy/rbac.yaml and runs the cluster-mode scheduler pod as that
    # ServiceAccount: the shipped Role alone authorizes it, as on a user's cluster.
    Suite("KubeSparkCluster suites (tests/cluster)",
          ("tests/cluster", "--k8s-master", "k8s://", "--k8s-kubeconfig", "{kc}"), 1200),
)


@dataclass
class Step:
    name: str
    ok: bool
    seconds: float
    detail: str = ""


class Interrupted(BaseException):
    """SIGINT/SIGTERM: unwind so the launcher is stopped."""


def _raise_interrupted(signum: int, _frame: object) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Interrupted(signal.Signals(signum).name)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no {path})"


def build() -> Step:
    """Build or reuse the binaries; its output (and a missing-Go message) goes straight to the CI log."""
    start = time.monotonic()
    code = subprocess.call([sys.executable, str(LAUNCHER), "build"], cwd=ROOT)
    return Step("build or reuse upstream binaries", code == 0, time.monotonic() - start,
                "" if code == 0 else f"exit code {code} (see above)")


def start_launcher(work: Path, kubeconfig: Path) -> subprocess.Popen[bytes]:
    """Start ``up`` in the background; its output goes to WORK/upstream-launcher.log."""
    argv = [sys.executable, str(LAUNCHER), "up", "--kubeconfig", str(kubeconfig), "--nodes", str(NODES),
            "--kubelet", "process", "--keep-logs", str(work / "upstream-logs")]
    print(f"+ {' '.join(argv[1:])} &  (log: {work / 'upstream-launcher.log'})", flush=True)
    with open(work / "upstream-launcher.log", "wb") as out:
        return subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)


def wait_for_kubeconfig(launcher: subprocess.Popen[bytes], work: Path, kubeconfig: Path) -> Step:
    """The launcher writes the kubeconfig only once every node is Ready: its appearance means "usable"."""
    log = work / "upstream-launcher.log"
    start = time.monotonic()
    while not kubeconfig.exists():
        if launcher.poll() is not None:
            return Step("start upstream control plane", False, time.monotonic() - start,
                        f"launcher exited with {launcher.returncode}:\n{_tail(log)}")
        if time.monotonic() - start > START_TIMEOUT:
            return Step("start upstream control plane", False, time.monotonic() - start,
                        f"no kubeconfig after {START_TIMEOUT:.0f} s:\n{_tail(log)}")
        time.sleep(1)
    print(_tail(log, 4), flush=True)
    return Step("start upstream control plane", True, time.monotonic() - start)


def run_suite(suite: Suite, kubeconfig: Path, deadline: float) -> Step:
    """One pytest run, bounded by its own timeout and by what is left of :data:`SUITES_BUDGET`."""
    timeout = min(suite.timeout, deadline - time.monotonic())
    if timeout <= 0:
        return Step(suite.name, False, 0.0, f"not run: the {SUITES_BUDGET:.0f} s budget of all suites is spent")
    argv = [sys.executable, "-m", "pytest", "-q", *(a.format(kc=kubeconfig) for a in suite.args)]
    print(f"+ {' '.join(argv[1:])}", flush=True)
    env = {**os.environ, "DASK_K8S_UPSTREAM_NODES": str(NODES)}
    start = time.monotonic()
    try:
        code = subprocess.call(argv, cwd=ROOT, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return Step(suite.name, False, time.monotonic() - start, f"timed out after {timeout:.0f} s")
    detail = {0: "", 5: "exit 5: no tests collected, which is a failure"}.get(code, f"pytest exit code {code}")
    return Step(suite.name, code == 0, time.monotonic() - start, detail)


def stop_launcher(launcher: subprocess.Popen[bytes], work: Path) -> Step:
    """SIGTERM (the launcher stops agents, then the control plane), SIGKILL after :data:`STOP_TIMEOUT`."""
    start = time.monotonic()
    if launcher.poll() is not None:
        return Step("stop upstream control plane", False, 0.0,
                    f"launcher had already exited with {launcher.returncode}:\n{_tail(work / 'upstream-launcher.log')}")
    launcher.send_signal(signal.SIGTERM)
    try:
        code = launcher.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        launcher.kill()
        launcher.wait()
        return Step("stop upstream control plane", False, time.monotonic() - start,
                    f"still running {STOP_TIMEOUT:.0f} s after SIGTERM; killed (its children may remain)")
    return Step("stop upstream control plane", code == 0, time.monotonic() - start,
                "" if code == 0 else f"launcher exit code {code}:\n{_tail(work / 'upstream-launcher.log')}")


def print_agent_logs(work: Path) -> None:
    """After a failure: the end of each component log the launcher kept (the work dir is removed by CI)."""
    for log in sorted((work / "upstream-logs").glob("*.log")):
        print(f"--- last lines of {log.name} ---\n{_tail(log, 30)}", flush=True)


def summary(steps: list[Step]) -> None:
    print("\nUpstream stage summary:", flush=True)
    for step in steps:
        print(f"  {'PASS' if step.ok else 'FAIL'}  {step.seconds:7.1f} s  {step.name}", flush=True)
        if step.detail:
            print("        " + step.detail.replace("\n", "\n        "), flush=True)


def run(work: Path) -> int:
    steps = [build()]
    if not steps[-1].ok:
        summary(steps)
        return 1
    kubeconfig = work / "upstream.kubeconfig"
    launcher = start_launcher(work, kubeconfig)
    try:
        steps.append(wait_for_kubeconfig(launcher, work, kubeconfig))
        if steps[-1].ok:
            deadline = time.monotonic() + SUITES_BUDGET
            for suite in SUITES:
                steps.append(run_suite(suite, kubeconfig, deadline))
    finally:
        steps.append(stop_launcher(launcher, work))
        if not all(s.ok for s in steps):
            print_agent_logs(work)
        summary(steps)
    return 0 if all(s.ok for s in steps) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="scratch directory for the kubeconfig and logs")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGINT, _raise_interrupted)
    signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        return run(args.work)
    except Interrupted as e:
        print(f"Upstream stage interrupted ({e}); the launcher was stopped.", file=sys.stderr, flush=True)
        return 130


if __name__ == "__main__":
    sys.exit(main())
