"""scoring_operator: a kopf operator that turns `ScoringModel` resources into scoring Deployments.

Layers (import downward only): handlers -> reconcile -> resolver/kube/metrics -> builders -> spec/config.
"""

__version__ = "0.1.0"
