"""kube.py without a cluster: credentials from a kubeconfig exec plugin (and its refresh), error classification."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from scoring_operator.kube import PROXY_VARS, Kube, _api_error, _path, load_configuration
from tests.operator.kubehelpers import EXEC_PLUGIN


def _exec_kubeconfig(tmp_path: Path, token: str) -> tuple[Path, Path]:
    token_file = tmp_path / "token"
    token_file.write_text(token)
    plugin = tmp_path / "plugin"
    plugin.write_text(EXEC_PLUGIN.format(python=sys.executable))
    plugin.chmod(0o700)
    doc = {
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1", "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u", "user": {"exec": {"apiVersion": "client.authentication.k8s.io/v1",
                                                  "command": str(plugin), "interactiveMode": "Never",
                                                  "env": [{"name": "TOKEN_FILE", "value": str(token_file)}]}}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
    }
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps(doc))
    return path, token_file


async def test_exec_plugin_token_is_used_and_fetched_again_once_expired(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kubeconfig, token_file = _exec_kubeconfig(tmp_path, "first-token")
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    conf = await load_configuration()
    assert conf.host == "https://127.0.0.1:1"
    assert await conf.get_api_key_with_prefix("BearerToken") == "Bearer first-token"
    calls = tmp_path / "token.calls"
    assert len(calls.read_text().split()) == 1
    # Not expired: no new run of the plugin per request.
    token_file.write_text("second-token")
    assert await conf.get_api_key_with_prefix("BearerToken") == "Bearer first-token"
    assert len(calls.read_text().split()) == 1
    # Expired (the plugin said 10 minutes; pretend they passed): the next request runs it again.
    hook = conf.refresh_api_key_hook
    assert hook is not None
    loader = hook.__closure__[0].cell_contents
    loader.exec_plugin_expiry = loader.exec_plugin_expiry.replace(year=2000)
    assert await conf.get_api_key_with_prefix("BearerToken") == "Bearer second-token"
    assert len(calls.read_text().split()) == 2


def test_api_errors_are_classified_for_conditions_and_retries() -> None:
    status = json.dumps({"kind": "Status", "reason": "Forbidden", "message": "deployments is forbidden", "code": 403})
    forbidden = _api_error(403, status.encode(), "apply Deployment ns/a")
    assert (forbidden.reason, forbidden.retryable, forbidden.code) == ("ApiForbidden", False, 403)
    assert "deployments is forbidden (HTTP 403 Forbidden)" in str(forbidden) and "RBAC" in str(forbidden)
    busy = _api_error(429, b"", "get Service ns/a")
    assert (busy.reason, busy.retryable) == ("ApiTooManyRequests", True)
    assert _api_error(502, b"<html>bad gateway</html>", "x").retryable


def test_paths_are_the_rest_paths_of_each_kind() -> None:
    assert _path("apps/v1", "Deployment", "ml", "faq") == "/apis/apps/v1/namespaces/ml/deployments/faq"
    assert _path("v1", "Service", "ml", "faq") == "/api/v1/namespaces/ml/services/faq"
    with pytest.raises(ValueError, match="does not manage v1 Secret"):
        _path("v1", "Secret", "ml", "faq")


@pytest.mark.parametrize("proxy", [None, "http://proxy.example:3128"])
async def test_the_environment_is_read_per_request_only_when_a_proxy_is_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, proxy: str | None
) -> None:
    """Without a proxy, aiohttp must not look for one (and for ~/.netrc) in a thread before every call."""
    kubeconfig, _ = _exec_kubeconfig(tmp_path, "t")
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
    if proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy)
    kube = await Kube.connect()
    try:
        session = kube.api_client.rest_client._create_pool_manager()
        try:
            assert session.trust_env is (proxy is not None)
        finally:
            await session.close()
    finally:
        await kube.close()
