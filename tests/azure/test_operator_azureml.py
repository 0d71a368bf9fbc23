"""The operator side of Azure ML models: the `azureml` registry variant, pods, resolver, CRD, chart."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from scoring_operator import crdgen
from scoring_operator import spec as api
from scoring_operator.builders import meta
from scoring_operator.builders.pod import INIT_CONTAINER, RUNTIME_CONTAINER, pod_template
from scoring_operator.config import OperatorConfig
from scoring_operator.resolver import Resolver
from scoring_runtime.registry.azureml import AzureMLRegistry
from scoring_runtime.registry.azureml_uri import parse_location
from tests.azure.fake_azure import FakeAzure, FakeModel, StaticCredential

REPO = Path(__file__).resolve().parents[2]
SUB = "0b1f6471-1bf0-4dda-aec3-cb9272f09590"
CLIENT_ID = "11111111-2222-3333-4444-555555555555"
WORKSPACE = {"type": "azureml", "subscriptionId": SUB, "resourceGroup": "rg-ml", "workspace": "ws-prod",
             "serviceAccountName": "aml-reader"}
REGISTRY = {"type": "azureml", "registryName": "shared-models", "serviceAccountName": "aml-reader",
            "clientId": CLIENT_ID}


def model_spec(registry: dict[str, Any], **model: Any) -> api.ScoringModelSpec:
    return api.ScoringModelSpec.model_validate(
        {"model": {"registry": registry, "name": "faq", **(model or {"label": "latest"})}}
    )


def containers(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    pod = template["spec"]
    return {c["name"]: c for c in [*pod["initContainers"], *pod["containers"]]}


# ---------------------------------------------------------------- spec
def test_spec_accepts_both_locations_and_builds_their_uris() -> None:
    ws = model_spec(WORKSPACE).model.registry
    assert isinstance(ws, api.AzureMLRegistry)
    assert ws.uri == f"azureml://subscriptions/{SUB}/resourceGroups/rg-ml/workspaces/ws-prod"
    assert parse_location(ws.uri).workspace == "ws-prod"  # what `scoring fetch` will parse
    reg = model_spec(REGISTRY).model.registry
    assert isinstance(reg, api.AzureMLRegistry) and reg.uri == "azureml://registries/shared-models"
    assert reg.wire() == REGISTRY  # camelCase round trip


@pytest.mark.parametrize(
    ("registry", "message"),
    [
        ({**REGISTRY, "workspace": "ws"}, "a workspace or an AML registry"),
        ({"type": "azureml", "subscriptionId": SUB, "workspace": "ws"}, "needs subscriptionId, resourceGroup"),
        ({**WORKSPACE, "subscriptionId": "not-a-guid"}, "subscriptionId"),
        ({**WORKSPACE, "clientId": "me"}, "clientId"),
        ({**WORKSPACE, "claimName": "pvc"}, "claimName"),
        ({"type": "local", "claimName": "pvc", "serviceAccountName": "x"}, "serviceAccountName"),
    ],
)
def test_spec_refuses_mixed_or_partial_locations(registry: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        model_spec(registry)


# ---------------------------------------------------------------- pod
def test_pod_uses_workload_identity_for_the_fetch_only() -> None:
    owner = meta.Owner("faq", "team-a", "uid-1")
    template = pod_template(owner, model_spec(REGISTRY), 7, OperatorConfig())
    md, pod = template["metadata"], template["spec"]
    assert md["labels"]["azure.workload.identity/use"] == "true"
    assert md["labels"]["app.kubernetes.io/instance"] == "faq"  # the selector labels are untouched
    assert md["annotations"]["azure.workload.identity/skip-containers"] == RUNTIME_CONTAINER
    assert pod["serviceAccountName"] == "aml-reader"
    c = containers(template)
    fetch = c[INIT_CONTAINER]
    assert fetch["command"][:4] == ["scoring", "fetch", "--registry", "azureml://registries/shared-models"]
    assert fetch["command"][4:] == ["--name", "faq", "--version", "7", "--dest", "/model", "--clean"]
    assert fetch["env"] == [{"name": "AZURE_CLIENT_ID", "value": CLIENT_ID}]
    assert not any(e["name"].startswith("AZURE_") for e in c[RUNTIME_CONTAINER]["env"])
    assert not [v for v in pod["volumes"] if "persistentVolumeClaim" in v]


def test_pod_without_service_account_uses_no_workload_identity() -> None:
    registry = {k: v for k, v in WORKSPACE.items() if k != "serviceAccountName"}
    template = pod_template(meta.Owner("faq", "team-a", "u"), model_spec(registry, version=2), 2, OperatorConfig())
    assert "azure.workload.identity/use" not in template["metadata"]["labels"]
    assert "serviceAccountName" not in template["spec"]
    assert template["spec"]["automountServiceAccountToken"] is False
    assert "env" not in containers(template)[INIT_CONTAINER]


def test_local_registry_pods_are_unchanged() -> None:
    spec = model_spec({"type": "local", "claimName": "models"})
    template = pod_template(meta.Owner("faq", "team-a", "u"), spec, 1, OperatorConfig())
    assert not [k for k in template["metadata"]["labels"] if k.startswith("azure.")]
    assert not [k for k in template["metadata"]["annotations"] if k.startswith("azure.")]


# ---------------------------------------------------------------- resolver
async def test_resolver_pins_a_label_through_the_aml_backend() -> None:
    with FakeAzure() as fake:
        for v, day in (("1", 1), ("2", 3), ("3", 2)):
            fake.add_model(FakeModel("faq", v, {"m.bin": b"x"}, tags={"framework": "sklearn", "task": "t"},
                                     created=f"2024-05-0{day}T00:00:00Z"), registry=True)
        spec = model_spec({"type": "azureml", "registryName": fake.registry})
        resolver = Resolver(None, timeout=30)
        uri = resolver.registry_uri(spec.model.registry)
        assert uri == f"azureml://registries/{fake.registry}"
        # The operator process would build this with DefaultAzureCredential; here it talks to the fake.
        resolver._registries[uri] = AzureMLRegistry.from_uri(
            uri, credential=StaticCredential(fake.token), transport=fake.transport()
        )
        resolved = await resolver.resolve(spec.model)
        assert (resolved.name, resolved.version, resolved.resolved_from) == ("faq", 2, "label:latest")
        discovery = len(fake.requests_to("api.azureml.ms", "/discovery"))
        await resolver.resolve(spec.model)
        assert len(fake.requests_to("api.azureml.ms", "/discovery")) == discovery  # client reused


# ---------------------------------------------------------------- CRD
def test_generated_crd_carries_the_azureml_variant() -> None:
    text = (REPO / "crds" / crdgen.CRD_FILE).read_text()
    assert text == crdgen.render(), "CRD is stale: run python -m scoring_operator.crdgen"
    crd = yaml.safe_load(text.split("---\n", 1)[1])
    model = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["model"]
    registry = model["properties"]["registry"]
    assert registry["properties"]["type"]["enum"] == ["local", "azureml"]
    assert {"subscriptionId", "resourceGroup", "workspace", "registryName", "serviceAccountName", "clientId"} <= set(
        registry["properties"]
    )
    assert any("has(self.registryName)" in r["rule"] for r in registry["x-kubernetes-validations"])


def _scoring_model(name: str, registry: dict[str, Any]) -> str:
    return json.dumps({
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": name},
        "spec": {"model": {"registry": registry, "name": "faq", "label": "latest"}},
    })


def test_apiserver_admits_only_whole_azureml_locations(cluster: Any, namespace: str) -> None:
    """The CEL rules, as the real kube-apiserver evaluates them (server-side dry run)."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds" / crdgen.CRD_FILE))
    cluster.kubectl("wait", "--for=condition=Established", f"crd/{api.PLURAL}.{api.GROUP}", "--timeout=60s")
    for i, good in enumerate([WORKSPACE, REGISTRY]):
        cluster.kubectl("apply", "-n", namespace, "--dry-run=server", "-f", "-", input=_scoring_model(f"ok-{i}", good))
    bad = [
        ({**REGISTRY, "workspace": "ws-prod"}, "or registryName alone"),
        ({"type": "azureml", "registryName": "r", "subscriptionId": SUB}, "or registryName alone"),
        ({"type": "azureml", "workspace": "ws"}, "or registryName alone"),
        ({"type": "azureml", "registryName": "r", "claimName": "pvc"}, "type azureml has no claimName"),
    ]
    for i, (registry, message) in enumerate(bad):
        proc = cluster.kubectl("apply", "-n", namespace, "--dry-run=server", "-f", "-",
                               input=_scoring_model(f"bad-{i}", registry), check=False)
        assert proc.returncode != 0 and message in proc.stderr, proc.stderr


