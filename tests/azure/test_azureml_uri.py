"""azureml:// URI parsing: both locations, all model forms, and clear errors for the rest."""

from __future__ import annotations

import pytest

from scoring_runtime.registry import InvalidReference, open_registry
from scoring_runtime.registry.azureml_uri import (
    AzureMLLocation,
    parse_location,
    parse_model_uri,
    parse_version,
)

WS = "azureml://subscriptions/0000-sub/resourceGroups/my-rg/workspaces/my-ws"


def test_workspace_location_round_trips() -> None:
    loc = parse_location(WS)
    assert loc == AzureMLLocation(subscription_id="0000-sub", resource_group="my-rg", workspace="my-ws")
    assert not loc.is_registry
    assert loc.uri == WS
    assert parse_location(loc.uri + "/") == loc


def test_location_keywords_are_case_insensitive_like_aml_ids() -> None:
    loc = parse_location("azureml://Subscriptions/s/resourcegroups/rg/Workspaces/ws")
    assert (loc.subscription_id, loc.resource_group, loc.workspace) == ("s", "rg", "ws")


def test_registry_location() -> None:
    loc = parse_location("azureml://registries/shared-models")
    assert loc.is_registry and loc.registry_name == "shared-models"
    assert loc.uri == "azureml://registries/shared-models"


@pytest.mark.parametrize(
    ("uri", "name", "version", "label"),
    [
        (f"{WS}/models/faq/versions/12", "faq", 12, None),
        (f"{WS}/models/faq/labels/latest", "faq", None, "latest"),
        (f"{WS}/models/faq", "faq", None, "latest"),
        ("azureml://registries/shared/models/resnet-18/versions/3", "resnet-18", 3, None),
        ("azureml://registries/shared/models/resnet-18", "resnet-18", None, "latest"),
    ],
)
def test_model_uris(uri: str, name: str, version: int | None, label: str | None) -> None:
    ref = parse_model_uri(uri)
    assert (ref.name, ref.version, ref.label) == (name, version, label)
    assert parse_model_uri(ref.uri) == ref


def test_model_uri_location_is_kept() -> None:
    ref = parse_model_uri("azureml://registries/shared/models/m/versions/1")
    assert ref.location == AzureMLLocation(registry_name="shared")
    assert parse_model_uri(f"{WS}/models/m/versions/2").location == parse_location(WS)


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("file:///srv/models", "not an azureml:// URI"),
        ("azureml://subscriptions/s/resourceGroups/rg", "names no Azure ML workspace or registry"),
        ("azureml://workspaces/ws", "names no Azure ML workspace or registry"),
        ("azureml://registries/r?x=1", "no query string"),
        (f"{WS}/models/faq/versions/3", "is a model URI"),
    ],
)
def test_bad_locations_say_what_to_write(uri: str, message: str) -> None:
    with pytest.raises(InvalidReference, match=message):
        parse_location(uri)


def test_non_integer_versions_are_refused_with_advice() -> None:
    with pytest.raises(InvalidReference, match=r"not a positive integer.*integer version"):
        parse_model_uri(f"{WS}/models/faq/versions/1.2-beta")
    with pytest.raises(InvalidReference, match="not a positive integer"):
        parse_version("0")
    assert parse_version("42") == 42


def test_model_uri_without_model_part() -> None:
    with pytest.raises(InvalidReference, match="append /models/<name>"):
        parse_model_uri(WS)


def test_location_needs_all_workspace_parts() -> None:
    with pytest.raises(InvalidReference, match="subscription id, resource group and workspace"):
        AzureMLLocation(subscription_id="s", workspace="w")
    with pytest.raises(InvalidReference, match="not both"):
        AzureMLLocation(subscription_id="s", resource_group="r", workspace="w", registry_name="x")


def test_open_registry_builds_the_backend_without_calling_azure() -> None:
    pytest.importorskip("azure.ai.ml", reason="needs the [azure] extra")
    from scoring_runtime.registry.azureml import AzureMLRegistry

    reg = open_registry(WS)
    assert isinstance(reg, AzureMLRegistry)
    assert reg.uri == WS
    reg2 = open_registry("azureml://registries/shared")
    assert isinstance(reg2, AzureMLRegistry) and reg2.location.registry_name == "shared"


@pytest.mark.parametrize(
    "uri",
    [
        "azureml:registries/r",  # no '//'
        "azureml:///registries/r",  # empty authority
        "azureml://registries/r\n",  # urlparse drops the newline silently
        "azureml://regis\ttries/r",
        "azureml://registries/r%0A",  # percent-encoded newline would slip past the regexes' `$`
        "azureml://registries/r/models/m/versions/3%0A",
        "azureml://registries/r/models/m/versions/1?",  # empty query / fragment
        "azureml://registries/r/models/m/versions/1#",
    ],
)
def test_malformed_uris_are_refused(uri: str) -> None:
    with pytest.raises(InvalidReference):
        parse_model_uri(uri) if "/models/" in uri else parse_location(uri)
