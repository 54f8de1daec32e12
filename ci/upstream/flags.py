"""Command lines of the four upstream components, as pure functions of a :class:`Layout`.

Why a module of its own: the flags are the part a reader checks against upstream documentation
and the part that changes between releases, so they sit together, free of process handling.
The layout (state directory, credential paths, ports) is decided by the control plane; each
function here only turns it into an argv.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .pki import FRONT_PROXY_CLIENT, Pki

SERVICE_CIDR = "10.0.0.0/24"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"


@dataclass(frozen=True)
class Ports:
    """Loopback ports, all picked free at start."""

    etcd_client: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int


@dataclass(frozen=True)
class Layout:
    """Where everything lives: binaries, state, credentials, component kubeconfigs, ports."""

    bin_dir: Path
    state: Path
    pki: Pki
    ports: Ports
    scheduler_kubeconfig: Path
    controller_manager_kubeconfig: Path

    @property
    def etcd_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.etcd_client}"

    @property
    def apiserver_url(self) -> str:
        return f"https://127.0.0.1:{self.ports.apiserver}"


def etcd(layout: Layout) -> list[str]:
    """A single-member etcd; fsync off because the data dies with the test run anyway."""
    peer = f"http://127.0.0.1:{layout.ports.etcd_peer}"
    return [
        str(layout.bin_dir / "etcd"),
        "--name=upstream0",
        f"--data-dir={layout.state / 'etcd'}",
        f"--listen-client-urls={layout.etcd_url}",
        f"--advertise-client-urls={layout.etcd_url}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster=upstream0={peer}",
        "--unsafe-no-fsync=true",
    ]


def kube_apiserver(layout: Layout) -> list[str]:
    """Node,RBAC authorization and the default admission plugins, as a production API server has.

    ``--endpoint-reconciler-type=none``: the `kubernetes` Service's endpoints would be the
    advertise address 127.0.0.1, which Endpoints validation rejects (loopback), so reconciling
    them only logs errors. Pods reach the API server through the address the node agent gives them.
    """
    pki = layout.pki
    kubelet_client = pki.clients["apiserver-kubelet-client"]
    return [
        str(layout.bin_dir / "kube-apiserver"),
        f"--etcd-servers={layout.etcd_url}",
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        f"--secure-port={layout.ports.apiserver}",
        f"--cert-dir={layout.state / 'apiserver-certs'}",
        f"--tls-cert-file={pki.serving.cert}",
        f"--tls-private-key-file={pki.serving.key}",
        f"--client-ca-file={pki.ca.cert}",
        "--authorization-mode=Node,RBAC",
        "--allow-privileged=true",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
        f"--service-account-key-file={pki.sa_public}",
        f"--service-account-signing-key-file={pki.sa_private}",
        "--kubelet-preferred-address-types=InternalIP,Hostname",
        f"--kubelet-client-certificate={kubelet_client.cert}",
        f"--kubelet-client-key={kubelet_client.key}",
        "--endpoint-reconciler-type=none",
        *_front_proxy(pki),
    ]


def _front_proxy(pki: Pki) -> list[str]:
    """The aggregation layer's request-header authentication, as kubeadm configures it."""
    return [
        f"--requestheader-client-ca-file={pki.front_proxy_ca.cert}",
        f"--requestheader-allowed-names={FRONT_PROXY_CLIENT}",
        "--requestheader-username-headers=X-Remote-User",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        f"--proxy-client-cert-file={pki.front_proxy_client.cert}",
        f"--proxy-client-key-file={pki.front_proxy_client.key}",
    ]


def _delegated_auth(kubeconfig: Path) -> list[str]:
    """Let a component check callers of its own HTTPS port against the API server (as kubeadm does)."""
    return [f"--kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}"]


def kube_controller_manager(layout: Layout, *, node_monitor_grace: str = "20s",
                            node_monitor_period: str = "2s") -> list[str]:
    """Every default controller, per-controller service-account credentials, short node-health periods.

    The signing key enables the token controller; the root CA is what `kube-root-ca.crt` publishes
    into every namespace. The short grace period makes a dead node agent visible within seconds.
    """
    return [
        str(layout.bin_dir / "kube-controller-manager"),
        *_delegated_auth(layout.controller_manager_kubeconfig),
        "--bind-address=127.0.0.1",
        f"--secure-port={layout.ports.controller_manager}",
        f"--cert-dir={layout.state / 'kcm-certs'}",
        "--controllers=*",
        f"--service-account-private-key-file={layout.pki.sa_private}",
        f"--root-ca-file={layout.pki.ca.cert}",
        "--use-service-account-credentials=true",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--leader-elect=false",
        f"--node-monitor-period={node_monitor_period}",
        f"--node-monitor-grace-period={node_monitor_grace}",
    ]


def kube_scheduler(layout: Layout) -> list[str]:
    """The default scheduler profile; no leader election, so a restart schedules at once."""
    return [
        str(layout.bin_dir / "kube-scheduler"),
        *_delegated_auth(layout.scheduler_kubeconfig),
        "--bind-address=127.0.0.1",
        f"--secure-port={layout.ports.scheduler}",
        f"--cert-dir={layout.state / 'scheduler-certs'}",
        "--leader-elect=false",
    ]
