"""Typed, validated configuration of dask-k8s-backend.

Data flow: ``k8s-backend.yaml`` (defaults) < ``DASK_K8S_BACKEND__...`` environment variables
(dask.config reads them) < keyword arguments given to ``load_settings``. The merged raw values
are parsed once, here, into frozen dataclasses; the rest of the code never reads dask.config
and never parses a quantity itself. Every bad value raises ``ValueError`` naming the key,
the value and what was expected.

CONTRACT (filled in by the foundation work): field names are the yaml keys in snake_case;
memory quantities are int bytes, cpu quantities float cores, durations float seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class SchedulerSettings:
    host: str | None = None
    port: int = 0
    dashboard_address: str | None = ":0"
    pod_name: str | None = None


@dataclass(frozen=True)
class WorkerSettings:
    cores: float = 1.0
    memory: int = 1 << 30
    memory_overhead_factor: float = 0.1
    min_memory_overhead: int = 384 << 20
    request_cores: float | None = None
    limit_cores: float | None = None
    env: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    service_account: str | None = None
    pod_template: str | None = None
    pod_template_container_name: str | None = None
    death_timeout: float = 60.0
    resources: dict[str, float] = field(default_factory=dict)
    secure_defaults: bool = True


@dataclass(frozen=True)
class AllocationSettings:
    batch_size: int = 256
    batch_delay: float = 0.1
    executor_timeout: float = 600.0
    max_pending_pods: int = 0
    pending_timeout: float = 300.0
    slow_start: bool = True
    immediate_round: bool = True


@dataclass(frozen=True)
class ExecutorSettings:
    api_polling_interval: float = 30.0
    event_processing_interval: float = 0.1
    delete_on_termination: bool = True
    missing_pod_detect_delta: float = 30.0
    max_failures: int | None = None
    failures_validity_interval: float | None = None
    delete_grace_period: float = 30.0


@dataclass(frozen=True)
class ApiSettings:
    request_timeout: float = 30.0
    connection_timeout: float = 10.0
    max_retries: int = 5
    qps: float = 100.0
    burst: int = 200


@dataclass(frozen=True)
class AuthSettings:
    oauth_token: str | None = field(default=None, repr=False)
    oauth_token_file: str | None = None
    ca_cert_file: str | None = None
    client_cert_file: str | None = None
    client_key_file: str | None = field(default=None, repr=False)
    trust_certificates: bool = False
    kubeconfig: str | None = None
    context: str | None = None


@dataclass(frozen=True)
class Settings:
    master: str = "embedded://"
    namespace: str = "default"
    image: str = "ghcr.io/dask/dask:latest"
    image_pull_policy: str = "IfNotPresent"
    name: str | None = None
    deploy_mode: str = "client"
    scheduler: SchedulerSettings = field(default_factory=SchedulerSettings)
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    allocation: AllocationSettings = field(default_factory=AllocationSettings)
    executor: ExecutorSettings = field(default_factory=ExecutorSettings)
    api: ApiSettings = field(default_factory=ApiSettings)
    authenticate: AuthSettings = field(default_factory=AuthSettings)
