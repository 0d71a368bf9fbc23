{{/* Names and labels shared by every template of the chart. */}}
{{- define "scoring-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "scoring-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "scoring-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "scoring-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "scoring-operator.labels" -}}
{{ include "scoring-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: operator
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* The least-privilege rules, shared by the ClusterRole and the per-namespace Roles. */}}
{{- define "scoring-operator.rules" -}}
# The ScoringModels themselves: watch them, add/remove the operator's finalizer and annotations.
- apiGroups: ["scoring.dev"]
  resources: ["scoringmodels"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["scoring.dev"]
  resources: ["scoringmodels/status"]
  verbs: ["get", "patch"]
# Needed to set blockOwnerDeletion on children's ownerReferences.
- apiGroups: ["scoring.dev"]
  resources: ["scoringmodels/finalizers"]
  verbs: ["update"]
# Children, server-side applied. All these kinds (and the Ingress/HTTPRoute below) are watched
# (list/watch, filtered by the label app.kubernetes.io/managed-by=scoring-operator) into the
# operator's cache, so reconciles read no
# object it already knows; HPA/PDB are removed when autoscaling or multiple replicas are turned off.
# No secrets, no RBAC; pods only listed (read-only).
# Deployments and Services are deleted only for canary/shadow rollouts (NAME-canary, NAME-shadow).
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Read-only: why a rollout's new pods cannot start (the model fetch init container's message), and
# which pods a canary/shadow analysis reads.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list"]
# Canary/shadow analysis: GET of the scoring pods' /metrics through the apiserver's pod proxy.
- apiGroups: [""]
  resources: ["pods/proxy"]
  verbs: ["get"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# The shadow's ConfigMap (where stable pods copy requests to), strategy Shadow only.
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# spec.exposure: the Ingress or Gateway API HTTPRoute in front of the model's Service, watched like
# the other children and removed when the exposure is taken out of the spec. Nothing else of the
# Gateway API (no Gateways, no GatewayClasses).
- apiGroups: ["networking.k8s.io"]
  resources: ["ingresses"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["gateway.networking.k8s.io"]
  resources: ["httproutes"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Kubernetes Events on ScoringModels (rollouts, readiness, failures).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end -}}
