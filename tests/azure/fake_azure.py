"""A loopback emulation of the Azure REST APIs the AML registry backend uses.

One threaded HTTP server on 127.0.0.1 answers, by original host name:
- management.azure.com        ARM: workspace model containers/versions (paged), datastores;
- eastus.api.azureml.ms       AML registry discovery and the registry data plane (MFE), incl. SAS;
- <account>.blob.core.windows.net   Blob storage: container listing (XML, paged) and ranged GETs;
- login.microsoftonline.com   Entra ID token endpoint (workload identity client-assertion flow).

`LoopbackTransport` is a real azure-core `RequestsTransport` that sends every request to that
server, keeping the original host in a header. Everything above the socket - the SDK clients,
pagers, retry policy, bearer-token policy, error mapping - is the real code.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode, urlsplit, urlunsplit
from xml.sax.saxutils import escape

from azure.core.credentials import AccessToken
from azure.core.pipeline.transport import RequestsTransport

HOST_HEADER = "X-Original-Host"
ARM = "management.azure.com"
AML_REGION = "eastus.api.azureml.ms"
AAD = "login.microsoftonline.com"
RP = "providers/Microsoft.MachineLearningServices"
CREATED = "2024-05-01T10:00:00Z"


class LoopbackTransport(RequestsTransport):
    """Sends every request to the loopback fake instead of the Azure host it names."""

    def __init__(self, port: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.port = port

    def send(self, request: Any, **kwargs: Any) -> Any:
        original = request.url
        parts = urlsplit(original)
        request.url = urlunsplit(("http", f"127.0.0.1:{self.port}", parts.path, parts.query, ""))
        request.headers[HOST_HEADER] = parts.netloc
        try:
            return super().send(request, **kwargs)
        finally:
            request.url = original


class StaticCredential:
    """A TokenCredential handing out one fixed token, recording the scopes asked for."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.scopes: list[str] = []

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.scopes.extend(scopes)
        return AccessToken(self.token, int(time.time()) + 3600)


@dataclass
class Fault:
    match: Callable[[str, str, str], bool]  # (method, host, path) -> applies?
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: dict[str, Any] | None = None
    times: int = 1


@dataclass
class Seen:
    method: str
    host: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    at: float


@dataclass
class Blob:
    data: bytes
    md5: bytes | None  # the Content-MD5 stored with the blob at upload, if any


@dataclass
class FakeModel:
    name: str
    version: str
    files: dict[str, bytes]
    tags: dict[str, str] = field(default_factory=dict)
    properties: dict[str, str] = field(default_factory=dict)
    created: str = CREATED
    single_file: bool = False
    store_md5: bool = True


