"""scoring_runtime: the model registry, the `scoring` CLI and the HTTP model server of scoring pods."""

__version__ = "0.1.0"
