{{/*
Object names are fixed, as in deploy/: additive ClusterRoleBindings name the
ServiceAccount replika-controller-manager, and the operator's defaults name the
Lease, the Secret and the webhook configurations. One release per cluster.
*/}}

{{/* Labels of every object. tests/install.rs drops all but the first when it
compares the chart with deploy/. */}}
{{- define "replika.labels" -}}
app.kubernetes.io/name: replika
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ include "replika.version" . | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* What the Deployment and the Services select on. */}}
{{- define "replika.selectorLabels" -}}
app.kubernetes.io/name: replika
{{- end }}

{{- define "replika.version" -}}
{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{/* The webhook Service's DNS name, which the serving certificate must cover. */}}
{{- define "replika.webhookHost" -}}
replika-webhook.{{ .Release.Namespace }}.svc
{{- end }}

{{/* The operator's ServiceAccount, as an RBAC subject. */}}
{{- define "replika.subject" -}}
- kind: ServiceAccount
  name: replika-controller-manager
  namespace: {{ .Release.Namespace }}
{{- end }}
