"""Rules of ci/upstream_k8s.py that need no upstream binaries: credentials, flags, options, child processes.

The launcher's end-to-end behaviour is checked by CI's upstream stage (test_upstream_smoke.py);
these tests keep its pieces honest in the ordinary suite, in well under a second each.
"""

from __future__ import annotations

import stat
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "ci"))

import upstream_k8s  # noqa: E402
from upstream import binaries, control_plane, flags, pki, processes, readiness  # noqa: E402


@pytest.fixture(scope="module")
def credentials(tmp_path_factory) -> pki.Pki:
    return pki.make_pki(tmp_path_factory.mktemp("pki"))


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_serving_certificate_names_every_address_a_client_or_pod_uses(credentials):
    san = load(credentials.serving.cert).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == set(pki.SERVING_DNS)
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "10.0.0.1"}


def test_client_certificates_carry_user_as_cn_and_groups_as_o(credentials):
    admin = load(credentials.clients["admin"].cert)
    assert admin.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "kubernetes-admin"
    assert [a.value for a in admin.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)] == ["system:masters"]
    scheduler = load(credentials.clients["kube-scheduler"].cert)
    assert scheduler.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "system:kube-scheduler"
    usage = scheduler.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_every_private_key_is_readable_by_its_owner_only(credentials):
    keys = [credentials.ca.key, credentials.serving.key, credentials.sa_private, credentials.front_proxy_ca.key,
            credentials.front_proxy_client.key,
            *(c.key for c in credentials.clients.values())]
    assert {stat.S_IMODE(k.stat().st_mode) for k in keys} == {0o600}


def test_apiserver_runs_node_rbac_with_default_admission_and_no_endpoint_reconciler(credentials, tmp_path):
    layout = flags.Layout(bin_dir=tmp_path, state=tmp_path, pki=credentials, ports=flags.Ports(1, 2, 3, 4, 5),
                          scheduler_kubeconfig=tmp_path / "s", controller_manager_kubeconfig=tmp_path / "c")
    argv = flags.kube_apiserver(layout)
    assert "--authorization-mode=Node,RBAC" in argv
    assert not [a for a in argv if a.startswith(("--disable-admission-plugins", "--enable-admission-plugins"))]
    assert "--endpoint-reconciler-type=none" in argv and "--secure-port=3" in argv
    kcm = flags.kube_controller_manager(layout)
    assert {"--controllers=*", "--leader-elect=false", f"--root-ca-file={credentials.ca.cert}"} <= set(kcm)
    assert f"--service-account-private-key-file={credentials.sa_private}" in kcm


@pytest.mark.parametrize("args, message", [
    (["--nodes", "-1"], "argument --nodes: '-1' is not a number of nodes"),
    (["--memory", "8GB"], "argument --memory: '8GB' is not a positive Kubernetes memory quantity"),
    (["--cpu", "0"], "argument --cpu: '0' is not a positive Kubernetes cpu quantity"),
    (["--pods", "0"], "argument --pods: '0' is not a pod capacity"),
    (["--kubelet", "docker"], "argument --kubelet: invalid choice: 'docker'"),
])
def test_a_bad_option_is_one_error_naming_option_and_value(args, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        upstream_k8s.main(["up", "--kubeconfig", str(tmp_path / "kc"), *args])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_go_is_a_one_line_error_saying_which_go(monkeypatch, capsys):
    monkeypatch.setattr(binaries.shutil, "which", lambda name: None)
    assert upstream_k8s.main(["-q", "build"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Go >= 1.26 is needed" in err


def test_a_component_that_dies_is_reported_with_its_log_tail(tmp_path):
    component = processes.Component("crasher", [sys.executable, "-c", "print('bad flag --x'); raise SystemExit(3)"],
                                    log_dir=tmp_path)
    component.start()
    component.process.wait(timeout=30)
    with pytest.raises(processes.ComponentDied, match=r"(?s)crasher exited with code 3.*bad flag --x"):
        component.check_alive()


def test_stop_escalates_to_sigkill_after_the_bound(tmp_path):
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"
    component = processes.Component("stubborn", [sys.executable, "-c", code], log_dir=tmp_path)
    component.start()
    deadline = time.monotonic() + 30
    while "ready" not in component.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    start = time.monotonic()
    component.stop(timeout=0.5)
    assert component.process.returncode == -9
    assert time.monotonic() - start < 5


def test_waiting_stops_early_when_a_component_died():
    def died() -> None:
        raise processes.ComponentDied("etcd exited")
    with pytest.raises(processes.ComponentDied):
        readiness.wait_until("anything", lambda: (False, "x"), timeout=60, check=died)


def test_waiting_times_out_naming_what_and_the_last_state_seen():
    with pytest.raises(readiness.StartTimeout, match="2 Ready node.*last seen: node-2 missing"):
        readiness.wait_until("2 Ready node(s)", lambda: (False, "node-2 missing"), timeout=0.2, check=lambda: None,
                             interval=0.05)


def fake_bin_dir(directory: Path, etcd_script: str) -> Path:
    """Stand-ins for the four binaries: ``etcd`` runs ``etcd_script``, the others would just sleep."""
    directory.mkdir()
    for name in binaries.BINARIES:
        script = etcd_script if name == "etcd" else "sleep 60"
        path = directory / name
        path.write_text(f"#!/bin/sh\n{script}\n")
        path.chmod(0o755)
    return directory


def test_a_component_dying_during_start_fails_start_with_its_log_and_leaves_nothing(tmp_path):
    bin_dir = fake_bin_dir(tmp_path / "bin", "echo 'etcdmain: unknown flag --unsafe-no-fsync' >&2; exit 2")
    kube = control_plane.UpstreamKubernetes(bin_dir=bin_dir, start_timeout=30)
    with pytest.raises(processes.ComponentDied, match=r"(?s)etcd exited with code 2.*unknown flag --unsafe-no-fsync"):
        kube.start()
    assert kube.state_dir is not None and not kube.state_dir.exists()


def test_up_reports_a_start_failure_on_stderr_with_exit_code_1(tmp_path, monkeypatch, capsys):
    bin_dir = fake_bin_dir(tmp_path / "bin", "echo 'bind: address already in use' >&2; exit 1")
    monkeypatch.setattr(control_plane, "ensure_built", lambda: bin_dir)
    kubeconfig = tmp_path / "kc"
    assert upstream_k8s.main(["-q", "up", "--kubeconfig", str(kubeconfig), "--nodes", "0"]) == 1
    err = capsys.readouterr().err
    assert "etcd exited with code 1" in err and "bind: address already in use" in err
    assert not kubeconfig.exists()


def test_a_start_timeout_shows_every_component_log_before_the_state_is_removed(tmp_path):
    bin_dir = fake_bin_dir(tmp_path / "bin", "echo 'etcd: waiting for a quorum that never comes'; sleep 60")
    kube = control_plane.UpstreamKubernetes(bin_dir=bin_dir, start_timeout=1)
    with pytest.raises(readiness.StartTimeout, match=r"(?s)etcd /health.*etcd.log.*a quorum that never comes"):
        kube.start()
    assert kube.state_dir is not None and not kube.state_dir.exists()


def test_the_five_ports_of_a_control_plane_are_distinct():
    assert len(set(processes.free_ports(5))) == 5
