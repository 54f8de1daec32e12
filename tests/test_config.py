"""Rules of configuration: parsers, validation, precedence, unknown keys, documentation."""

from __future__ import annotations

import subprocess
import sys
import warnings

import dask.config
import pytest
import yaml

from dask_k8s_backend.config import (
    SCHEMA, SECTIONS, YAML_PATH, Settings, describe_config, load_settings, parse_cpu, parse_duration, parse_memory,
)

GI = 2**30


@pytest.mark.parametrize("text, expected", [
    ("2GiB", 2 * GI), ("2Gi", 2 * GI), ("512M", 512 * 10**6), ("512Mi", 512 * 2**20), ("1e9", 10**9),
    (1024, 1024), ("1.5Gi", int(1.5 * GI)), ("1G", 10**9), ("100", 100), ("64KiB", 65536), (0, 0),
])
def test_parse_memory_accepts_kubernetes_and_dask_quantities(text, expected):
    assert parse_memory(text, "k8s-backend.worker.memory") == expected


@pytest.mark.parametrize("bad", ["lots", "", "2 GiBs", "-1Gi", "Gi", None, True, [1], "1.2.3G"])
def test_parse_memory_rejects_bad_values_naming_key_and_value(bad):
    with pytest.raises(ValueError) as info:
        parse_memory(bad, "k8s-backend.worker.memory")
    assert str(info.value).startswith("k8s-backend.worker.memory: ")
    assert repr(bad) in str(info.value)


def test_memory_error_message_says_what_to_write():
    with pytest.raises(ValueError, match=r"^k8s-backend.worker.memory: cannot parse 'lots' as a memory "
                                         r"quantity; use a Kubernetes quantity such as '2GiB' or '512Mi'"):
        load_settings({"worker.memory": "lots"})


@pytest.mark.parametrize("text, expected", [("500m", 0.5), (2, 2.0), ("1.5", 1.5), ("250m", 0.25), (0.1, 0.1)])
def test_parse_cpu_accepts_cores_and_millicores(text, expected):
    assert parse_cpu(text, "k") == pytest.approx(expected)


@pytest.mark.parametrize("bad", ["two", "500mm", "-1", "", None, False, "1Gi"])
def test_parse_cpu_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="^k: "):
        parse_cpu(bad, "k")


@pytest.mark.parametrize("text, expected", [
    ("30s", 30.0), ("5m", 300.0), ("100ms", 0.1), ("1h", 3600.0), (12, 12.0), ("2.5", 2.5), (0.25, 0.25), ("1d", 86400.0),
])
def test_parse_duration_accepts_units_and_seconds(text, expected):
    assert parse_duration(text, "k") == pytest.approx(expected)


@pytest.mark.parametrize("bad", ["soon", "5 parsecs", "-3s", None, True, "s"])
def test_parse_duration_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="^k: .*duration"):
        parse_duration(bad, "k")


def test_defaults_load_into_typed_settings():
    settings = load_settings()
    assert isinstance(settings, Settings)
    assert settings.worker.memory == GI
    assert settings.worker.min_memory_overhead == 384 * 2**20
    assert settings.allocation.batch_delay == pytest.approx(0.1)
    assert settings.executor.api_polling_interval == 30.0
    assert settings.master == "embedded://"


@pytest.mark.parametrize("key, value, fragment", [
    ("image-pull-policy", "Sometimes", "is not one of Always, IfNotPresent, Never"),
    ("deploy-mode", "remote", "is not one of client, cluster"),
    ("allocation.batch-size", 0, "greater than zero"),
    ("allocation.batch-size", "many", "whole number"),
    ("worker.cores", 0, "greater than zero"),
    ("worker.cores", "-1", "must not be negative"),
    ("api.qps", -5, "greater than zero"),
    ("api.max-retries", -1, "zero or more"),
    ("api.rate-limit", "never", "not one of auto, always"),
    ("scheduler.port", 70000, "between 0 and 65535"),
    ("worker.env", {"A": {"nested": 1}}, "expected a string value"),
    ("worker.env", ["A=1"], "expected a mapping"),
    ("worker.labels", {"": "x"}, "non-empty string"),
    ("worker.tolerations", ["gpu"], "each toleration must be a mapping"),
    ("worker.tolerations", [{"key": "gpu", "operator": "Maybe"}], "Equal or Exists"),
    ("worker.tolerations", [{"kee": "gpu"}], "unknown fields"),
    ("worker.secure-defaults", "perhaps", "true or false"),
    ("worker.resources", {"GPU": -1}, "greater than zero"),
    ("namespace", "", "non-empty string"),
    ("executor.max-failures", 0, "greater than zero"),
])
def test_every_bad_value_names_its_key(key, value, fragment):
    with pytest.raises(ValueError) as info:
        load_settings({key: value})
    assert str(info.value).startswith(f"k8s-backend.{key}")
    assert fragment in str(info.value)