class FakeAzure:
    """State of the emulated subscription: models, datastores, blobs, tokens, faults, request log."""

    def __init__(self) -> None:
        self.token = "fake-arm-token-0123456789abcdef"
        self.sas_sig = "fakeSASsignature0123456789abcdefXYZ="
        self.sub, self.rg, self.ws = "sub-1111", "rg-models", "ws-scoring"
        self.registry, self.reg_sub, self.reg_rg = "shared-reg", "sub-2222", "rg-registry"
        self.ws_account, self.ws_container = "wsstorage01", "azureml-blobstore-0001"
        self.reg_account, self.reg_container = "regstorage01", "registry-assets"
        self.page_size = 2  # small, so paging (nextLink / NextMarker) is exercised
        self.workspace_models: dict[str, dict[str, FakeModel]] = {}
        self.registry_models: dict[str, dict[str, FakeModel]] = {}
        self.blobs: dict[tuple[str, str], dict[str, Blob]] = {}
        self.faults: list[Fault] = []
        self.seen: list[Seen] = []
        self.federated_tokens: list[str] = []
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    # ------------------------------------------------------------ lifecycle
    def __enter__(self) -> FakeAzure:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def transport(self) -> LoopbackTransport:
        return LoopbackTransport(self.port)

    # ------------------------------------------------------------ content
    def add_model(self, model: FakeModel, *, registry: bool = False) -> FakeModel:
        models = self.registry_models if registry else self.workspace_models
        models.setdefault(model.name, {})[model.version] = model
        account, container = (
            (self.reg_account, self.reg_container) if registry else (self.ws_account, self.ws_container)
        )
        store = self.blobs.setdefault((account, container), {})
        prefix = self.prefix_of(model, registry)
        for rel, data in model.files.items():
            name = prefix if model.single_file else f"{prefix}/{rel}"
            store[name] = Blob(data, hashlib.md5(data).digest() if model.store_md5 else None)  # noqa: S324
        return model

    def prefix_of(self, model: FakeModel, registry: bool) -> str:
        if registry:
            return f"models/{model.name}/{model.version}"
        base = f"LocalUpload/{hashlib.sha1(f'{model.name}{model.version}'.encode()).hexdigest()[:12]}"  # noqa: S324
        return f"{base}/{next(iter(model.files))}" if model.single_file else f"{base}/model"

    def blob_store(self, registry: bool = False) -> dict[str, Blob]:
        key = (self.reg_account, self.reg_container) if registry else (self.ws_account, self.ws_container)
        return self.blobs[key]

    def fail(
        self,
        status: int,
        *,
        method: str = "",
        host: str = "",
        path_has: str = "",
        times: int = 1,
        headers: dict[str, str] | None = None,
        code: str = "",
    ) -> None:
        def match(m: str, h: str, p: str) -> bool:
            return (not method or m == method) and (not host or host in h) and path_has in p

        body = {"error": {"code": code or f"Http{status}", "message": f"injected HTTP {status}"}}
        self.faults.append(Fault(match, status, headers or {}, body, times))

    def requests_to(self, host_part: str, path_part: str = "") -> list[Seen]:
        return [s for s in self.seen if host_part in s.host and path_part in s.path]

    # ------------------------------------------------------------ REST shapes
    def _model_json(self, m: FakeModel, registry: bool) -> dict[str, Any]:
        prefix = self.prefix_of(m, registry)
        if registry:
            rid = f"azureml://registries/{self.registry}/models/{m.name}/versions/{m.version}"
            uri = f"https://{self.reg_account}.blob.core.windows.net/{self.reg_container}/{prefix}"
        else:
            ws = f"/subscriptions/{self.sub}/resourceGroups/{self.rg}/{RP}/workspaces/{self.ws}"
            rid = f"{ws}/models/{m.name}/versions/{m.version}"
            uri = (
                f"azureml://subscriptions/{self.sub}/resourcegroups/{self.rg}/workspaces/{self.ws}"
                f"/datastores/workspaceblobstore/paths/{prefix}"
            )
        return {
            "id": rid,
            "name": m.version,
            "type": "Microsoft.MachineLearningServices/workspaces/models/versions",
            "properties": {
                "description": f"{m.name} v{m.version}",
                "tags": m.tags,
                "properties": m.properties,
                "isArchived": False,
                "isAnonymous": False,
                "modelType": "custom_model",
                "modelUri": uri,
                "flavors": {},
            },
            "systemData": {
                "createdAt": m.created,
                "createdBy": "someone@example.com",
                "createdByType": "User",
                "lastModifiedAt": m.created,
            },
        }

    def _container_json(self, name: str, versions: dict[str, FakeModel], base: str) -> dict[str, Any]:
        latest = max(versions.values(), key=lambda m: m.created)
        return {
            "id": f"{base}/models/{name}",
            "name": name,
            "type": "Microsoft.MachineLearningServices/workspaces/models",
            "properties": {"latestVersion": latest.version, "isArchived": False, "tags": {}, "properties": {}},
            "systemData": {"createdAt": CREATED, "lastModifiedAt": CREATED},
        }


