"""Harness for a private Kubernetes control plane used by the cluster tests."""
