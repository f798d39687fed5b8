"""Fixtures shared by the operator end-to-end tests (a module may override `op`)."""

from __future__ import annotations

import pytest

from .strategy_env import Strategies, start_operator


@pytest.fixture
def op(kubeconfig, namespace, tmp_path):
    """The operator under test, started for this test's namespace and stopped after it."""
    proc = start_operator(kubeconfig, namespace, tmp_path)
    yield proc
    proc.stop()


@pytest.fixture
def ts(k8s, namespace):
    return Strategies(k8s, namespace)
