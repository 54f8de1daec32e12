"""What the user sees of the executors: a status value, a text table and the HTML widget body.

The scheduler-side plugin answers ``k8s_status`` with a plain dict (msgpack-friendly);
``ClusterStatus`` wraps it for the client side. Nothing here talks to Kubernetes.
"""

from __future__ import annotations

import html
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

from .pods.builder import AppSpec

PHASE_ORDER = ("Pending", "Running", "Terminating", "Succeeded", "Failed", "Deleted", "Unknown")


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
    closed: str | None = None  # set once the cluster is closed: what became of its scheduler and pods

    @classmethod
    def empty(cls, app: AppSpec) -> ClusterStatus:
        return cls(app_id=app.app_id, app_name=app.app_name, namespace=app.namespace)

    def after_close(self, what: str) -> ClusterStatus:
        """The view of a closed cluster: no executors and no target (the last poll's would be stale), and why."""
        return replace(self, targets={}, executors=(), outstanding=0, pending_reasons={}, closed=what)

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
        )

    @property
    def target(self) -> int:
        return sum(self.targets.values())

    def alive(self) -> list[dict[str, Any]]:
        return [e for e in self.executors if e["phase"] in ("Pending", "Running")]

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


def _age(created: float | None, now: float) -> str:
    if not created:
        return "-"
    seconds = max(0, int(now - created))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"


COLUMNS = ("ID", "POD", "GROUP", "PHASE", "NODE", "WORKER", "AGE", "REASON")


def _rows(status: ClusterStatus, now: float) -> list[tuple[str, ...]]:
    return [
        (
            str(e["id"]),
            e["pod"],
            e.get("group", "default"),
            e["phase"],
            e.get("node") or "-",
            e.get("worker") or "-",
            _age(e.get("created"), now),
            e.get("reason") or "",
        )
        for e in sorted(status.executors, key=lambda e: int(e["id"]))
    ]


def format_status_table(status: ClusterStatus, now: float | None = None) -> str:
    """``kubectl get pods``-style table of the executors."""
    rows = [COLUMNS, *_rows(status, time.time() if now is None else now)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    header = f"app {status.app_name} ({status.app_id}) namespace {status.namespace}: target {status.target}"
    if status.closed:
        header = f"app {status.app_name} ({status.app_id}) namespace {status.namespace}: closed; {status.closed}"
    if status.error:
        header += f"\nERROR: {status.error}"
    return "\n".join([header, *lines])


def render_status_html(status: ClusterStatus, *, name: str, dashboard: str | None) -> str:
    """HTML for ``_repr_html_`` and the widget: pods by phase, pending reasons, errors."""
    counts = status.phase_counts()
    phases = " · ".join(f"<b>{counts[p]}</b> {p}" for p in PHASE_ORDER if counts.get(p))
    parts = [
        f"<div><h4 style='margin:0'>KubeSparkCluster {html.escape(name)}</h4>",
        f"<p>namespace <code>{html.escape(status.namespace)}</code> · app id <code>{html.escape(status.app_id)}</code>"
        f" · target <b>{status.target}</b> · pods: {phases or 'none'}</p>",
    ]
    if status.closed:
        parts.append(f"<p><b>Closed</b>: {html.escape(status.closed)}</p></div>")
        return "".join(parts)
    if dashboard:
        parts.append(f"<p>Dashboard: <a href='{html.escape(dashboard)}' target='_blank'>{html.escape(dashboard)}</a></p>")
    if status.pending_reasons:
        items = "".join(
            f"<li>executor {html.escape(str(k))}: {html.escape(v)}</li>" for k, v in sorted(status.pending_reasons.items())
        )
        parts.append(f"<p>Pending:</p><ul>{items}</ul>")
    if status.error:
        parts.append(f"<p style='color:#b00'><b>Error:</b> {html.escape(status.error)}</p>")
    parts.append("</div>")
    return "".join(parts)