def test_mappings_and_tolerations_are_kept():
    tolerations = [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]
    settings = load_settings({"worker.env": {"A": 1, "B": "x"}, "worker.tolerations": tolerations,
                              "worker.resources": {"GPU": 1}})
    assert settings.worker.env == {"A": "1", "B": "x"}
    assert settings.worker.tolerations == tolerations
    assert settings.worker.resources == {"GPU": 1.0}


def test_oauth_token_and_token_file_together_are_rejected_without_showing_the_token():
    with pytest.raises(ValueError, match="set only one of them") as info:
        load_settings({"authenticate.oauth-token": "s3cret-token", "authenticate.oauth-token-file": "/tmp/t"})
    assert "s3cret" not in str(info.value)


def test_bad_token_type_is_reported_without_its_value():
    with pytest.raises(ValueError) as info:
        load_settings({"authenticate.oauth-token": ["s3cret-token"]})
    assert "s3cret" not in str(info.value) and "<hidden>" in str(info.value)


def test_token_is_not_in_settings_repr():
    assert "s3cret" not in repr(load_settings({"authenticate.oauth-token": "s3cret-token"}))


def test_precedence_is_yaml_then_env_then_overrides_then_kwargs(monkeypatch, clean_dask_config):
    assert load_settings().worker.memory == GI  # yaml
    monkeypatch.setenv("DASK_K8S_BACKEND__WORKER__MEMORY", "3GiB")
    monkeypatch.setenv("DASK_K8S_BACKEND__IMAGE_PULL_POLICY", "Never")
    dask.config.refresh()
    env = load_settings()
    assert (env.worker.memory, env.image_pull_policy) == (3 * GI, "Never")
    over = load_settings({"worker.memory": "4GiB"})
    assert (over.worker.memory, over.image_pull_policy) == (4 * GI, "Never")
    kw = load_settings({"worker.memory": "4GiB"}, worker={"memory": "5GiB"}, image_pull_policy="Always")
    assert (kw.worker.memory, kw.image_pull_policy) == (5 * GI, "Always")


def test_nested_override_merges_into_its_section():
    settings = load_settings({"worker": {"memory": "2GiB"}, "api": {"qps": 5}}, allocation={"batch_size": 3})
    assert settings.worker.memory == 2 * GI and settings.worker.cores == 1.0
    assert settings.api.qps == 5.0 and settings.api.burst == 200
    assert settings.allocation.batch_size == 3


def test_dask_config_set_is_honoured(clean_dask_config):
    with dask.config.set({"k8s-backend.namespace": "analytics"}):
        assert load_settings().namespace == "analytics"


def test_unknown_key_warns_with_the_closest_valid_key():
    with pytest.warns(UserWarning, match=r"'k8s-backend.worker.memry'.*did you mean 'k8s-backend.worker.memory'"):
        settings = load_settings({"worker.memry": "2GiB"})
    assert settings.worker.memory == GI


def test_unknown_key_with_nothing_close_still_warns():
    with pytest.warns(UserWarning, match="Unknown configuration key 'k8s-backend.zzzz'"):
        load_settings(zzzz=1)


def test_known_keys_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_settings({"worker.memory": "2GiB", "k8s-backend.namespace": "x"}, deploy_mode="client")


def test_describe_config_documents_every_validated_key():
    described = {key.removeprefix("k8s-backend."): (default, comment) for key, default, comment in describe_config()}
    assert set(described) == set(SCHEMA)
    assert all(comment for _, comment in described.values())
    assert described["worker.memory"][0] == "1GiB"


def test_every_settings_field_has_a_validated_key_and_back():
    from dataclasses import fields

    expected = set()
    for top in fields(Settings):
        if top.name in SECTIONS:
            expected |= {f"{top.name}.{f.name.replace('_', '-')}" for f in fields(getattr(Settings(), top.name))}
        else:
            expected.add(top.name.replace("_", "-"))
    assert expected == set(SCHEMA)


def test_importing_the_package_registers_the_config_defaults():
    """As dask-kubernetes and dask-jobqueue do: defaults are readable right after ``import dask_k8s_backend``,
    without importing the cluster (or distributed)."""
    script = ("import sys, dask.config, dask_k8s_backend\n"
              "print(dask.config.get('k8s-backend.worker.memory'), dask.config.get('k8s-backend.namespace'))\n"
              "print('distributed' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    defaults = yaml.safe_load(YAML_PATH.read_text())["k8s-backend"]
    assert done.stdout.split() == [str(defaults["worker"]["memory"]), defaults["namespace"], "False"]
