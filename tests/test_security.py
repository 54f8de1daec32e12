"""Dask comm TLS material: per-app CA, Secret for the pods, Security objects, nothing leaked in reprs."""

from __future__ import annotations

import ssl

import pytest

from dask_k8s_backend import labels
from dask_k8s_backend.config import load_settings
from dask_k8s_backend.pods.builder import AppSpec, build_executor_pod
from dask_k8s_backend.cluster.tls_secret import generate_tls_material, scheduler_security, tls_secret
from dask_k8s_backend.pods.tls_env import TLS_ENV, secret_name, tls_env

APP = AppSpec(app_id="abc123", app_name="tls-app", namespace="ns")


@pytest.fixture(scope="module")
def material():
    return generate_tls_material(APP.app_id)


def test_certificate_is_signed_by_the_apps_own_ca(material):
    from cryptography import x509

    ca = x509.load_pem_x509_certificate(material.ca_cert.encode())
    cert = x509.load_pem_x509_certificate(material.cert.encode())
    cert.verify_directly_issued_by(ca)
    other = x509.load_pem_x509_certificate(generate_tls_material("other").ca_cert.encode())
    with pytest.raises(Exception):
        cert.verify_directly_issued_by(other)


def test_scheduler_security_requires_encryption_and_builds_tls_contexts(material):
    security = scheduler_security(material)
    assert security.require_encryption
    for role in ("scheduler", "client", "worker"):
        args = security.get_connection_args(role)
        assert isinstance(args["ssl_context"], ssl.SSLContext)


def test_key_material_never_in_reprs(material):
    body = material.key.splitlines()[1]
    assert body not in repr(material)
    assert body not in repr(scheduler_security(material))


def test_secret_is_labelled_with_the_app_id_and_holds_the_pems(material):
    secret = tls_secret(APP, material)
    assert secret["metadata"]["name"] == secret_name(APP) == "dask-tls-abc123"
    assert secret["metadata"]["labels"][labels.APP_ID] == "abc123"
    assert set(secret["stringData"].values()) == {material.ca_cert, material.cert, material.key}


def test_worker_pods_read_the_secret_only_when_tls_is_enabled():
    def env_names(settings):
        pod = build_executor_pod(executor_id=1, app=APP, settings=settings, scheduler_address="tls://s:1")
        return {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}

    assert not set(TLS_ENV) & set(env_names(load_settings()))
    env = env_names(load_settings({"security.tls": True}))
    for var, key in TLS_ENV.items():
        assert env[var]["valueFrom"]["secretKeyRef"] == {"name": "dask-tls-abc123", "key": key}
    assert env["DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION"]["value"] == "True"
    assert tls_env(APP)[0]["valueFrom"]["secretKeyRef"]["name"] == secret_name(APP)


def test_tls_in_cluster_mode_is_accepted_and_the_scheduler_pod_reads_the_secret():
    settings = load_settings({"security.tls": True, "deploy-mode": "cluster"})
    assert settings.security.tls and settings.deploy_mode == "cluster"
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in tls_env(APP, role="scheduler") if "valueFrom" in e}
    assert env["DASK_DISTRIBUTED__COMM__TLS__SCHEDULER__KEY"] == {"name": "dask-tls-abc123", "key": "tls.key"}