# ---------------------------------------------------------------- chart
def _helm() -> str:
    try:
        from tests.kube.controlplane import BinariesMissingError, find_bin_dir

        candidate = find_bin_dir() / "helm"
        if candidate.is_file():
            return str(candidate)
    except BinariesMissingError:
        pass
    found = shutil.which("helm")
    if found is None:
        pytest.skip("helm is not built (bash hack/build-cluster-bins.sh) nor on $PATH")
    return found


def _render(*sets: str) -> list[dict[str, Any]]:
    args = [_helm(), "template", "t", str(REPO / "charts" / "scoring-operator")]
    for s in sets:
        args += ["--set", s]
    out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=60)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def test_chart_wires_workload_identity_and_the_telemetry_secret() -> None:
    docs = _render(f"azure.workloadIdentity.clientId={CLIENT_ID}", "telemetry.connectionStringSecret.name=ai",
                   "serviceAccount.annotations.team=ml")
    sa = next(d for d in docs if d["kind"] == "ServiceAccount")
    assert sa["metadata"]["annotations"] == {"azure.workload.identity/client-id": CLIENT_ID, "team": "ml"}
    dep = next(d for d in docs if d["kind"] == "Deployment")
    assert dep["spec"]["template"]["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    env = {e["name"]: e for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["APPLICATIONINSIGHTS_CONNECTION_STRING"]["valueFrom"] == {
        "secretKeyRef": {"name": "ai", "key": "connection-string"}
    }
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}


def test_chart_defaults_add_no_azure_settings() -> None:
    docs = _render()
    sa = next(d for d in docs if d["kind"] == "ServiceAccount")
    assert "annotations" not in sa["metadata"]
    dep = next(d for d in docs if d["kind"] == "Deployment")
    assert "azure.workload.identity/use" not in dep["spec"]["template"]["metadata"]["labels"]
    names = {e["name"] for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "APPLICATIONINSIGHTS_CONNECTION_STRING" not in names
