"""Fixtures for the Azure ML registry tests: a loopback Azure emulation and registries wired to it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

pytest.importorskip("azure.ai.ml", reason="the Azure ML backend needs the [azure] extra")
pytest.importorskip("azure.storage.blob", reason="the Azure ML backend needs the [azure] extra")

from scoring_runtime.registry.azureml import AzureMLRegistry
from scoring_runtime.registry.azureml_uri import AzureMLLocation
from tests.azure.fake_azure import FakeAzure, StaticCredential

#: Fast retries for tests: the SDK's policy still runs (and honours Retry-After), only backoff shrinks.
FAST_RETRY = {"retry_total": 2, "retry_backoff_factor": 0.01, "retry_backoff_max": 0.05}


@pytest.fixture
def fake() -> Iterator[FakeAzure]:
    with FakeAzure() as f:
        yield f


@pytest.fixture
def cred(fake: FakeAzure) -> StaticCredential:
    return StaticCredential(fake.token)


@pytest.fixture
def workspace(fake: FakeAzure, cred: StaticCredential) -> Callable[..., AzureMLRegistry]:
    def make(**options: Any) -> AzureMLRegistry:
        loc = AzureMLLocation(subscription_id=fake.sub, resource_group=fake.rg, workspace=fake.ws)
        return AzureMLRegistry(
            loc, credential=cred, transport=fake.transport(), client_options={**FAST_RETRY, **options}
        )

    return make


@pytest.fixture
def aml_registry(fake: FakeAzure, cred: StaticCredential) -> Callable[..., AzureMLRegistry]:
    def make(**options: Any) -> AzureMLRegistry:
        return AzureMLRegistry(
            AzureMLLocation(registry_name=fake.registry),
            credential=cred,
            transport=fake.transport(),
            client_options={**FAST_RETRY, **options},
        )

    return make
