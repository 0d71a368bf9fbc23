"""The operator logs in through the official `kubernetes` client, kubeconfig exec plugins included.

The kubeconfig holds no token: its user is an exec credential plugin (as `kubelogin` is for AKS
with Entra ID) printing an ExecCredential with a real TokenRequest token of the chart's
ServiceAccount. Both kopf (its watches) and the reconciler (its applies and status writes) must run
it, or nothing reconciles.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.kube.controlplane import KubeCluster
from tests.operator import conftest
from tests.operator.kubehelpers import Operator, apply, chart_operator, get, scoring_model, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


@pytest.fixture(scope="module")
def operator(cluster: KubeCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Operator]:
    """The operator run with an exec-plugin kubeconfig (replaces the token one of conftest)."""
    with chart_operator(cluster, tmp_path_factory.mktemp("exec-operator"), exec_plugin=True) as op:
        try:
            yield op
        finally:
            conftest.delete_scoring_models(cluster)


def test_reconciles_through_a_kubeconfig_exec_plugin(cluster: KubeCluster, ns: str, operator: Operator) -> None:
    text = operator.kubeconfig.read_text()
    assert '"exec"' in text and '"token"' not in text, "the kubeconfig must carry no token of its own"
    calls = operator.kubeconfig.parent / "exec-token.calls"
    model = f"exec-{ns[-6:]}"
    operator.register(model)
    apply(cluster, scoring_model("via-exec", ns, {"name": model, "version": 1}))

    def ready() -> bool:
        sm = get(cluster, "scoringmodel", ns, "via-exec") or {}
        st = sm.get("status") or {}
        return st.get("phase") == "Ready" and (st.get("model") or {}).get("version") == 1

    wait_for("Ready through the exec plugin's token", ready, operator=operator)
    dep = cluster.kubectl_json("get", "deployment", "via-exec", "-n", ns, "--show-managed-fields")
    managers = {(m["manager"], m["operation"]) for m in dep["metadata"]["managedFields"]}
    assert ("scoring-operator", "Apply") in managers
    # kopf's login (sync client) and the reconciler's client (kubernetes.aio) each ran the plugin.
    assert len(calls.read_text().split()) >= 2
    log = operator.log_path.read_text(errors="replace")
    assert "Unauthorized" not in log
