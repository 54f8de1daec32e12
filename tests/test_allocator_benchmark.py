"""benchmarks/allocator.py's own rules: alternation, the summary it prints, its record, and its cleanup.

The figures in docs/performance.md come from this script, so what it reports (medians, ratios,
extrapolated Spark times) and what it leaves behind on a server are checked here, on the fake PodApi.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests" / "backend"))

import allocator  # noqa: E402
from fakes import FakePodApi  # noqa: E402


def result(name: str, seconds: float | None, running: int = 100, target: int = 100, limit: float = 10.0):
    return allocator.Result(name, target, seconds, running, creates=running, requests=running + 2, limit=limit)


def test_kinds_alternate_abba_so_load_drift_hits_both():
    assert [allocator.order_of(i, skip_spark=False) for i in range(3)] == [
        ["ours", "spark"], ["spark", "ours"], ["ours", "spark"]]
    assert allocator.order_of(1, skip_spark=True) == ["ours"]


def test_summary_gives_min_median_max_and_the_ratio_of_medians():
    runs = [result("ours", 1.0), result("ours", 3.0), result("ours", 2.0),
            result("spark", 20.0), result("spark", 40.0), result("spark", 30.0)]
    stats = allocator.summary(runs, 100)
    assert stats["ours"]["seconds"] == (1.0, 2.0, 3.0)
    assert stats["spark"]["seconds"] == (20.0, 30.0, 40.0)
    assert stats["ratio_of_medians"] == 15.0
    lines = allocator.summary_lines(stats, spark_limit=240)
    assert "1.00 / 2.00 / 3.00 s" in lines[0] and "15.0x" in lines[-1]


def test_a_run_that_misses_the_limit_is_extrapolated_and_says_so():
    stats = allocator.summary([result("ours", 1.0), result("spark", None, running=25, limit=10.0)], 100)
    assert stats["spark"]["seconds"] == (40.0, 40.0, 40.0)  # 25 of 100 in 10 s
    assert stats["spark"]["extrapolated"] == 1
    assert "not reached: [25] Running after 240 s" in allocator.summary_lines(stats, spark_limit=240)[1]


def test_ours_passes_only_with_the_median_under_the_mark_and_one_create_per_pod():
    fast = allocator.summary([result("ours", 5.0, target=1000, running=1000)], 1000)
    slow = allocator.summary([result("ours", 11.0, target=1000, running=1000)], 1000)
    assert allocator.passed([fast], {"ours": 2.0})
    assert not allocator.passed([slow], {"ours": 2.0})
    assert not allocator.passed([fast], {"ours": 4.0})


def test_cleanup_deletes_every_pod_of_the_run_and_nothing_else():
    api = FakePodApi()
    mine = [allocator.make_pod(i, "default", app_id="a") for i in range(3)]
    other = allocator.make_pod(9, "default", app_id="b")
    other["metadata"]["labels"][allocator.RUN_LABEL] = "someone-else"
    for pod in [*mine, other]:
        api.add_pod(pod)
    api.fail_next("delete_pods", TimeoutError("a busy server timed the DELETE out"))  # retried, not raised
    assert asyncio.run(allocator._delete_and_wait(api, limit=10)) == 0
    assert list(api.pods) == [other["metadata"]["name"]]


def test_a_fake_run_prints_the_figures_and_writes_json_and_png(tmp_path, capsys):
    argv = ["--backend", "fake", "--targets", "20", "--repeat", "2", "--spark-limit", "1.5", "--steady-seconds", "0",
            "--out-dir", str(tmp_path)]
    assert allocator.run(argv) in (0, 1)
    out = capsys.readouterr().out
    assert "ours   target    20, 2 runs: min / median / max" in out and "ratio  target    20" in out
    record = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert [r["name"] for r in record["runs"]] == ["ours", "spark", "spark", "ours"]
    assert record["runs"][0]["timeline"] and record["machine"]["cpus"]
    assert list(tmp_path.glob("*.png")) if allocator.pyplot is not None else "pip install matplotlib" in out
