"""Small helpers shared by the API server tests: a minimal pod, a bounded wait."""

from __future__ import annotations

import time


def pod_manifest(name: str | None = "p", labels: dict | None = None, **spec) -> dict:
    """A minimal valid pod."""
    meta: dict = {"name": name} if name else {"generateName": "gen-"}
    if labels:
        meta["labels"] = labels
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"containers": [{"name": "main", "image": "busybox:1.36"}], **spec}}


def wait_until(predicate, timeout: float = 5.0, interval: float = 0.02):
    """Poll ``predicate`` until it returns a truthy value (bounded); returns that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {predicate}")
        time.sleep(interval)
