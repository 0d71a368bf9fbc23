"""The OpenAPI 3.0 document of the runtime's routes (`GET /openapi.json`), built from the served model.

It describes what the server really accepts: the served model's name and version as the only valid
path values, the V2 input names and datatypes from the flavour's metadata, the `/score` body the
flavour documents (`Scorer.score_request_schema`), the limits in force and every error answer. Client
generators and fuzzers (the test suite runs schemathesis against it) start from here.
"""

from __future__ import annotations

from typing import Any

from scoring_runtime import __version__
from scoring_runtime.flavours.base import Scorer
from scoring_runtime.flavours.v2 import DTYPES, MAX_DIMS
from scoring_runtime.manifest import ModelManifest
from scoring_runtime.settings import RuntimeSettings

_ERROR = {"$ref": "#/components/schemas/Error"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _errors(*codes: int) -> dict[str, Any]:
    what = {
        400: "bad input: what is wrong and how to fix it", 401: "missing or wrong API key",
        404: "unknown model or version", 408: "the request did not arrive in time",
        413: "body or rows over the limits", 415: "content type not accepted",
        431: "headers over the limits", 503: "not ready, or overloaded (see Retry-After)",
    }
    return {str(c): {"description": what[c], "content": _json(_ERROR)} for c in codes}


def _tensor_schema(inputs: list[dict[str, Any]]) -> dict[str, Any]:
    names = [i["name"] for i in inputs if isinstance(i.get("name"), str)]
    return {
        "type": "object",
        "required": ["name", "datatype", "shape", "data"],
        "properties": {
            "name": {"type": "string", **({"enum": names} if names else {})},
            "datatype": {"type": "string", "enum": list(DTYPES)},
            "shape": {"type": "array", "maxItems": MAX_DIMS, "items": {"type": "integer", "minimum": 0}},
            "data": {"type": "array", "description": "flat (row-major) or nested; prod(shape) values"},
            "parameters": {"type": "object"},
        },
    }


def openapi_document(manifest: ModelManifest, scorer: Scorer | None, settings: RuntimeSettings) -> dict[str, Any]:
    """The document for this server; with `scorer` None (still loading) the model-specific parts are generic."""
    meta = scorer.v2_metadata() if scorer is not None else {"inputs": []}
    score_types = scorer.score_media_types if scorer is not None else ("application/json",)
    score_schema = (scorer.score_request_schema if scorer is not None else None) or {"type": "object"}
    name_param = {"name": "name", "in": "path", "required": True,
                  "schema": {"type": "string", "enum": [manifest.name]}}
    version_param = {"name": "version", "in": "path", "required": True,
                     "schema": {"type": "string", "enum": [str(manifest.version)]}}
    secured: list[dict[str, list[str]]] = [{"apiKey": []}] if settings.api_key_file else []
    infer = {
        "post": {
            "summary": "Open Inference Protocol V2 inference",
            "security": secured,
            "requestBody": {"required": True, "content": _json({
                "type": "object",
                "required": ["inputs"],
                "properties": {
                    "id": {"type": "string"},
                    "inputs": {"type": "array", "minItems": 1, "items": _tensor_schema(meta.get("inputs", []))},
                    "outputs": {"type": "array", "items": {"type": "object", "required": ["name"],
                                                           "properties": {"name": {"type": "string"}}}},
                    "parameters": {"type": "object"},
                },
            })},
            "responses": {"200": {"description": "output tensors", "content": _json({"type": "object"})},
                          **_errors(400, 401, 404, 413, 503)},
        }
    }
    ok = {"description": "the answer", "content": _json({"type": "object"})}
    model_get = {"get": {"summary": "V2 model metadata", "security": secured,
                         "responses": {"200": ok, **_errors(401, 404, 503)}}}
    ready_get = {"get": {"summary": "V2 model readiness", "security": secured,
                         "responses": {"200": {"description": "ready", "content": _json({"type": "object"})},
                                       **_errors(401, 404, 503)}}}
    health = {"get": {"summary": "health", "responses": {"200": {"description": "ok",
                                                                  "content": _json({"type": "object"})},
                                                         **_errors(503)}}}

    def with_params(op: dict[str, Any], *params: dict[str, Any]) -> dict[str, Any]:
        return {"parameters": list(params), **op}

    return {
        "openapi": "3.0.3",
        "info": {
            "title": f"scoring runtime: {manifest.name} version {manifest.version}",
            "version": __version__,
            "description": (
                f"Limits: body {settings.max_body_bytes} bytes, {settings.max_request_rows} rows per request, "
                f"headers {settings.max_header_bytes} bytes / {settings.max_headers} fields, header timeout "
                f"{settings.header_timeout_s:g} s, body timeout {settings.body_timeout_s:g} s."
            ),
        },
        "paths": {
            "/": health,
            "/v2": health,
            "/v2/health/live": health,
            "/v2/health/ready": health,
            "/score": {"post": {
                "summary": "Azure ML style scoring",
                "security": secured,
                "requestBody": {"required": True, "content": {t: {"schema": score_schema if t == "application/json"
                                                                   else {"type": "string"}} for t in score_types}},
                "responses": {"200": {"description": "scores", "content": _json({"type": "object"})},
                              **_errors(400, 401, 413, 415, 503)},
            }},
            "/v2/models/{name}": with_params(model_get, name_param),
            "/v2/models/{name}/versions/{version}": with_params(model_get, name_param, version_param),
            "/v2/models/{name}/ready": with_params(ready_get, name_param),
            "/v2/models/{name}/versions/{version}/ready": with_params(ready_get, name_param, version_param),
            "/v2/models/{name}/infer": with_params(infer, name_param),
            "/v2/models/{name}/versions/{version}/infer": with_params(infer, name_param, version_param),
        },
        "components": {
            "schemas": {"Error": {"type": "object", "required": ["error"],
                                  "properties": {"error": {"type": "string"}}}},
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
        },
    }
