"""What the user sees of the executors: a status value, a text table and the HTML of the cluster view.

Data flow: the scheduler-side plugin answers ``k8s_status`` with a plain dict (msgpack-friendly);
``ClusterStatus`` wraps it on the client side; :func:`group_rows` and :func:`executor_rows` turn it
into rows that both views share; :func:`format_status_table` prints them for a terminal and
:func:`render_cluster_status_html` fills the ``cluster_status`` slot of distributed's own cluster
template (``cluster.html.j2``), as ``LocalCluster`` does, so the view looks like every Dask cluster.
Nothing here talks to Kubernetes or to the scheduler: the caller passes a fresh status.
"""

from __future__ import annotations

import html
import os
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

from dask.widgets import TEMPLATE_PATHS, get_template

from ..pods.builder import AppSpec

# Our templates sit beside distributed's (it registers its own directory the same way).
TEMPLATE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")
if TEMPLATE_DIR not in TEMPLATE_PATHS:
    TEMPLATE_PATHS.append(TEMPLATE_DIR)

PHASE_ORDER = ("Pending", "Running", "Terminating", "Succeeded", "Failed", "Deleted", "Unknown")
ALIVE = ("Pending", "Running")


@dataclass(frozen=True)
class ClusterStatus:
    """A point-in-time view of one app's executors, as reported by the scheduler plugin."""

    app_id: str
    app_name: str
    namespace: str
    targets: dict[str, int] = field(default_factory=dict)
    executors: tuple[dict[str, Any], ...] = ()
    outstanding: int = 0
    error: str | None = None
    errors: dict[str, str] = field(default_factory=dict)
    pending_reasons: dict[str, str] = field(default_factory=dict)
    events: tuple[str, ...] = ()
    pods_created: int = 0
    master: str = ""
    groups: tuple[str, ...] = ()
    failures: dict[str, int] = field(default_factory=dict)
    adaptive: dict[str, str] = field(default_factory=dict)  # group -> the policy scaling it, in words
    closed: str | None = None  # set once the cluster is closed: what became of its scheduler and pods

    @classmethod
    def empty(cls, app: AppSpec) -> ClusterStatus:
        return cls(app_id=app.app_id, app_name=app.app_name, namespace=app.namespace)

    def after_close(self, what: str) -> ClusterStatus:
        """The view of a closed cluster: no executors and no target (the last poll's would be stale), and why."""
        return replace(self, targets={}, executors=(), outstanding=0, pending_reasons={}, adaptive={}, closed=what)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ClusterStatus:
        return cls(
            app_id=raw["app_id"],
            app_name=raw["app_name"],
            namespace=raw["namespace"],
            targets=dict(raw.get("targets", {})),
            executors=tuple(raw.get("executors", ())),
            outstanding=int(raw.get("outstanding", 0)),
            error=raw.get("error"),
            errors=dict(raw.get("errors", {})),
            pending_reasons=dict(raw.get("pending_reasons", {})),
            events=tuple(raw.get("events", ())),
            pods_created=int(raw.get("pods_created", 0)),
            master=str(raw.get("master", "")),
            groups=tuple(raw.get("groups", ())),
            failures=dict(raw.get("failures", {})),
            adaptive=dict(raw.get("adaptive", {})),
        )

    @property
    def target(self) -> int:
        return sum(self.targets.values())

    def alive(self) -> list[dict[str, Any]]:
        return [e for e in self.executors if e["phase"] in ALIVE]

    def requested_names(self) -> list[str]:
        return [str(e["id"]) for e in self.alive()]

    def planned_names(self) -> list[str]:
        """Adaptive's plan: every live executor plus placeholders for pods still to be created."""
        names = self.requested_names()
        missing = max(0, self.target - len(names))
        return names + [f"planned-{i}" for i in range(missing)]

    def group_blocked_all(self) -> bool:
        """True when every group with a target has stopped creating pods after too many failures."""
        wanted = [g for g, n in self.targets.items() if n > 0] or ["default"]
        return all(g in self.errors for g in wanted)

    def group_executors(self, group: str) -> list[dict[str, Any]]:
        return [e for e in self.executors if e.get("group", "default") == group]

    def phase_counts(self) -> Counter[str]:
        return Counter(e["phase"] for e in self.executors)

    def group_names(self) -> list[str]:
        """Every group the backend knows, plus any that still has a target or executors."""
        names = set(self.groups) | set(self.targets) | {e.get("group", "default") for e in self.executors}
        return sorted(names, key=lambda g: (g != "default", g))