def _handler(fake: FakeAzure) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        # -------------------------------------------------------- plumbing
        def _reply(self, status: int, body: bytes = b"", ctype: str = "application/json", **headers: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("x-ms-request-id", "00000000-0000-0000-0000-000000000001")
            for k, v in headers.items():
                self.send_header(k.replace("_", "-"), v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, status: int, obj: Any, **headers: str) -> None:
            self._reply(status, json.dumps(obj).encode(), **headers)

        def _error(self, status: int, code: str, message: str, **headers: str) -> None:
            self._json(status, {"error": {"code": code, "message": message}}, **headers)

        def _storage_error(self, status: int, code: str) -> None:
            body = f'<?xml version="1.0" encoding="utf-8"?><Error><Code>{code}</Code><Message>{code}</Message></Error>'
            self._reply(status, body.encode(), "application/xml", x_ms_error_code=code)

        def _dispatch(self) -> None:
            parts = urlsplit(self.path)
            host = self.headers.get(HOST_HEADER, "")
            path = unquote(parts.path)
            query = parse_qs(parts.query)
            with fake._lock:
                fake.seen.append(Seen(self.command, host, path, query, dict(self.headers.items()), time.monotonic()))
                fault = next((f for f in fake.faults if f.times > 0 and f.match(self.command, host, path)), None)
                if fault:
                    fault.times -= 1
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            if fault:
                if ".blob." in host:
                    code = {404: "BlobNotFound", 403: "AuthorizationPermissionMismatch"}.get(fault.status, "Err")
                    self._storage_error(fault.status, code)
                else:
                    self._json(fault.status, fault.body, **{k.replace("-", "_"): v for k, v in fault.headers.items()})
                return
            if host == AAD:
                return self._aad(path, body)
            if ".blob." in host:
                return self._blob(host.split(".")[0], path, query)
            if self.headers.get("Authorization") != f"Bearer {fake.token}":
                return self._error(401, "InvalidAuthenticationToken", "The access token is invalid.")
            if host == ARM:
                return self._arm(path, query)
            if host == AML_REGION:
                return self._aml_region(path, query, body)
            self._error(404, "UnknownHost", host)

        do_GET = do_POST = do_PUT = do_HEAD = _dispatch

        # -------------------------------------------------------- Entra ID
        def _aad(self, path: str, body: bytes) -> None:
            form = parse_qs(body.decode())
            if not path.endswith("/oauth2/v2.0/token"):
                # msal instance discovery / OIDC metadata
                tenant = path.strip("/").split("/")[0]
                return self._json(200, {
                    "token_endpoint": f"https://{AAD}/{tenant}/oauth2/v2.0/token",
                    "authorization_endpoint": f"https://{AAD}/{tenant}/oauth2/v2.0/authorize",
                    "issuer": f"https://{AAD}/{tenant}/v2.0",
                    "tenant_discovery_endpoint": f"https://{AAD}/{tenant}/v2.0/.well-known/openid-configuration",
                    "api-version": "1.1",
                    "metadata": [],
                })
            assertion = form.get("client_assertion", [""])[0]
            fake.federated_tokens.append(assertion)
            if form.get("client_assertion_type", [""])[0] != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer":
                return self._json(400, {"error": "invalid_request"})
            return self._json(200, {
                "token_type": "Bearer",
                "expires_in": 3600,
                "ext_expires_in": 3600,
                "access_token": fake.token,
            })

        # -------------------------------------------------------- ARM (workspace)
        def _arm(self, path: str, query: dict[str, list[str]]) -> None:
            ws_base = f"/subscriptions/{fake.sub}/resourceGroups/{fake.rg}/{RP}/workspaces/{fake.ws}"
            if not path.lower().startswith(ws_base.lower()):
                return self._error(404, "ResourceNotFound", f"no workspace at {path}")
            rest = path[len(ws_base):].strip("/").split("/")
            if rest[:1] == ["datastores"] and len(rest) == 2:
                if rest[1] != "workspaceblobstore":
                    return self._error(404, "UserError", "datastore not found")
                return self._json(200, {
                    "id": f"{ws_base}/datastores/workspaceblobstore",
                    "name": "workspaceblobstore",
                    "type": "Microsoft.MachineLearningServices/workspaces/datastores",
                    "properties": {
                        "datastoreType": "AzureBlob",
                        "accountName": fake.ws_account,
                        "containerName": fake.ws_container,
                        "endpoint": "core.windows.net",
                        "protocol": "https",
                        "credentials": {"credentialsType": "AccountKey"},
                        "isDefault": True,
                    },
                })
            return self._models(fake.workspace_models, rest, query, ws_base, registry=False, host=ARM)

        # -------------------------------------------------------- AML region (registry)
        def _aml_region(self, path: str, query: dict[str, list[str]], body: bytes) -> None:
            if path == f"/registrymanagement/v1.0/registries/{fake.registry}/discovery":
                return self._json(200, {
                    "registryName": fake.registry,
                    "tenantId": "tenant-0000",
                    "primaryRegion": "eastus",
                    "regions": ["eastus"],
                    "subscriptionId": fake.reg_sub,
                    "resourceGroup": fake.reg_rg,
                    "primaryRegionResourceProviderUri": f"https://{AML_REGION}/",
                })
            if "/registrymanagement/" in path:
                return self._error(404, "NotFound", "registry not found")
            reg_base = (
                f"/mferp/managementfrontend/subscriptions/{fake.reg_sub}/resourceGroups/{fake.reg_rg}"
                f"/{RP}/registries/{fake.registry}"
            )
            if not path.startswith(reg_base):
                return self._error(404, "NotFound", f"nothing at {path}")
            rest = path[len(reg_base):].strip("/").split("/")
            if rest[:1] == ["datarefs"] and self.command == "POST":
                req = json.loads(body)
                name, version = rest[1], rest[3]
                model = fake.registry_models.get(name, {}).get(version)
                if model is None:
                    return self._error(404, "NotFound", "asset not found")
                assert req["assetId"] == f"azureml://registries/{fake.registry}/models/{name}/versions/{version}"
                sas = (
                    f"https://{fake.reg_account}.blob.core.windows.net/{fake.reg_container}"
                    f"?sv=2021-08-06&sr=c&sp=rl&{urlencode({'sig': fake.sas_sig})}"
                )
                return self._json(200, {
                    "blobReferenceForConsumption": {
                        "blobUri": req["blobUri"],
                        "storageAccountArmId": f"/subscriptions/x/storageAccounts/{fake.reg_account}",
                        "credential": {"credentialType": "SAS", "sasUri": sas},
                    }
                })
            return self._models(fake.registry_models, rest, query, reg_base, registry=True, host=AML_REGION)

        # -------------------------------------------------------- models (shared shape)
        def _models(
            self,
            store: dict[str, dict[str, FakeModel]],
            rest: list[str],
            query: dict[str, list[str]],
            base: str,
            *,
            registry: bool,
            host: str,
        ) -> None:
            if rest == ["models"]:
                items = [fake._container_json(n, v, base) for n, v in sorted(store.items())]
                return self._page(items, query, host, base + "/models")
            if len(rest) >= 2 and rest[0] == "models":
                versions = store.get(rest[1])
                if not versions:
                    return self._error(404, "UserError", f"Could not find asset with name {rest[1]}")
                if len(rest) == 3 and rest[2] == "versions":
                    ordered = sorted(versions.values(), key=lambda m: int(m.version) if m.version.isdigit() else 0)
                    order = (query.get("$orderBy") or query.get("$orderby") or [""])[0].lower()
                    if "createdtime desc" in order:
                        ordered = sorted(versions.values(), key=lambda m: m.created, reverse=True)
                    items = [fake._model_json(m, registry) for m in ordered]
                    if query.get("$top"):
                        items = items[: int(query["$top"][0])]
                    return self._page(items, query, host, f"{base}/models/{rest[1]}/versions")
                if len(rest) == 4 and rest[2] == "versions":
                    model = versions.get(rest[3])
                    if model is None:
                        return self._error(404, "UserError", f"Could not find asset {rest[1]}:{rest[3]}")
                    return self._json(200, fake._model_json(model, registry))
            self._error(404, "NotFound", "/".join(rest))

        def _page(self, items: list[Any], query: dict[str, list[str]], host: str, path: str) -> None:
            start = int((query.get("$skipToken") or ["0"])[0])
            page = items[start : start + fake.page_size]
            out: dict[str, Any] = {"value": page}
            if start + fake.page_size < len(items):
                q = {k: v[0] for k, v in query.items() if k != "$skipToken"}
                q["$skipToken"] = str(start + fake.page_size)
                out["nextLink"] = f"https://{host}{path}?{urlencode(q)}"
            self._json(200, out)

        # -------------------------------------------------------- blob storage
        def _blob_auth_ok(self, account: str, query: dict[str, list[str]]) -> bool:
            if account == fake.reg_account:
                return query.get("sig", [""])[0] == fake.sas_sig
            return self.headers.get("Authorization") == f"Bearer {fake.token}"

        def _blob(self, account: str, path: str, query: dict[str, list[str]]) -> None:
            container, _, blob = path.lstrip("/").partition("/")
            store = fake.blobs.get((account, container))
            if not self._blob_auth_ok(account, query):
                return self._storage_error(403, "AuthenticationFailed")
            if store is None:
                return self._storage_error(404, "ContainerNotFound")
            if not blob and query.get("comp") == ["list"]:
                return self._list(account, container, store, query)
            if blob not in store:
                return self._storage_error(404, "BlobNotFound")
            data, md5 = store[blob].data, store[blob].md5
            headers = {
                "ETag": '"0x8DC0000000000001"',
                "Last-Modified": formatdate(0, usegmt=True),
                "x-ms-blob-type": "BlockBlob",
                "x-ms-creation-time": formatdate(0, usegmt=True),
                "Accept-Ranges": "bytes",
            }
            if md5:
                headers["x-ms-blob-content-md5"] = base64.b64encode(md5).decode()
            rng = self.headers.get("x-ms-range") or self.headers.get("Range")
            if rng:
                start_s, _, end_s = rng.split("=", 1)[1].partition("-")
                start = int(start_s)
                if start >= len(data):
                    return self._storage_error(416, "InvalidRange")
                end = min(int(end_s) if end_s else len(data) - 1, len(data) - 1)
                headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
                return self._reply(206, data[start : end + 1], "application/octet-stream",
                                   **{k.replace("-", "_"): v for k, v in headers.items()})
            self._reply(200, data, "application/octet-stream", **{k.replace("-", "_"): v for k, v in headers.items()})

        def _list(self, account: str, container: str, store: dict[str, Blob],
                  query: dict[str, list[str]]) -> None:
            prefix = query.get("prefix", [""])[0]
            names = sorted(n for n in store if n.startswith(prefix))
            start = int(query.get("marker", ["0"])[0] or 0)
            page = names[start : start + fake.page_size]
            nxt = str(start + fake.page_size) if start + fake.page_size < len(names) else ""
            blobs = []
            for n in page:
                data = store[n].data
                md5 = base64.b64encode(digest).decode() if (digest := store[n].md5) else ""
                blobs.append(
                    f"<Blob><Name>{escape(n)}</Name><Properties>"
                    f"<Creation-Time>{formatdate(0, usegmt=True)}</Creation-Time>"
                    f"<Last-Modified>{formatdate(0, usegmt=True)}</Last-Modified><Etag>0x8DC0000000000001</Etag>"
                    f"<Content-Length>{len(data)}</Content-Length>"
                    f"<Content-Type>application/octet-stream</Content-Type><Content-MD5>{md5}</Content-MD5>"
                    f"<BlobType>BlockBlob</BlobType><AccessTier>Hot</AccessTier>"
                    f"<LeaseStatus>unlocked</LeaseStatus><LeaseState>available</LeaseState>"
                    f"</Properties><Metadata /></Blob>"
                )
            xml = (
                '<?xml version="1.0" encoding="utf-8"?>'
                f'<EnumerationResults ServiceEndpoint="https://{account}.blob.core.windows.net/" '
                f'ContainerName="{container}"><Prefix>{escape(prefix)}</Prefix>'
                f"<Marker>{start or ''}</Marker><MaxResults>{fake.page_size}</MaxResults>"
                f"<Blobs>{''.join(blobs)}</Blobs><NextMarker>{nxt}</NextMarker></EnumerationResults>"
            )
            self._reply(200, xml.encode(), "application/xml")

    return Handler
