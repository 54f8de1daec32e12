"""Typed, validated configuration of dask-k8s-backend.

Data flow: ``k8s-backend.yaml`` (defaults) < ``DASK_K8S_BACKEND__...`` environment variables
(dask.config reads them) < keyword arguments given to ``load_settings``. The merged raw values
are parsed once, here, into frozen dataclasses; the rest of the code never reads dask.config
and never parses a quantity itself. Every bad value raises ``ValueError`` naming the key,
the value and what was expected.

Field names are the yaml keys in snake_case; memory quantities are int bytes, cpu quantities
float cores, durations float seconds. Unknown keys are warned about (with the closest valid
key), not fatal, so a typo is visible but an old config still loads.
"""

from __future__ import annotations

import difflib
import logging
import math
import re
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask.config
import yaml

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SchedulerSettings:
    host: str | None = None
    port: int = 0
    dashboard_address: str | None = ":0"
    pod_name: str | None = None
    connect_via: str = "auto"
    lease_renew_interval: float = 10.0
    lease_duration: float = 30.0


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
    unrecoverable_pending_confirm: float | None = 10.0
    slow_start: bool = True
    immediate_round: bool = True


@dataclass(frozen=True)
class AdaptiveSettings:
    scale_down_window: float = 30.0
    interval: float = 1.0
    wait_count: int = 3


@dataclass(frozen=True)
class ExecutorSettings:
    api_polling_interval: float = 30.0
    event_processing_interval: float = 0.1
    delete_on_termination: bool = True
    missing_pod_detect_delta: float = 30.0
    max_failures: int | None = None
    failures_validity_interval: float | None = None
    delete_grace_period: float = 30.0
    kept_log_bytes: int = 64 << 10
    kept_logs_total: int = 4 << 20


@dataclass(frozen=True)
class ApiSettings:
    request_timeout: float = 30.0
    connection_timeout: float = 10.0
    max_retries: int = 5
    qps: float = 100.0
    burst: int = 200
    rate_limit: str = "auto"


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
class SecuritySettings:
    tls: bool = False


@dataclass(frozen=True)
class EmbeddedSettings:
    warm_runtime: bool = True


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
    adaptive: AdaptiveSettings = field(default_factory=AdaptiveSettings)
    executor: ExecutorSettings = field(default_factory=ExecutorSettings)
    api: ApiSettings = field(default_factory=ApiSettings)
    authenticate: AuthSettings = field(default_factory=AuthSettings)
    security: SecuritySettings = field(default_factory=SecuritySettings)
    embedded: EmbeddedSettings = field(default_factory=EmbeddedSettings)


# ---------------------------------------------------------------------------- defaults

PREFIX = "k8s-backend"
YAML_PATH = Path(__file__).with_name("k8s-backend.yaml")
SECTIONS = ("scheduler", "worker", "allocation", "adaptive", "executor", "api", "authenticate", "security", "embedded")
SECRET_KEYS = frozenset({"authenticate.oauth-token", "authenticate.client-key-file"})
_SECTION_CLASSES: dict[str, type] = {
    "scheduler": SchedulerSettings, "worker": WorkerSettings, "allocation": AllocationSettings,
    "adaptive": AdaptiveSettings,
    "executor": ExecutorSettings, "api": ApiSettings, "authenticate": AuthSettings,
    "security": SecuritySettings, "embedded": EmbeddedSettings,
}


def _load_defaults() -> dict[str, Any]:
    with open(YAML_PATH, encoding="utf-8") as f:
        return yaml.safe_load(f)


_DEFAULTS: dict[str, Any] = _load_defaults()
dask.config.update_defaults(_DEFAULTS)


# ---------------------------------------------------------------------------- parsers

