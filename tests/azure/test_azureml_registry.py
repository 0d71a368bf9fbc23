"""The AML registry backend through the real MLClient / storage SDKs, against a loopback Azure emulation."""

from __future__ import annotations

import hashlib
import json
import logging
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from scoring_runtime.manifest import load_manifest
from scoring_runtime.registry import (
    AccessDenied,
    IntegrityError,
    InvalidReference,
    LabelNotFound,
    LocalFileRegistry,
    ModelNotFound,
    RegistryUnavailable,
)
from scoring_runtime.registry.azureml import AzureMLRegistry
from scoring_runtime.registry.azureml_uri import AzureMLLocation
from tests.azure.conftest import FAST_RETRY
from tests.azure.fake_azure import AML_REGION, ARM, FakeAzure, FakeModel, StaticCredential

Factory = Callable[..., AzureMLRegistry]
TAGS = {"framework": "sklearn", "task": "faq-matching"}


def files(n: int = 3) -> dict[str, bytes]:
    out = {f"part-{i}.bin": bytes([i]) * (1000 + i) for i in range(n)}
    out["nested/vocab.txt"] = b"hello\nworld\n"
    return out


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def dir_tree(d: Path) -> set[str]:
    return {p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file()}


def full_manifest_files(tmp_path: Path, name: str = "faq") -> dict[str, bytes]:
    """A version directory as `scoring register` writes it (files + model.json with sha256s)."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "model.json").write_text(json.dumps({"framework": "sklearn", "task": "faq-matching",
                                                "flavour": {"format": "skops"}}))
    (src / "model.skops").write_bytes(b"skops-bytes" * 100)
    (src / "labels.txt").write_text("a\nb\n")
    local = LocalFileRegistry(tmp_path / "local")
    m = local.register(name, src)
    vdir = tmp_path / "local" / name / str(m.version)
    return {p.relative_to(vdir).as_posix(): p.read_bytes() for p in vdir.rglob("*") if p.is_file()}


# ---------------------------------------------------------------- listing and resolution
def test_versions_follow_next_links_and_latest_is_most_recently_created(fake: FakeAzure, workspace: Factory) -> None:
    for v, day in (("1", 1), ("2", 9), ("3", 5), ("4", 2), ("5", 3)):
        fake.add_model(FakeModel("faq", v, files(1), tags=TAGS, created=f"2024-05-0{day}T00:00:00Z"))
    reg = workspace()
    versions = reg.list_versions("faq")
    assert [v.version for v in versions] == [1, 2, 3, 4, 5]
    assert [v.labels for v in versions] == [(), ("latest",), (), (), ()]  # 2 was created last
    assert {(v.framework, v.task) for v in versions} == {("sklearn", "faq-matching")}
    pages = [s for s in fake.requests_to(ARM, "/models/faq/versions") if "$orderBy" not in s.query]
    assert [s.query.get("$skipToken") for s in pages] == [None, ["2"], ["4"]]  # 5 versions, pages of 2

    assert reg.labels("faq") == {"latest": 2}
    resolved = reg.resolve("faq", label="latest")
    assert (resolved.version, resolved.resolved_from, resolved.registry_uri) == (2, "label:latest", reg.uri)
    assert reg.resolve("faq", version=4).resolved_from == "version"


def test_list_models_pages_too(fake: FakeAzure, workspace: Factory) -> None:
    for name in ("a-model", "b-model", "c-model"):
        fake.add_model(FakeModel(name, "1", files(1), tags=TAGS))
    assert workspace().list_models() == ["a-model", "b-model", "c-model"]


def test_unknown_model_version_and_label(fake: FakeAzure, workspace: Factory) -> None:
    fake.add_model(FakeModel("faq", "1", files(1), tags=TAGS))
    reg = workspace()
    with pytest.raises(ModelNotFound, match="model 'faq' version 7 not found in Azure ML workspace 'ws-scoring'"):
        reg.resolve("faq", version=7)
    with pytest.raises(ModelNotFound, match="'nope'"):
        reg.list_versions("nope")
    before = len(fake.seen)
    with pytest.raises(LabelNotFound, match="only have the latest label; pin a version"):
        reg.resolve("faq", label="prod")
    assert len(fake.seen) == before  # refused locally, no pointless call


def test_non_integer_versions(fake: FakeAzure, workspace: Factory) -> None:
    fake.add_model(FakeModel("faq", "1", files(1), tags=TAGS, created="2024-01-01T00:00:00Z"))
    fake.add_model(FakeModel("faq", "2024-beta", files(1), tags=TAGS, created="2024-06-01T00:00:00Z"))
    reg = workspace()
    assert [v.version for v in reg.list_versions("faq")] == [1]  # skipped, with a warning
    with pytest.raises(InvalidReference, match="'2024-beta' is not a positive integer"):
        reg.resolve("faq", label="latest")


def test_model_names_outside_our_alphabet_are_refused(workspace: Factory) -> None:
    with pytest.raises(InvalidReference, match="invalid model name 'FAQ_Model'"):
        workspace().resolve("FAQ_Model", version=1)


# ---------------------------------------------------------------- fetch
def test_fetch_computes_manifest_from_tags_and_downloads_every_file(
    fake: FakeAzure, workspace: Factory, cred: StaticCredential, tmp_path: Path
) -> None:
    content = files(4)  # 5 blobs: the listing pages (NextMarker) too
    fake.add_model(FakeModel("faq", "3", content, tags={**TAGS, "flavour": '{"format": "skops"}'},
                             created="2024-05-03T12:00:00Z"))
    seen_progress: list[tuple[int, int]] = []
    dest = tmp_path / "dest"
    m = workspace().fetch("faq", 3, dest, progress=lambda done, total, _f: seen_progress.append((done, total)))

    assert (m.name, m.version, m.framework, m.task, m.flavour) == ("faq", 3, "sklearn", "faq-matching",
                                                                    {"format": "skops"})
    assert m.source == f"azureml://subscriptions/{fake.sub}/resourceGroups/{fake.rg}/workspaces/{fake.ws}/models/faq/versions/3"
    assert {e.path: e.sha256 for e in m.files} == {rel: sha(data) for rel, data in content.items()}
    assert dir_tree(dest) == set(content) | {"model.json"}
    for rel, data in content.items():
        assert (dest / rel).read_bytes() == data
    assert load_manifest(dest) == m
    total = sum(len(d) for d in content.values())
    assert seen_progress[-1] == (total, total)
    assert len([s for s in fake.requests_to(fake.ws_account) if s.query.get("comp") == ["list"]]) == 3
    assert "https://storage.azure.com/.default" in cred.scopes  # blobs read with the pod identity


def test_fetch_of_a_one_file_model(fake: FakeAzure, workspace: Factory, tmp_path: Path) -> None:
    fake.add_model(FakeModel("tiny", "1", {"model.pt": b"torch" * 50}, tags={"framework": "torch", "task": "x"},
                             single_file=True))
    m = workspace().fetch("tiny", 1, tmp_path / "d")
    assert [e.path for e in m.files] == ["model.pt"]
    assert dir_tree(tmp_path / "d") == {"model.pt", "model.json"}


def test_fetch_verifies_a_stored_model_json(fake: FakeAzure, workspace: Factory, tmp_path: Path) -> None:
    content = full_manifest_files(tmp_path)
    content["stray.tmp"] = b"not in the manifest"
    fake.add_model(FakeModel("faq", "7", content))  # no tags needed: model.json says it all
    m = workspace().fetch("faq", 7, tmp_path / "d")
    stored = json.loads(content["model.json"])
    assert m.version == 7 and stored["version"] == 1  # the AML version wins over the local one
    assert m.flavour == {"format": "skops"}
    assert [e.model_dump() for e in m.files] == stored["files"]
    assert m.source.endswith("/models/faq/versions/7")
    assert dir_tree(tmp_path / "d") == {"model.json", "model.skops", "labels.txt"}  # stray file dropped


def test_fetch_with_a_source_model_json(fake: FakeAzure, workspace: Factory, tmp_path: Path) -> None:
    content = {"model.json": json.dumps({"framework": "torch", "task": "image-classification"}).encode(),
               "weights.pt": b"w" * 300}
    fake.add_model(FakeModel("resnet", "2", content, tags={"framework": "ignored", "task": "ignored"}))
    m = workspace().fetch("resnet", 2, tmp_path / "d")
    assert (m.framework, m.task) == ("torch", "image-classification")
    assert [(e.path, e.sha256) for e in m.files] == [("weights.pt", sha(b"w" * 300))]


def test_checksum_mismatch_against_model_json_leaves_dest_empty(
    fake: FakeAzure, workspace: Factory, tmp_path: Path
) -> None:
    content = full_manifest_files(tmp_path)
    fake.add_model(FakeModel("faq", "1", content))
    blob = next(n for n in fake.blob_store() if n.endswith("/model.skops"))
    fake.blob_store()[blob].data = b"tampered" * 10  # consistent MD5 -> only our sha256 can tell
    fake.blob_store()[blob].md5 = None
    dest = tmp_path / "d"
    with pytest.raises(IntegrityError, match=r"model\.skops: sha256 .* does not match the manifest"):
        workspace().fetch("faq", 1, dest)
    assert dest.is_dir() and list(dest.iterdir()) == []


def test_bytes_not_matching_stored_content_md5_are_refused(
    fake: FakeAzure, workspace: Factory, tmp_path: Path
) -> None:
    fake.add_model(FakeModel("faq", "1", files(2), tags=TAGS))
    blob = next(n for n in fake.blob_store() if n.endswith("part-1.bin"))
    original = fake.blob_store()[blob].data
    fake.blob_store()[blob].data = original[:-1] + b"\xff"  # bit rot: same size, MD5 kept from upload
    dest = tmp_path / "d"
    with pytest.raises(IntegrityError, match=r"part-1\.bin: .*Content-MD5"):
        workspace().fetch("faq", 1, dest)
    assert list(dest.iterdir()) == []


def test_missing_blob_is_an_integrity_error_and_dest_is_left_empty(
    fake: FakeAzure, workspace: Factory, tmp_path: Path
) -> None:
    fake.add_model(FakeModel("faq", "1", files(3), tags=TAGS))
    fake.fail(404, method="GET", host=".blob.", path_has="part-2.bin")
    dest = tmp_path / "d"
    with pytest.raises(IntegrityError, match=r"part-2\.bin' is missing from storage account 'wsstorage01'"):
        workspace().fetch("faq", 1, dest)
    assert list(dest.iterdir()) == []


def test_model_without_files_or_framework(fake: FakeAzure, workspace: Factory, tmp_path: Path) -> None:
    fake.add_model(FakeModel("bare", "1", files(1)))
    with pytest.raises(InvalidReference, match=r"no model\.json and no 'framework'/'task' tags"):
        workspace().fetch("bare", 1, tmp_path / "d")
    assert list((tmp_path / "d").iterdir()) == []
    fake.add_model(FakeModel("ghost", "1", {}, tags=TAGS))
    with pytest.raises(ModelNotFound, match="has no files at wsstorage01/"):
        workspace().fetch("ghost", 1, tmp_path / "d")


def test_fetch_refuses_a_non_empty_destination(fake: FakeAzure, workspace: Factory, tmp_path: Path) -> None:
    fake.add_model(FakeModel("faq", "1", files(1), tags=TAGS))
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        workspace().fetch("faq", 1, tmp_path / "d")
    assert (tmp_path / "d" / "keep.txt").read_text() == "mine"


def test_get_manifest_hashes_without_keeping_files(fake: FakeAzure, workspace: Factory, tmp_path: Path) -> None:
    content = files(2)
    fake.add_model(FakeModel("faq", "1", content, tags=TAGS))
    m = workspace().get_manifest("faq", 1)
    assert {e.path: e.sha256 for e in m.files} == {r: sha(d) for r, d in content.items()}


# ---------------------------------------------------------------- AML registries
def test_registry_models_resolve_page_and_download_with_the_issued_sas(
    fake: FakeAzure, aml_registry: Factory, tmp_path: Path
) -> None:
    for v in ("1", "2", "3"):
        fake.add_model(FakeModel("resnet", v, files(2), tags={"framework": "torch", "task": "image-classification"},
                                 created=f"2024-05-0{v}T00:00:00Z"), registry=True)
    reg = aml_registry()
    assert reg.uri == "azureml://registries/shared-reg"
    assert [v.version for v in reg.list_versions("resnet")] == [1, 2, 3]
    assert reg.resolve("resnet", label="latest").version == 3
    m = reg.fetch("resnet", 2, tmp_path / "d")
    assert m.source == "azureml://registries/shared-reg/models/resnet/versions/2"
    assert dir_tree(tmp_path / "d") == set(files(2)) | {"model.json"}

    assert fake.requests_to(AML_REGION, "/registries/shared-reg/discovery")
    pages = fake.requests_to(AML_REGION, "/registries/shared-reg/models/resnet/versions")
    assert any(s.query.get("$skipToken") == ["2"] for s in pages)
    blob_calls = fake.requests_to(fake.reg_account)
    assert blob_calls and all(s.query.get("sig") == [fake.sas_sig] for s in blob_calls)
    assert all("Authorization" not in s.headers for s in blob_calls)  # SAS, not our token, goes to storage


def test_unknown_registry_is_model_not_found(fake: FakeAzure, cred: StaticCredential) -> None:
    reg = AzureMLRegistry(AzureMLLocation(registry_name="nowhere"), credential=cred, transport=fake.transport())
    with pytest.raises(ModelNotFound, match=r"Azure ML registry 'nowhere' does not exist"):
        reg.list_versions("x")


# ---------------------------------------------------------------- error mapping
def test_forbidden_names_the_missing_role(fake: FakeAzure, workspace: Factory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AZURE_CLIENT_ID", "11111111-2222-3333-4444-555555555555")
    fake.add_model(FakeModel("faq", "1", files(1), tags=TAGS))
    fake.fail(403, host=ARM, code="AuthorizationFailed")
    with pytest.raises(AccessDenied) as info:
        workspace().resolve("faq", version=1)
    msg = str(info.value)
    assert "identity 11111111-2222-3333-4444-555555555555" in msg
    assert "'AzureML Data Scientist'" in msg and "models/read" in msg
    assert info.value.reason == "AccessDenied" and not info.value.retryable


def test_storage_forbidden_names_storage_blob_data_reader(
    fake: FakeAzure, workspace: Factory, tmp_path: Path
) -> None:
    fake.add_model(FakeModel("faq", "1", files(1), tags=TAGS))
    fake.fail(403, host=".blob.")
    with pytest.raises(AccessDenied, match="'Storage Blob Data Reader' role on the workspace's storage account"):
        workspace().fetch("faq", 1, tmp_path / "d")


def test_registry_sas_never_appears_in_errors(fake: FakeAzure, aml_registry: Factory, tmp_path: Path) -> None:
    fake.add_model(FakeModel("resnet", "1", files(1), tags=TAGS), registry=True)
    fake.fail(403, host=fake.reg_account)
    with pytest.raises(AccessDenied) as info:
        aml_registry().fetch("resnet", 1, tmp_path / "d")
    assert fake.sas_sig not in str(info.value) and "sig=" not in str(info.value)
    assert "registry's download token" in str(info.value)


def test_throttling_honours_retry_after_then_succeeds(fake: FakeAzure, workspace: Factory) -> None:
    fake.add_model(FakeModel("faq", "1", files(1), tags=TAGS))
    fake.fail(429, host=ARM, path_has="/versions/1", headers={"Retry-After": "1"}, code="TooManyRequests")
    assert workspace().resolve("faq", version=1).version == 1
    calls = fake.requests_to(ARM, "/models/faq/versions/1")
    assert len(calls) == 2
    assert calls[1].at - calls[0].at >= 0.95  # waited as told, not the tiny test backoff


def test_persistent_throttling_is_retryable_registry_unavailable(fake: FakeAzure, workspace: Factory) -> None:
    fake.add_model(FakeModel("faq", "1", files(1), tags=TAGS))
    fake.fail(429, host=ARM, times=10, headers={"Retry-After": "0"})
    with pytest.raises(RegistryUnavailable, match=r"throttling.*retry after 0") as info:
        workspace().resolve("faq", version=1)
    assert info.value.retryable
    assert len(fake.requests_to(ARM)) == 1 + FAST_RETRY["retry_total"]


def test_connection_refused_is_registry_unavailable(cred: StaticCredential) -> None:
    from tests.azure.fake_azure import LoopbackTransport

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    reg = AzureMLRegistry(
        AzureMLLocation(subscription_id="s", resource_group="r", workspace="w"),
        credential=cred,
        transport=LoopbackTransport(port),
        client_options=FAST_RETRY,
    )
    with pytest.raises(RegistryUnavailable, match="cannot reach Azure ML workspace 'w'") as info:
        reg.resolve("faq", version=1)
    assert info.value.retryable


def test_server_errors_are_retryable(fake: FakeAzure, workspace: Factory) -> None:
    fake.fail(503, host=ARM, times=10)
    with pytest.raises(RegistryUnavailable, match="HTTP 503"):
        workspace().list_models()


# ---------------------------------------------------------------- credentials
def test_token_is_sent_as_bearer_and_never_logged(
    fake: FakeAzure, workspace: Factory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake.add_model(FakeModel("faq", "1", files(1), tags=TAGS))
    fake.add_model(FakeModel("resnet", "1", files(1), tags=TAGS), registry=True)
    caplog.set_level(logging.DEBUG)
    workspace(logging_enable=True).fetch("faq", 1, tmp_path / "a")
    reg = AzureMLRegistry(AzureMLLocation(registry_name=fake.registry), credential=StaticCredential(fake.token),
                          transport=fake.transport(), client_options={"logging_enable": True})
    reg.fetch("resnet", 1, tmp_path / "b")
    arm_and_blob = fake.requests_to(ARM) + fake.requests_to(fake.ws_account)
    assert arm_and_blob and all(s.headers["Authorization"] == f"Bearer {fake.token}" for s in arm_and_blob)
    assert "management.azure.com" in caplog.text  # the SDK did log its requests...
    assert fake.token not in caplog.text  # ...but never the token
    assert fake.sas_sig not in caplog.text


def test_workload_identity_exchanges_the_projected_token(
    fake: FakeAzure, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real DefaultAzureCredential, configured the way the AKS webhook configures a pod."""
    projected = tmp_path / "azure-identity-token"
    projected.write_text("eyJhbGciOiJSUzI1NiJ9.projected-service-account-token.sig")
    for var in ("AZURE_CLIENT_SECRET", "AZURE_CLIENT_CERTIFICATE_PATH", "AZURE_USERNAME", "MSI_ENDPOINT",
                "IDENTITY_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AZURE_CLIENT_ID", "11111111-2222-3333-4444-555555555555")
    monkeypatch.setenv("AZURE_TENANT_ID", "tenant-0000")
    monkeypatch.setenv("AZURE_FEDERATED_TOKEN_FILE", str(projected))
    monkeypatch.setenv("AZURE_AUTHORITY_HOST", "https://login.microsoftonline.com/")
    fake.add_model(FakeModel("faq", "1", files(1), tags=TAGS))
    reg = AzureMLRegistry(
        AzureMLLocation(subscription_id=fake.sub, resource_group=fake.rg, workspace=fake.ws),
        transport=fake.transport(),
        client_options=FAST_RETRY,
    )
    assert reg.resolve("faq", version=1).version == 1
    assert fake.federated_tokens and set(fake.federated_tokens) == {projected.read_text()}
    assert fake.requests_to(ARM)[-1].headers["Authorization"] == f"Bearer {fake.token}"


@pytest.mark.parametrize("rel", ["../escape.bin", "sub/../../escape.bin"])
def test_artifact_names_escaping_the_model_directory_are_refused(
    fake: FakeAzure, workspace: Factory, tmp_path: Path, rel: str
) -> None:
    fake.add_model(FakeModel("faq", "1", {**files(1), rel: b"x" * 16}, tags=TAGS))
    dest = tmp_path / "models" / "d"
    with pytest.raises(IntegrityError, match="does not map to a path inside the model directory"):
        workspace().fetch("faq", 1, dest)
    assert not (tmp_path / "models" / "escape.bin").exists() and not (tmp_path / "escape.bin").exists()
    assert not dest.exists() or list(dest.iterdir()) == []
