#!/usr/bin/env python
"""Cost of the resilient REST layer (rate limit, retries, failover) and accuracy of the rate limit.

Runs GET /api/v1/namespaces against a local keep-alive HTTP server: the official ApiClient as is,
then ``create_api_client`` with an unlimited rate, then with qps=200 burst=10.
Usage: python benchmarks/client_overhead.py [--requests 2000]
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from kubernetes import client as k8s

from dask_k8s_backend.kube.client import create_api_client
from dask_k8s_backend.config import load_settings

BODY = json.dumps({"kind": "NamespaceList", "apiVersion": "v1", "metadata": {}, "items": []}).encode()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = 1 << 16

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)


def rate(api: k8s.ApiClient, n: int) -> float:
    core = k8s.CoreV1Api(api)
    start = time.perf_counter()
    for _ in range(n):
        core.list_namespace(_preload_content=False).read()
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    n = parser.parse_args().requests
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    cfg = k8s.Configuration()
    cfg.host = url
    clients = {
        "official ApiClient": (k8s.ApiClient(cfg), n),
        "create_api_client (no limit)": (create_api_client([url], load_settings({"api.qps": 1e9, "api.burst": 10**9})), n),
        "create_api_client qps=200 burst=10": (create_api_client([url], load_settings({"api.qps": 200, "api.burst": 10})), 400),
    }
    for name, (api, count) in clients.items():
        print(f"{name:36s} {rate(api, count):8.0f} requests/s ({count} requests)")
        api.close()
    httpd.shutdown()
    httpd.server_close()


if __name__ == "__main__":
    main()
