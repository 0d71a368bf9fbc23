"""Names, labels and owner references shared by every child object of a ScoringModel."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from scoring_operator import spec as api

MANAGED_BY = "scoring-operator"
LABEL_MODEL = f"{api.GROUP}/model"
ANNOTATION_MODEL_NAME = f"{api.GROUP}/model-name"
ANNOTATION_MODEL_VERSION = f"{api.GROUP}/model-version"
#: Selects the operator's own children (the Deployment watch uses it).
MANAGED_SELECTOR = {"app.kubernetes.io/managed-by": MANAGED_BY}


@dataclass(frozen=True)
class Owner:
    """The ScoringModel a child belongs to (what an ownerReference needs)."""

    name: str
    namespace: str
    uid: str

    @classmethod
    def from_body(cls, body: Any) -> Owner:
        meta = body["metadata"]
        return cls(name=str(meta["name"]), namespace=str(meta["namespace"]), uid=str(meta["uid"]))

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


def selector_labels(owner: Owner) -> dict[str, str]:
    """The immutable Deployment selector: only labels that never change for one ScoringModel."""
    return {"app.kubernetes.io/name": "scoring-model", "app.kubernetes.io/instance": owner.name}


def labels(owner: Owner, model_name: str) -> dict[str, str]:
    """Labels on every child and pod: the standard app.kubernetes.io set plus scoring.dev/model."""
    return {
        **selector_labels(owner),
        "app.kubernetes.io/component": "model-server",
        "app.kubernetes.io/part-of": "scoring-operator",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        LABEL_MODEL: owner.name,
        f"{api.GROUP}/registry-model": model_name,
    }


def owner_reference(owner: Owner) -> dict[str, Any]:
    """controller=true so garbage collection removes children with their ScoringModel."""
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "name": owner.name,
        "uid": owner.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def object_meta(owner: Owner, model_name: str, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": owner.name,
        "namespace": owner.namespace,
        "labels": labels(owner, model_name),
        "ownerReferences": [owner_reference(owner)],
    }
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


def is_owned_by(obj: Any, owner: Owner) -> bool:
    """True when `obj` (a dict) carries an ownerReference to this ScoringModel's uid."""
    refs = ((obj or {}).get("metadata") or {}).get("ownerReferences") or []
    return any(r.get("uid") == owner.uid for r in refs)


def controller_of(obj: Any) -> tuple[str, str] | None:
    """(namespace, name) of the ScoringModel controlling `obj`, if any."""
    meta = (obj or {}).get("metadata") or {}
    for ref in meta.get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") == api.KIND and ref.get("apiVersion", "").startswith(api.GROUP):
            return (str(meta.get("namespace")), str(ref.get("name")))
    return None


def endpoint(owner: Owner, port: int, tls: bool = False) -> str:
    """The in-cluster URL of the scoring Service (https when the pods serve TLS themselves)."""
    return f"{'https' if tls else 'http'}://{owner.name}.{owner.namespace}.svc:{port}"
