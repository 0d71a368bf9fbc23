"""Pin a ScoringModel's model reference to one version by asking its registry.

Uses `scoring_runtime.registry`, which is light (no torch/sklearn imports). Registry calls are
blocking file or network I/O, so they run in a worker thread with a timeout: a hung network share
shows up as RegistryUnavailable instead of stalling every reconcile.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from scoring_operator import spec as api
from scoring_operator.builders.status import Resolved
from scoring_runtime.registry import (
    ModelRegistry,
    RegistryCorrupt,
    RegistryError,
    RegistryUnavailable,
    ResolvedModel,
    open_registry,
)


class RegistryNotConfigured(RegistryError):
    """The operator was not given a way to read this registry type."""

    reason = "RegistryNotConfigured"
    retryable = False


class Resolver:
    """Resolves `spec.model` against the registries the operator can read."""

    def __init__(self, local_registry_root: Path | None, timeout: float = 30.0) -> None:
        self.local_registry_root = local_registry_root
        self.timeout = timeout
        self._registries: dict[str, ModelRegistry] = {}

    def registry_uri(self, registry: api.RegistrySpec) -> str:
        """Where the operator reads this registry (its own mount, not the pod's)."""
        if isinstance(registry, api.LocalRegistry):
            if self.local_registry_root is None:
                raise RegistryNotConfigured(
                    "the operator has no local registry mounted: start it with --local-registry-root "
                    "(Helm: set localRegistry.claimName) so it can resolve versions"
                )
            root = self.local_registry_root / registry.path if registry.path else self.local_registry_root
            return root.as_uri()
        if isinstance(registry, api.AzureMLRegistry):
            # Read with the operator's own Azure identity (chart: azure.workloadIdentity.clientId).
            return registry.uri
        raise RegistryNotConfigured(f"unsupported registry type {registry.type!r}")  # pragma: no cover

    async def resolve(self, ref: api.ModelRef) -> Resolved:
        """The version `ref` means now. Raises `RegistryError` subclasses (with .reason/.retryable)."""
        uri = self.registry_uri(ref.registry)

        def work() -> ResolvedModel:
            # One registry object per URI: an Azure one keeps its client and cached token between reconciles.
            registry = self._registries.get(uri)
            if registry is None:
                registry = self._registries.setdefault(uri, open_registry(uri))
            return registry.resolve(ref.name, version=ref.version, label=ref.label)

        try:
            found = await asyncio.wait_for(asyncio.to_thread(work), timeout=self.timeout)
        except TimeoutError:
            raise RegistryUnavailable(f"registry {uri} did not answer within {self.timeout:g}s") from None
        except RegistryError:
            raise
        except OSError as e:  # a broken mount surfaces as an OSError from the file registry
            raise RegistryUnavailable(f"registry {uri}: {e}") from e
        except ValueError as e:
            raise RegistryCorrupt(f"registry {uri}: cannot read model {ref.name!r}: {e}") from e
        return Resolved(name=found.name, version=found.version, resolved_from=found.resolved_from)
