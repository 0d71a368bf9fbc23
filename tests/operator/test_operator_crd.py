"""The generated CRD: committed copies are fresh, the schema is structural, and CEL matches pydantic."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any, Literal

import pytest
import yaml
from pydantic import BaseModel, Field

from scoring_operator import crdgen
from scoring_operator import spec as api

#: Keys a structural schema node may carry (what this generator is allowed to emit).
_ALLOWED = {
    "description", "type", "format", "enum", "default", "minimum", "maximum", "minLength", "maxLength",
    "pattern", "minItems", "maxItems", "maxProperties", "items", "properties", "required", "additionalProperties",
    "anyOf",
    "x-kubernetes-int-or-string", "x-kubernetes-list-type", "x-kubernetes-list-map-keys",
    "x-kubernetes-validations",
}


def _walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, child in (node.get("properties") or {}).items():
        yield from _walk(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return crdgen.openapi_schema()


def test_committed_crds_are_fresh() -> None:
    expected = crdgen.render()
    for path in crdgen.OUTPUTS:
        assert path.is_file(), f"{path} is missing: run `python -m scoring_operator.crdgen`"
        assert path.read_text(encoding="utf-8") == expected, (
            f"{path.relative_to(crdgen.REPO_ROOT)} is stale: run `python -m scoring_operator.crdgen` (make crds)"
        )
    assert crdgen.main(["--check"]) == 0


def test_crd_document(schema: dict[str, Any]) -> None:
    (doc,) = [d for d in yaml.safe_load_all(crdgen.render()) if d]
    assert doc["metadata"]["name"] == "scoringmodels.scoring.dev"
    names = doc["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"]) == ("ScoringModel", "scoringmodels", ["sm"])
    assert doc["spec"]["scope"] == "Namespaced"
    (version,) = doc["spec"]["versions"]
    assert version["name"] == "v1alpha1" and version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Model"] == ".spec.model.name"
    assert columns["Version"] == ".status.model.version"
    assert columns["Ready"] == '.status.conditions[?(@.type=="Ready")].status'
    assert columns["Replicas"] == ".status.readyReplicas"
    assert columns["Endpoint"] == ".status.endpoint"
    assert columns["Age"] == ".metadata.creationTimestamp"
    wide = {c["name"] for c in version["additionalPrinterColumns"] if c.get("priority") == 1}
    assert wide == {"URL", "Rollout", "Candidate", "Weight"}  # `-o wide` only: the default view is unchanged


def test_schema_is_structural(schema: dict[str, Any]) -> None:
    for path, node in _walk(schema):
        unexpected = set(node) - _ALLOWED
        assert not unexpected, f"{path or '<root>'}: non-structural keys {unexpected}"
        if "anyOf" in node:
            assert node.get("x-kubernetes-int-or-string") is True, f"{path}: anyOf only for int-or-string"
            assert "type" not in node
        else:
            assert node.get("type") in {"object", "array", "string", "integer", "boolean", "number"}, path
        assert node.get("additionalProperties") is not False, path
        assert "default" not in node or node["default"] is not None, path


def test_every_spec_field_is_described(schema: dict[str, Any]) -> None:
    """`kubectl explain scoringmodel.spec...` must say what each field is for."""
    for path, node in _walk(schema["properties"]["spec"], ".spec"):
        if path.endswith(("[]", "{}")):
            continue
        assert node.get("description"), f"{path} has no description"


def test_registry_union_is_one_object_with_a_type_enum(schema: dict[str, Any]) -> None:
    reg = schema["properties"]["spec"]["properties"]["model"]["properties"]["registry"]
    assert reg["type"] == "object"
    assert set(reg["properties"]["type"]["enum"]) >= {"local"}
    assert "claimName" in reg["properties"]
    assert "type" in reg["required"]


def _rules(schema: dict[str, Any]) -> dict[str, str]:
    return {
        r["rule"]: r.get("message", r.get("messageExpression", ""))
        for _, node in _walk(schema)
        for r in node.get("x-kubernetes-validations", [])
    }


def test_cel_rules_cover_the_cross_field_checks(schema: dict[str, Any]) -> None:
    messages = set(_rules(schema).values())
    for expected in (
        "set exactly one of spec.model.version (pin a version) or spec.model.label (track a label such as latest)",
        "set spec.replicas or spec.autoscaling, not both",
        "autoscaling.minReplicas must not exceed autoscaling.maxReplicas",
        "autoscaling.targetCPUUtilizationPercentage needs spec.resources.requests.cpu",
        "gpu.nodeSelector and gpu.tolerations only apply when gpu.count > 0",
    ):
        assert expected in messages


@pytest.mark.parametrize(
    "body",
    [
        {"model": {"registry": {"type": "local", "claimName": "r"}, "name": "m", "version": 1, "label": "x"}},
        {"model": {"registry": {"type": "local", "claimName": "r"}, "name": "m", "label": "x"}, "replicas": 1,
         "autoscaling": {"maxReplicas": 2, "targetInFlightRequests": 1}},
        {"model": {"registry": {"type": "local", "claimName": "r"}, "name": "m", "label": "x"},
         "autoscaling": {"maxReplicas": 2, "targetCPUUtilizationPercentage": 50}},
        {"model": {"registry": {"type": "local", "claimName": "r"}, "name": "m", "label": "x"},
         "gpu": {"count": 0, "tolerations": []}},
        {"model": {"registry": {"type": "local", "claimName": "r"}, "name": "m", "label": "x"},
         "gpu": {"count": 1, "tolerations": [{"key": "k", "operator": "Exists", "value": "v"}]}},
        {"model": {"registry": {"type": "local", "claimName": "r"}, "name": "m", "label": "x"},
         "gpu": {"count": 1, "tolerations": [{"key": "k", "tolerationSeconds": 5}]}},
        {"model": {"registry": {"type": "local", "claimName": "r"}, "name": "m", "label": "x"},
         "gpu": {"count": 1, "tolerations": [{"effect": "NoSchedule"}]}},
        {"model": {"registry": {"type": "local", "claimName": "r"}, "name": "m", "label": "x"},
         "resources": {"requests": {"memory": "2Gi"}, "limits": {"memory": "1Gi"}}},
        {"model": {"registry": {"type": "local", "claimName": "r"}, "name": "m", "label": "x"},
         "resources": {"limits": {"cpu": "-1"}}},
    ],
    ids=["version-and-label", "replicas-and-autoscaling", "cpu-target-without-requests", "gpu-placement",
         "toleration-exists-value", "toleration-seconds", "toleration-empty-key", "requests-over-limits",
         "negative-quantity"],
)
def test_pydantic_and_apiserver_say_the_same(schema: dict[str, Any], body: dict[str, Any]) -> None:
    """Whatever refuses a spec (operator or apiserver), the user reads the same sentence."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as exc:
        api.parse_spec(body)
    pydantic_message = api.format_validation_error(exc.value)
    assert any(m in pydantic_message for m in _rules(schema).values() if m)


