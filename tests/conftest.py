"""Shared pytest setup: ``--run-slow`` for benchmarks/soaks, and isolation of dask.config."""

from __future__ import annotations

import copy

import dask.config
import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", default=False,
                     help="also run tests marked slow (benchmarks, soaks)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def clean_dask_config():
    """Restore the global dask configuration after a test that changes it (or the environment)."""
    saved = copy.deepcopy(dask.config.config)
    yield dask.config.config
    dask.config.config.clear()
    dask.config.config.update(saved)