# ---------------------------------------------------------------------------------------------- rows
@dataclass(frozen=True)
class GroupRow:
    """One worker group: what it should have, what it has, and why it stopped if it did."""

    name: str
    target: int
    pending: int
    running: int
    registered: int
    failed: int
    verdict: str | None  # the failure verdict that stopped the group, highlighted
    adaptive: str | None


@dataclass(frozen=True)
class ExecutorRow:
    """One executor pod as shown; ``highlight`` is 'pending' (a reason keeps it waiting), 'failed' or ''."""

    id: str
    pod: str
    group: str
    phase: str
    node: str
    worker: str
    age: str
    reason: str
    logs: str
    highlight: str


def group_rows(status: ClusterStatus) -> list[GroupRow]:
    rows = []
    for name in status.group_names():
        executors = status.group_executors(name)
        phases = Counter(e["phase"] for e in executors)
        rows.append(GroupRow(
            name=name,
            target=status.targets.get(name, 0),
            pending=phases["Pending"],
            running=phases["Running"],
            registered=sum(1 for e in executors if e.get("worker") and e["phase"] in ALIVE),
            failed=status.failures.get(name, phases["Failed"]),
            verdict=status.errors.get(name),
            adaptive=status.adaptive.get(name),
        ))
    return rows


def _age(created: float | None, now: float) -> str:
    if not created:
        return "-"
    seconds = max(0, int(now - created))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


def _highlight(executor: dict[str, Any]) -> str:
    if executor["phase"] == "Pending" and executor.get("reason"):
        return "pending"
    if executor["phase"] == "Failed":
        return "failed"
    return ""


def executor_rows(status: ClusterStatus, now: float) -> list[ExecutorRow]:
    return [
        ExecutorRow(
            id=str(e["id"]),
            pod=e["pod"],
            group=e.get("group", "default"),
            phase=e["phase"],
            node=e.get("node") or "-",
            worker=e.get("worker") or "-",
            age=_age(e.get("created"), now),
            reason=e.get("reason") or "",
            logs=f"cluster.logs({e['id']})",
            highlight=_highlight(e),
        )
        for e in sorted(status.executors, key=lambda e: int(e["id"]))
    ]


# ---------------------------------------------------------------------------------------------- text
GROUP_COLUMNS = ("GROUP", "TARGET", "PENDING", "RUNNING", "REGISTERED", "FAILED")
COLUMNS = ("ID", "POD", "GROUP", "PHASE", "NODE", "WORKER", "AGE", "REASON")


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]


def format_status_table(status: ClusterStatus, now: float | None = None, dashboard: str | None = None) -> str:
    """The terminal view: a header (app, master, namespace, dashboard), the groups, then the executors
    ``kubectl get pods``-style. Pending reasons and failure verdicts are the last column / lines."""
    where = f"app {status.app_name} ({status.app_id}) namespace {status.namespace}"
    if status.closed:
        return f"{where}: closed; {status.closed}"
    header = [f"{where}: target {status.target}"]
    header += [f"{label}: {value}" for label, value in (("master", status.master), ("dashboard", dashboard)) if value]
    if status.error:
        header.append(f"ERROR: {status.error}")
    groups = [GROUP_COLUMNS, *((g.name, str(g.target), str(g.pending), str(g.running), str(g.registered), str(g.failed))
                               for g in group_rows(status))]
    executors = [COLUMNS, *((r.id, r.pod, r.group, r.phase, r.node, r.worker, r.age, r.reason)
                            for r in executor_rows(status, time.time() if now is None else now))]
    return "\n".join([*header, *_table(groups), "", *_table(executors)])


# ---------------------------------------------------------------------------------------------- HTML
def render_cluster_status_html(status: ClusterStatus, *, now: float | None = None) -> str:
    """Rows for the ``cluster_status`` slot of distributed's ``cluster.html.j2`` (inside its table)."""
    return get_template("kube_spark_cluster_status.html.j2").render(
        status=status,
        groups=group_rows(status),
        executors=executor_rows(status, time.time() if now is None else now),
    )


def render_scaling_status_html(status: ClusterStatus) -> str:
    """The live widget's Scaling tab: each group's policy (adaptive bounds or a manual target)."""
    rows = "".join(
        f'<tr><td style="text-align: left;">{html.escape(g)}: {html.escape(status.adaptive.get(g) or "manual")}, '
        f'target {status.targets.get(g, 0)}</td></tr>'
        for g in status.group_names()
    )
    return f"<table>{rows}</table>"
