"""The node agent's command-line input, checked as a whole before anything is created.

Data flow: ``cli.py`` passes the raw option strings to :func:`parse_node_options`, which returns a
frozen :class:`NodeOptions` or raises :class:`OptionError` whose message names the option, the
value seen and the fix. Quantities and names are checked with the embedded Kubernetes' own rules
(:mod:`~dask_k8s_backend.kube.resources`, :mod:`~dask_k8s_backend.embedded.store.validation`), so
the agent refuses what an API server would refuse, with the option's name instead of a field path.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

from dask_k8s_backend.kube import resources as res
from dask_k8s_backend.embedded.status import StatusError
from dask_k8s_backend.embedded.store.validation import check_name, validate

KUBELETS = ("process", "simulated")
EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
IP_BLOCKS = range(100, 255)  # derived blocks stay clear of the embedded nodes' 0, 1, 2, ...


class OptionError(ValueError):
    """Bad command-line input; the message says which option, what was seen and what to do."""


@dataclass(frozen=True)
class NodeOptions:
    kubeconfig: str
    name: str
    kubelet: str = "process"
    cpu: str = "4"
    memory: str = "8Gi"
    pods: int = 110
    labels: dict[str, str] = field(default_factory=dict)
    taints: list[dict[str, str]] = field(default_factory=list)
    resources: dict[str, str] = field(default_factory=dict)
    port: int = 0
    ip_block: int | None = None  # None: chosen at start (derived from the name, skipping blocks in use)


def derived_ip_block(name: str, used: Iterable[int] = ()) -> int:
    """A second octet for the node's pod IPs (127.<block>.x.y): stable per name, in 100-254, not in ``used``.

    ``used`` holds the blocks of the nodes already registered (their ``spec.podCIDR``), so two
    agents on one machine never hand out the same pod IP (barring two starting at the same instant).
    """
    taken = set(used)
    first = zlib.crc32(name.encode()) % len(IP_BLOCKS)
    for step in range(len(IP_BLOCKS)):
        block = IP_BLOCKS[(first + step) % len(IP_BLOCKS)]
        if block not in taken:
            return block
    raise OptionError(f"--ip-block: every block 100-254 is used by another node; give one with --ip-block "
                      f"(the nodes use {sorted(taken)}).")


def blocks_in_use(nodes: Iterable[dict[str, Any]], except_name: str) -> set[int]:
    """The second octets of the other nodes' loopback pod CIDRs (127.<block>.0.0/16)."""
    used = set()
    for node in nodes:
        if (node.get("metadata") or {}).get("name") == except_name:
            continue
        cidr = (node.get("spec") or {}).get("podCIDR") or ""
        parts = cidr.split(".")
        if len(parts) == 4 and parts[0] == "127" and parts[1].isdigit():
            used.add(int(parts[1]))
    return used


def _pairs(option: str, text: str | None, example: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise OptionError(f"{option}: {item!r} is not name=value; write it like {example}.")
        out[key] = value
    return out


def parse_taints(text: str | None) -> list[dict[str, str]]:
    """``key=value:Effect`` or ``key:Effect``, comma separated."""
    taints = []
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        head, sep, effect = item.rpartition(":")
        key, _, value = head.partition("=")
        if not sep or not key or effect not in EFFECTS:
            raise OptionError(f"--taints: {item!r} is not key=value:Effect with Effect one of {', '.join(EFFECTS)}; "
                              "write it like dedicated=dask:NoSchedule.")
        taint = {"key": key, "effect": effect}
        if value:
            taint["value"] = value
        taints.append(taint)
    return taints


def _check_quantity(option: str, name: str, value: str, shown: str | None = None) -> None:
    try:
        res.to_units(name, value, what=f"{option} {name}")
    except (StatusError, ValueError):
        raise OptionError(f"{option}: {shown or value!r} is not a Kubernetes quantity for {name}; use a number with "
                          "an optional suffix, e.g. 4, 500m or 8Gi.") from None


def _check_kubeconfig(path: str) -> None:
    file = Path(path).expanduser()
    if not file.is_file():
        raise OptionError(f"--kubeconfig: {path!r} does not exist; give the kubeconfig of the API server to join "
                          "(e.g. the one `python -m dask_k8s_backend embedded --kubeconfig FILE` writes).")
    try:
        config = yaml.safe_load(file.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise OptionError(f"--kubeconfig: {path!r} is not a readable kubeconfig ({e}).") from None
    if not isinstance(config, dict) or not config.get("clusters"):
        raise OptionError(f"--kubeconfig: {path!r} names no cluster; give a kubeconfig with a server.")


def _check_name_and_labels(name: str, labels: dict[str, str]) -> None:
    if check_name("nodes", name):
        raise OptionError(f"--name: {name!r} is not a valid node name; use lower-case letters, digits, '-' and '.', "
                          "starting and ending with a letter or digit (e.g. node-1).")
    for key, value in labels.items():
        try:
            validate("nodes", "Node", {"metadata": {"name": name, "labels": {key: value}}})
        except StatusError:
            raise OptionError(f"--labels: '{key}={value}' is not a valid label; use key=value with letters, digits, "
                              "'-', '_' and '.' (keys may have a DNS prefix, e.g. example.com/zone=a).") from None


def parse_node_options(*, kubeconfig: str, name: str, kubelet: str = "process", cpu: str = "4", memory: str = "8Gi",
                       pods: Any = 110, labels: str | None = None, taints: str | None = None,
                       resources: str | None = None, port: Any = 0, ip_block: Any = None) -> NodeOptions:
    """Every option checked (see the module docstring); raises OptionError on the first bad one."""
    _check_kubeconfig(kubeconfig)
    if kubelet not in KUBELETS:
        raise OptionError(f"--kubelet: {kubelet!r} is not a kubelet; use process or simulated.")
    label_map = _pairs("--labels", labels, "disk=ssd,zone=a")
    _check_name_and_labels(name, label_map)
    _check_quantity("--cpu", "cpu", cpu)
    _check_quantity("--memory", "memory", memory)
    if not isinstance(pods, int) or pods < 1:
        raise OptionError(f"--pods: {pods!r} is not a whole number >= 1; use e.g. 110.")
    extended = _pairs("--resources", resources, "nvidia.com/gpu=2")
    for key, value in extended.items():
        _check_quantity("--resources", key, value, f"'{key}={value}'")
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise OptionError(f"--port: {port!r} is not a port; use 0 (any free port) or 1-65535.")
    if ip_block is not None and (not isinstance(ip_block, int) or not 1 <= ip_block <= 255):
        raise OptionError(f"--ip-block: {ip_block!r} is not between 1 and 255 (the second octet of the pods' "
                          "127.x.y.z IPs); give each node on this machine its own.")
    return NodeOptions(kubeconfig=str(Path(kubeconfig).expanduser()), name=name, kubelet=kubelet, cpu=str(cpu),
                       memory=str(memory), pods=pods, labels=label_map, taints=parse_taints(taints),
                       resources=extended, port=port, ip_block=ip_block)
