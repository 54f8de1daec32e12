"""Embedded API server benchmark: the figures docs and issue 4 set as targets (2-core machine).

* pod creates per second from one official-client connection (target >= 300/s);
* time of one LIST of 5000 pods through HTTP (target < 0.5 s);
* p99 watch delivery latency to 10 watchers while 1000 pods are created (target < 100 ms),
  from the store commit to the line arriving at the watcher;
* RSS of this process (server + store) holding 10,000 pods run by simulated kubelets
  (target < 300 MB).

    python benchmarks/embedded_api.py            # all four
    python benchmarks/embedded_api.py --quick    # smaller counts, for a smoke run
    python benchmarks/embedded_api.py --rss store        # RSS of server + store alone, fresh process
    python benchmarks/embedded_api.py --rss simulated    # RSS with 10 simulated kubelets + scheduler too
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import threading
import time

import psutil
from kubernetes import client, config

from dask_k8s_backend.embedded.cluster import EmbeddedKubernetes


def pod(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"app": "bench", "dask-k8s-backend/role": "worker"}},
            "spec": {"restartPolicy": "Never",
                     "containers": [{"name": "main", "image": "ghcr.io/dask/dask:latest",
                                     "args": ["dask", "worker", "tcp://scheduler:8786"],
                                     "env": [{"name": "DASK_WORKER_ID", "value": name}],
                                     "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}]}}


def api_for(kube: EmbeddedKubernetes) -> client.CoreV1Api:
    return client.CoreV1Api(config.new_client_from_config(config_file=kube.kubeconfig))


def bench_creates(kube: EmbeddedKubernetes, count: int) -> float:
    api = api_for(kube)
    started = time.perf_counter()
    for i in range(count):
        api.create_namespaced_pod("default", pod(f"create-{i}"), _preload_content=False).data  # .data releases the connection
    elapsed = time.perf_counter() - started
    api.api_client.close()
    return count / elapsed


def bench_list(kube: EmbeddedKubernetes, count: int) -> float:
    for i in range(count):
        kube.store.create("pods", "default", pod(f"list-{i}"))
    api = api_for(kube)
    api.list_namespaced_pod("default", _preload_content=False)  # warm: caches each object's JSON once
    times = []
    for _ in range(3):
        started = time.perf_counter()
        data = api.list_namespaced_pod("default", _preload_content=False).data
        times.append(time.perf_counter() - started)
    assert len(json.loads(data)["items"]) >= count
    api.api_client.close()
    return min(times)


def bench_watch_latency(kube: EmbeddedKubernetes, watchers: int, count: int) -> tuple[float, float]:
    committed: dict[str, float] = {}
    remove = kube.store.add_listener(
        lambda t, o: committed.setdefault(o["metadata"]["name"], time.perf_counter()) if t == "ADDED" else None)
    start_rv = kube.store.resource_version
    latencies: list[float] = []
    lock = threading.Lock()
    done = threading.Barrier(watchers + 1)
    apis = [api_for(kube) for _ in range(watchers)]

    def watch(api: client.CoreV1Api) -> None:
        response = api.list_namespaced_pod("default", watch=True, resource_version=start_rv, timeout_seconds=120,
                                           label_selector="app=watched", _preload_content=False)
        seen, buffer = 0, b""
        for chunk in response.stream(65536, decode_content=False):
            now = time.perf_counter()
            buffer += chunk
            lines = buffer.split(b"\n")
            buffer = lines.pop()
            for line in lines:
                name = json.loads(line)["object"]["metadata"]["name"]
                with lock:
                    latencies.append(now - committed[name])
                seen += 1
            if seen >= count:
                break
        response.close()
        done.wait()

    threads = [threading.Thread(target=watch, args=(api,), daemon=True) for api in apis]
    for thread in threads:
        thread.start()
    time.sleep(0.5)  # let every watch subscribe
    creator = api_for(kube)
    for i in range(count):
        body = pod(f"watched-{i}")
        body["metadata"]["labels"]["app"] = "watched"
        creator.create_namespaced_pod("default", body, _preload_content=False).data
    done.wait(120)
    remove()
    for api in apis + [creator]:
        api.api_client.close()
    latencies.sort()
    return statistics.median(latencies), latencies[int(len(latencies) * 0.99) - 1]


def bench_rss(count: int) -> tuple[float, int]:
    nodes = 10
    with EmbeddedKubernetes(kubelet="simulated", nodes=nodes, cpu="1000", memory="4000Gi",
                            pods=count // nodes + 10, start_delay=0.0) as kube:
        for i in range(count):
            kube.store.create("pods", "default", pod(f"rss-{i}"))
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            running = len(kube.store.list_entries("pods", field_selector="status.phase=Running")[0])  # no copies
            if running >= count:
                break
            time.sleep(1)
        gc.collect()
        return psutil.Process().memory_info().rss / 2**20, running


def running_status() -> dict:
    """What a kubelet writes for a running single-container pod."""
    ts = "2026-01-01T00:00:00Z"
    return {"phase": "Running", "podIP": "10.0.0.1", "hostIP": "127.0.0.1", "startTime": ts, "qosClass": "Burstable",
            "conditions": [{"type": t, "status": "True", "lastTransitionTime": ts}
                           for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")],
            "containerStatuses": [{"name": "main", "ready": True, "restartCount": 0, "image": "x", "imageID": "y",
                                   "containerID": "sim://abc", "started": True,
                                   "state": {"running": {"startedAt": ts}}}]}


def bench_store_rss(count: int) -> float:
    """RSS of the API server and store alone: pods bound and Running written straight to the store."""
    with EmbeddedKubernetes(kubelet=None) as kube:
        store = kube.store
        for i in range(count):
            name = f"rss-{i}"
            store.create("pods", "default", pod(name))
            store.mutate("pods", "default", name, lambda o: o["spec"].__setitem__("nodeName", "node-1"))
            store.mutate("pods", "default", name, lambda o: o["status"].update(running_status()), status_only=True)
        gc.collect()
        return psutil.Process().memory_info().rss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller counts (smoke run)")
    parser.add_argument("--rss", choices=["store", "simulated"], default=None,
                        help="only the RSS figure (run each in a fresh process: RSS never shrinks)")
    args = parser.parse_args()
    scale = 10 if args.quick else 1
    if args.rss == "store":
        print(f"RSS of API server + store with {10_000 // scale} Running pods (no kubelets): "
              f"{bench_store_rss(10_000 // scale):.0f} MB   target < 300 MB", flush=True)
        return
    if args.rss == "simulated":
        rss, running = bench_rss(10_000 // scale)
        print(f"RSS with {10_000 // scale} simulated pods ({running} Running), kubelets and scheduler in-process: "
              f"{rss:.0f} MB", flush=True)
        return
    with EmbeddedKubernetes(kubelet=None) as kube:
        rate = bench_creates(kube, 1000 // scale)
        print(f"pod creates/s (one client, HTTPS+token): {rate:.0f}   target >= 300", flush=True)
    with EmbeddedKubernetes(kubelet=None) as kube:
        seconds = bench_list(kube, 5000 // scale)
        print(f"LIST of {5000 // scale} pods: {seconds * 1000:.0f} ms   target < 500 ms", flush=True)
    with EmbeddedKubernetes(kubelet=None) as kube:
        p50, p99 = bench_watch_latency(kube, 10, 1000 // scale)
        print(f"watch delivery to 10 watchers during {1000 // scale} creates: p50 {p50 * 1000:.1f} ms, "
              f"p99 {p99 * 1000:.1f} ms   target p99 < 100 ms", flush=True)
    rss, running = bench_rss(10_000 // scale)
    print(f"RSS with {10_000 // scale} simulated pods ({running} Running): {rss:.0f} MB   target < 300 MB",
          flush=True)


if __name__ == "__main__":
    main()