class _Disk(BaseModel):
    """A disk."""

    type: Literal["disk"]
    path: str = Field(description="where")


class _Cloud(BaseModel):
    """A cloud."""

    type: Literal["cloud"]
    bucket: str = Field(description="which bucket")
    region: str | None = Field(default=None, description="where")


class _Holder(BaseModel):
    source: Annotated[_Disk | _Cloud, Field(discriminator="type", description="The source.")]


def test_generator_flattens_a_tagged_union_with_per_variant_rules() -> None:
    """The slot for more registry types: a two-variant union becomes one structural object."""
    raw = _Holder.model_json_schema()
    node = crdgen._structural(crdgen._resolve(raw, raw["$defs"]))["properties"]["source"]
    assert node["properties"]["type"]["enum"] == ["disk", "cloud"]
    assert set(node["properties"]) == {"type", "path", "bucket", "region"}
    assert node["required"] == ["type"]
    rules = {r["rule"]: r["message"] for r in node["x-kubernetes-validations"]}
    assert rules["self.type != 'disk' || has(self.path)"] == "type disk needs path"
    assert rules["self.type != 'cloud' || has(self.bucket)"] == "type cloud needs bucket"
    assert rules["self.type != 'disk' || !has(self.bucket)"] == "type disk has no bucket"
    assert "`disk`: A disk." in node["description"] and "`cloud`: A cloud." in node["description"]
