"""Suite-wide fixtures: a real Kubernetes cluster (``cluster``) and a fresh ``namespace`` per test.

Tests that need Kubernetes are marked ``@pytest.mark.cluster`` (using the ``cluster`` or
``namespace`` fixture marks them automatically). They run against a private control plane
started once per session (see tests/kube/controlplane.py and docs/test-cluster.md), or against
the cluster of ``$SCORING_TEST_KUBECONFIG`` (kind, k3s, AKS...) when that is set.

- ``SCORING_SKIP_CLUSTER=1``: skip the cluster tests, with a reason.
- Otherwise missing binaries FAIL the cluster tests: CI must notice, not silently skip.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kube.controlplane import (
    BinariesMissingError,
    ControlPlane,
    ExistingCluster,
    KubeCluster,
    find_bin_dir,
    namespace_name_for,
)

ENV_KUBECONFIG = "SCORING_TEST_KUBECONFIG"
ENV_SKIP = "SCORING_SKIP_CLUSTER"
_CLUSTER_FIXTURES = {"cluster", "namespace"}


@functools.cache
def _bin_dir_problem() -> str | None:
    """Why the private control plane cannot start (None when the binaries are there); asked once."""
    try:
        find_bin_dir()
    except BinariesMissingError as exc:
        return str(exc)
    return None


@pytest.hookimpl(tryfirst=True)  # before -m deselection, so "-m 'not cluster'" sees our marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip = os.environ.get(ENV_SKIP) == "1"
    for item in items:
        if _CLUSTER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.cluster)
        if skip and item.get_closest_marker("cluster"):
            item.add_marker(pytest.mark.skip(reason=f"{ENV_SKIP}=1: Kubernetes cluster tests disabled"))


def pytest_runtest_setup(item: pytest.Item) -> None:
    if not item.get_closest_marker("cluster") or os.environ.get(ENV_SKIP) == "1":
        return
    if not os.environ.get(ENV_KUBECONFIG) and (problem := _bin_dir_problem()):
        pytest.fail(problem, pytrace=False)


@pytest.fixture(scope="session")
def cluster() -> Iterator[KubeCluster]:
    """The Kubernetes cluster of this test session (admin access)."""
    existing = os.environ.get(ENV_KUBECONFIG)
    if existing:
        try:
            bin_dir: Path | None = find_bin_dir()
        except BinariesMissingError:
            bin_dir = None  # kubectl/helm from $PATH
        with ExistingCluster(Path(existing), bin_dir=bin_dir) as ext:
            yield ext
        return
    with ControlPlane() as cp:
        yield cp


@pytest.fixture
def namespace(cluster: KubeCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace named after the test; deleted (without waiting) afterwards."""
    name = cluster.create_namespace(namespace_name_for(request.node.name))
    yield name
    cluster.delete_namespace(name, wait=False)