_NUMBER = r"([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)"
_MEMORY_RE = re.compile(rf"^\s*{_NUMBER}\s*([A-Za-z]*)\s*$")
_MEMORY_UNITS = {
    "": 1, "b": 1,
    "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
    "t": 10**12, "tb": 10**12, "p": 10**15, "pb": 10**15, "e": 10**18, "eb": 10**18,
    "ki": 2**10, "kib": 2**10, "mi": 2**20, "mib": 2**20, "gi": 2**30, "gib": 2**30,
    "ti": 2**40, "tib": 2**40, "pi": 2**50, "pib": 2**50, "ei": 2**60, "eib": 2**60,
}
_DURATION_UNITS = {"": 1.0, "ms": 1e-3, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


def _shown(key: str, value: Any) -> str:
    """The value as quoted in an error message; secrets are never shown."""
    return "<hidden>" if key.removeprefix(PREFIX + ".") in SECRET_KEYS else repr(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_memory(value: Any, key: str) -> int:
    """A memory quantity ("2GiB", "2Gi", "512M", "1e9", 1024, "1.5Gi") in bytes."""
    hint = "use a Kubernetes quantity such as '2GiB' or '512Mi'"
    if _is_number(value):
        number, unit = float(value), ""
    else:
        match = _MEMORY_RE.match(value) if isinstance(value, str) else None
        if not match or match.group(2).lower() not in _MEMORY_UNITS:
            raise ValueError(f"{key}: cannot parse {value!r} as a memory quantity; {hint}.")
        number, unit = float(match.group(1)), match.group(2).lower()
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{key}: memory quantity {value!r} must not be negative; {hint}.")
    return int(round(number * _MEMORY_UNITS[unit]))


def parse_cpu(value: Any, key: str) -> float:
    """A cpu quantity ("500m", 2, "1.5") in cores."""
    hint = "use cores such as 2 or '1.5', or millicores such as '500m'"
    if _is_number(value):
        cores = float(value)
    elif isinstance(value, str) and re.fullmatch(rf"\s*{_NUMBER}\s*m?\s*", value):
        text = value.strip()
        cores = float(text[:-1]) / 1000 if text.endswith("m") else float(text)
    else:
        raise ValueError(f"{key}: cannot parse {value!r} as a cpu quantity; {hint}.")
    if not math.isfinite(cores) or cores < 0:
        raise ValueError(f"{key}: cpu quantity {value!r} must not be negative; {hint}.")
    return cores


def parse_duration(value: Any, key: str) -> float:
    """A duration ("30s", "5m", "100ms", "1h"; numbers are seconds) in seconds."""
    hint = "use seconds (30) or a duration such as '30s', '5m', '100ms' or '1h'"
    if _is_number(value):
        seconds = float(value)
    else:
        match = re.fullmatch(rf"\s*{_NUMBER}\s*([a-z]*)\s*", value.lower()) if isinstance(value, str) else None
        if not match or match.group(2) not in _DURATION_UNITS:
            raise ValueError(f"{key}: cannot parse {value!r} as a duration; {hint}.")
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{key}: duration {value!r} must not be negative; {hint}.")
    return seconds


# ---------------------------------------------------------------------------- field validators
# Each takes (value, full dotted key) and returns the parsed value or raises ValueError.

Validator = Callable[[Any, str], Any]


def _optional(inner: Validator) -> Validator:
    return lambda value, key: None if value is None else inner(value, key)


def _positive(inner: Validator, *, allow_zero: bool = False) -> Validator:
    def check(value: Any, key: str) -> Any:
        parsed = inner(value, key)
        if parsed < 0 or (parsed == 0 and not allow_zero):
            bound = "zero or more" if allow_zero else "greater than zero"
            raise ValueError(f"{key}: {_shown(key, value)} must be {bound}.")
        return parsed
    return check


def _string(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{key}: expected a non-empty string, got {_shown(key, value)}.")
    return value


def _integer(value: Any, key: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
        return int(value)
    raise ValueError(f"{key}: expected a whole number, got {_shown(key, value)}.")


def _number(value: Any, key: str) -> float:
    if _is_number(value):
        return float(value)
    if isinstance(value, str) and re.fullmatch(rf"\s*{_NUMBER}\s*", value):
        return float(value)
    raise ValueError(f"{key}: expected a number, got {_shown(key, value)}.")


def _boolean(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "1", "on"):
        return True
    if text in ("false", "no", "0", "off"):
        return False
    raise ValueError(f"{key}: expected true or false, got {_shown(key, value)}.")


def _choice(*allowed: str) -> Validator:
    def check(value: Any, key: str) -> str:
        if value not in allowed:
            raise ValueError(f"{key}: {value!r} is not one of {', '.join(allowed)}.")
        return value
    return check


def _port(value: Any, key: str) -> int:
    port = _integer(value, key)
    if not 0 <= port <= 65535:
        raise ValueError(f"{key}: port {value!r} must be between 0 and 65535 (0 picks a free port).")
    return port


def _string_map(value: Any, key: str) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{key}: expected a mapping of names to strings, got {value!r}.")
    result: dict[str, str] = {}
    for name, item in value.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"{key}: name {name!r} must be a non-empty string.")
        if isinstance(item, (Mapping, list, tuple)) or item is None:
            raise ValueError(f"{key}.{name}: expected a string value, got {item!r}.")
        result[name] = str(item).lower() if isinstance(item, bool) else str(item)
    return result


def _resource_map(value: Any, key: str) -> dict[str, float]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{key}: expected a mapping of resource names to amounts such as {{'GPU': 1}}, got {value!r}.")
    return {str(name): _positive(_number)(amount, f"{key}.{name}") for name, amount in value.items()}


def _tolerations(value: Any, key: str) -> list[dict[str, Any]]:
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{key}: expected a list of toleration objects, got {value!r}.")
    allowed = {"key", "operator", "value", "effect", "tolerationSeconds"}
    for item in value:
        if not isinstance(item, Mapping):
            raise ValueError(f"{key}: each toleration must be a mapping such as "
                             f"{{'key': 'gpu', 'operator': 'Exists', 'effect': 'NoSchedule'}}, got {item!r}.")
        unknown = set(item) - allowed
        if unknown:
            raise ValueError(f"{key}: toleration {dict(item)!r} has unknown fields {sorted(unknown)}; "
                             f"allowed are {sorted(allowed)}.")
        if item.get("operator", "Equal") not in ("Equal", "Exists"):
            raise ValueError(f"{key}: toleration operator {item['operator']!r} must be Equal or Exists.")
    return [dict(item) for item in value]


_STR, _OPT_STR = _string, _optional(_string)
_DURATION = _positive(parse_duration)
_DURATION0 = _positive(parse_duration, allow_zero=True)

SCHEMA: dict[str, Validator] = {
    "master": _STR, "namespace": _STR, "image": _STR,
    "image-pull-policy": _choice("Always", "IfNotPresent", "Never"),
    "name": _OPT_STR, "deploy-mode": _choice("client", "cluster"),
    "scheduler.host": _OPT_STR, "scheduler.port": _port,
    "scheduler.dashboard-address": _optional(lambda v, k: str(v)), "scheduler.pod-name": _OPT_STR,
    "scheduler.connect-via": _string,
    "scheduler.lease-renew-interval": _DURATION, "scheduler.lease-duration": _DURATION,
    "worker.cores": _positive(parse_cpu), "worker.memory": _positive(parse_memory),
    "worker.memory-overhead-factor": _positive(_number, allow_zero=True),
    "worker.min-memory-overhead": parse_memory,
    "worker.request-cores": _optional(_positive(parse_cpu)), "worker.limit-cores": _optional(_positive(parse_cpu)),
    "worker.env": _string_map, "worker.labels": _string_map, "worker.annotations": _string_map,
    "worker.node-selector": _string_map, "worker.tolerations": _tolerations,
    "worker.service-account": _OPT_STR, "worker.pod-template": _OPT_STR,
    "worker.pod-template-container-name": _OPT_STR, "worker.death-timeout": _DURATION,
    "worker.resources": _resource_map, "worker.secure-defaults": _boolean,
    "allocation.batch-size": _positive(_integer), "allocation.batch-delay": _DURATION0,
    "allocation.executor-timeout": _DURATION, "allocation.max-pending-pods": _positive(_integer, allow_zero=True),
    "allocation.pending-timeout": _DURATION,
    "allocation.unrecoverable-pending-confirm": _optional(_DURATION0), "allocation.slow-start": _boolean,
    "allocation.immediate-round": _boolean,
    "adaptive.scale-down-window": _DURATION0, "adaptive.interval": _DURATION, "adaptive.wait-count": _positive(_integer),
    "executor.api-polling-interval": _DURATION, "executor.event-processing-interval": _DURATION,
    "executor.delete-on-termination": _boolean, "executor.missing-pod-detect-delta": _DURATION,
    "executor.max-failures": _optional(_positive(_integer)),
    "executor.failures-validity-interval": _optional(_DURATION), "executor.delete-grace-period": _DURATION0,
    "executor.kept-log-bytes": _positive(parse_memory, allow_zero=True), "executor.kept-logs-total": _positive(parse_memory, allow_zero=True),
    "api.request-timeout": _DURATION, "api.connection-timeout": _DURATION,
    "api.max-retries": _positive(_integer, allow_zero=True), "api.qps": _positive(_number),
    "api.burst": _positive(_integer), "api.rate-limit": _choice("auto", "always"),
    "authenticate.oauth-token": _OPT_STR, "authenticate.oauth-token-file": _OPT_STR,
    "authenticate.ca-cert-file": _OPT_STR, "authenticate.client-cert-file": _OPT_STR,
    "authenticate.client-key-file": _OPT_STR, "authenticate.trust-certificates": _boolean,
    "authenticate.kubeconfig": _OPT_STR, "authenticate.context": _OPT_STR,
    "security.tls": _boolean,
    "embedded.warm-runtime": _boolean,
}


# ---------------------------------------------------------------------------- merging

def _kebab(name: Any) -> str:
    return str(name).replace("_", "-")


def _flatten(raw: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Nested or dotted configuration -> {"worker.memory": value}; values of mapping options stay whole."""
    flat: dict[str, Any] = {}
    for name, value in raw.items():
        key = _kebab(name)
        key = key.removeprefix(PREFIX + ".")
        if key == PREFIX and isinstance(value, Mapping):
            flat.update(_flatten(value, where))
        elif key in SECTIONS and isinstance(value, Mapping):
            flat.update({f"{key}.{_kebab(sub)}": item for sub, item in value.items()})
        elif "." in key:
            section, _, rest = key.partition(".")
            flat[f"{section}.{_kebab(rest)}"] = value
        else:
            flat[key] = value
    return flat


def _warn_unknown(key: str, where: str) -> None:
    """Warn through ``warnings`` only: a logger as well would print the message twice."""
    close = difflib.get_close_matches(key, SCHEMA, n=1, cutoff=0.6)
    hint = f"; did you mean '{PREFIX}.{close[0]}'?" if close else f"; valid keys are listed in {YAML_PATH.name}."
    message = f"Unknown configuration key '{PREFIX}.{key}' (from {where}) is ignored{hint}"
    warnings.warn(message, UserWarning, stacklevel=4)


def _merged(overrides: Mapping[str, Any] | None, kwargs: Mapping[str, Any], warn_unknown: bool) -> dict[str, Any]:
    """yaml < environment/dask config < overrides < kwargs, as flat dotted keys."""
    layers = [
        ("dask config or DASK_K8S_BACKEND__ environment variables", dask.config.get(PREFIX, default={}) or {}),
        ("overrides", overrides or {}),
        ("keyword arguments", kwargs),
    ]
    merged = _flatten(_DEFAULTS[PREFIX], "defaults")
    for where, layer in layers:
        for key, value in _flatten(layer, where).items():
            if key not in SCHEMA:
                if warn_unknown:
                    _warn_unknown(key, where)
                continue
            merged[key] = value
    return merged


# ---------------------------------------------------------------------------- public API

def load_settings(overrides: Mapping[str, Any] | None = None, *, warn_unknown: bool = True, **kwargs: Any) -> Settings:
    """Merge every configuration source and validate it into :class:`Settings`.

    ``overrides`` takes dotted kebab-case keys ("worker.memory") or nested dicts; ``kwargs``
    takes snake_case top-level names and section dicts (``worker={"memory": "2GiB"}``).
    Raises ``ValueError`` naming the first bad key and its value. ``warn_unknown=False`` is for
    settings derived from a configuration already loaded (a worker group's): its unknown keys
    were warned about then, and each warning is shown once.
    """
    merged = _merged(overrides, kwargs, warn_unknown)
    parsed = {key: SCHEMA[key](merged[key], f"{PREFIX}.{key}") for key in SCHEMA}
    if parsed["authenticate.oauth-token"] and parsed["authenticate.oauth-token-file"]:
        raise ValueError(f"{PREFIX}.authenticate.oauth-token and {PREFIX}.authenticate.oauth-token-file are "
                         "both set; set only one of them.")
    if parsed["scheduler.lease-renew-interval"] >= parsed["scheduler.lease-duration"]:
        raise ValueError(
            f"{PREFIX}.scheduler.lease-renew-interval = {parsed['scheduler.lease-renew-interval']:g} s is not shorter "
            f"than {PREFIX}.scheduler.lease-duration = {parsed['scheduler.lease-duration']:g} s: the app would look "
            "dead between renewals; renew at most a third of the duration (e.g. 10s and 30s)")
    sections: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    top: dict[str, Any] = {}
    for key, value in parsed.items():
        section, _, name = key.rpartition(".")
        (sections[section] if section else top)[name.replace("-", "_")] = value
    built = {name: _SECTION_CLASSES[name](**values) for name, values in sections.items()}
    return Settings(**top, **built)


def describe_config() -> list[tuple[str, str, str]]:
    """(dotted key, default as written, comment) for every option, read from the yaml with its comments.

    Used to generate and check the configuration reference, docs/configuration.md.
    """
    entries: list[tuple[str, str, str]] = []
    comments: list[str] = []
    path: list[tuple[int, str]] = []
    for line in YAML_PATH.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            comments.append(stripped.lstrip("#").strip())
            continue
        match = re.match(r"^( *)([A-Za-z0-9_-]+):\s*(.*)$", line)
        if not match:
            comments = [] if not stripped else comments
            continue
        indent, name, default = len(match.group(1)), match.group(2), match.group(3).strip()
        path = [(i, n) for i, n in path if i < indent]
        if default:
            key = ".".join([n for _, n in path] + [name])
            entries.append((key, default.strip('"'), " ".join(comments)))
        else:
            path.append((indent, name))
        comments = []
    return entries
