"""Fixtures for the operator tests: specs and owners for the builders, the operator for the cluster tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from scoring_operator.builders.meta import Owner
from scoring_operator.config import OperatorConfig
from scoring_operator.spec import ScoringModelSpec, parse_spec
from tests.kube.controlplane import KubeCluster
from tests.operator.kubehelpers import Operator, chart_operator, registry_claim


def make_spec(**overrides: Any) -> ScoringModelSpec:
    """A minimal valid spec (local registry, tracked label) with top-level overrides."""
    body: dict[str, Any] = {
        "model": {"registry": {"type": "local", "claimName": "registry"}, "name": "faq", "label": "latest"},
    }
    body.update(overrides)
    return parse_spec(body)


@pytest.fixture
def owner() -> Owner:
    return Owner(name="faq", namespace="ml", uid="0b6c1c1e-5f0a-4c38-9d1f-6a2c3c6d7e8f")


@pytest.fixture
def config() -> OperatorConfig:
    return OperatorConfig(runtime_image="example.com/runtime:1", runtime_gpu_image="example.com/runtime-cuda:1")


# ---------------------------------------------------------------------------------------------
# Cluster fixtures (tests using them are marked `cluster` by tests/conftest.py)


@pytest.fixture(scope="module")
def operator(cluster: KubeCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    """The chart installed with replicaCount=0, and the operator run locally with its ServiceAccount's token.

    The operator watches all namespaces and reads a temp local registry; tests register tiny dummy
    models into it (kwok pods never run them). Module-scoped, so two operators never overlap.
    """
    with chart_operator(cluster, tmp_path_factory.mktemp("operator")) as op:
        try:
            yield op
        finally:
            delete_scoring_models(cluster)


_USED_NAMESPACES: list[str] = []


def delete_scoring_models(cluster: KubeCluster) -> None:
    """Delete the ScoringModels of every namespace the tests used, while the operator still runs
    (they carry its finalizer), for each module-scoped operator fixture's teardown."""
    for ns in _USED_NAMESPACES:
        cluster.kubectl("delete", "scoringmodels", "--all", "-n", ns, "--ignore-not-found", "--wait=true",
                        "--timeout=60s", check=False)
    _USED_NAMESPACES.clear()


@pytest.fixture
def ns(cluster: KubeCluster, namespace: str, operator: Operator) -> Iterator[str]:
    """A fresh namespace with a bound `model-registry` claim, as the examples expect."""
    _USED_NAMESPACES.append(namespace)
    pv = registry_claim(cluster, namespace)
    yield namespace
    cluster.kubectl("delete", "scoringmodels", "--all", "-n", namespace, "--ignore-not-found", "--wait=true",
                    "--timeout=60s", check=False)
    cluster.kubectl("delete", "pv", pv, "--ignore-not-found", "--wait=false", check=False)
