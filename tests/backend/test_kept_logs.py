"""Logs that outlive pods: the bounds of KeptLogs, and the lifecycle manager keeping a log before
it deletes a finished pod (in-memory fake API, manual clock)."""

from __future__ import annotations

from fakes import failed_pod, run_async
from test_lifecycle import Harness

from dask_k8s_backend.backend.executors.kept_logs import KeptLogs


def test_each_log_keeps_its_end_and_says_it_was_cut():
    logs = KeptLogs(per_executor=100, total=1000)
    text = "".join(f"line {i}\n" for i in range(100))
    kept = logs.keep(3, "app-exec-3", text)
    assert kept.truncated and len(kept.text.encode()) <= 100 and kept.text.endswith("line 99\n")
    assert kept.text.startswith("line ")  # cut at a line boundary
    assert "only its last" in kept.render() and "kept-log-bytes" in kept.render()
    short = logs.keep(4, "app-exec-4", "hello\n")
    assert not short.truncated and "only its last" not in short.render()


def test_the_oldest_logs_are_dropped_to_stay_under_the_total():
    logs = KeptLogs(per_executor=100, total=250)
    for i in range(1, 5):
        logs.keep(i, f"p{i}", "x" * 99 + "\n")
    assert logs.size <= 250 and sorted(logs.pods()) == [3, 4] and logs.dropped == {1, 2}


@run_async
async def test_a_failed_pods_log_is_kept_before_the_pod_is_deleted():
    h = Harness()
    h.lifecycle.kept_logs = KeptLogs(per_executor=1 << 16, total=1 << 22)
    h.api.logs = {"app-exec-1": "starting\nTraceback: boom\n"}
    h.pod(failed_pod(1))
    await h.deliver()
    assert h.api.deleted == ["app-exec-1"]
    assert "Traceback: boom" in h.lifecycle.kept_logs.get(1).render()


@run_async
async def test_without_delete_on_termination_nothing_is_copied_the_pod_keeps_its_log():
    h = Harness(delete_on_termination=False)
    h.lifecycle.kept_logs = KeptLogs(per_executor=1 << 16, total=1 << 22)
    h.pod(failed_pod(1))
    await h.deliver()
    assert h.lifecycle.kept_logs.get(1) is None and h.api.requests["read_pod_log"] == 0
