{{/* Names, labels and the pieces operator, KMS plugin and CSI provider share. */}}

{{- define "keyward.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "keyward.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "keyward.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "keyward.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Selector labels; call with (dict "root" $ "component" "operator"). */}}
{{- define "keyward.selectorLabels" -}}
app.kubernetes.io/name: {{ include "keyward.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "keyward.operator.fullname" -}}
{{- printf "%s-operator" (include "keyward.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "keyward.operator.serviceAccountName" -}}
{{- default (include "keyward.operator.fullname" .) .Values.operator.serviceAccount.name }}
{{- end }}

{{/* The Service in front of every operator replica's admission webhook. */}}
{{- define "keyward.operator.webhookServiceName" -}}
{{- printf "%s-webhook" (include "keyward.operator.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The kubernetes.io/tls Secret the webhook serves from: the user's, or the one the chart generates. */}}
{{- define "keyward.operator.webhookSecretName" -}}
{{- default (printf "%s-webhook-tls" (include "keyward.operator.fullname" .) | trunc 63 | trimSuffix "-") .Values.operator.webhook.tls.existingSecret }}
{{- end }}

{{/* Where the webhook's tls.crt and tls.key are mounted. */}}
{{- define "keyward.operator.webhookCertDir" -}}
/etc/keyward/webhook
{{- end }}

{{- define "keyward.kmsPlugin.fullname" -}}
{{- printf "%s-kms-plugin" (include "keyward.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "keyward.csiProvider.fullname" -}}
{{- printf "%s-csi-provider" (include "keyward.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "keyward.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* SoftHSM2's configuration file: in the ConfigMap, and written by the hsm-check hook (which runs before the ConfigMap exists). */}}
{{- define "keyward.softhsm.conf" -}}
directories.tokendir = {{ .Values.hsm.softhsm.tokenDir }}
objectstore.backend = file
log.level = ERROR
slots.removable = false
{{- end }}

{{/* The SoftHSM2 configuration file's ConfigMap. */}}
{{- define "keyward.softhsm.configMapName" -}}
{{- printf "%s-softhsm2" (include "keyward.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Every Keyward container's securityContext: non-root, read-only root filesystem, no privilege
escalation, no capabilities, the runtime's seccomp profile. Call with a dict holding runAsUser
and runAsGroup.
*/}}
{{- define "keyward.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .runAsUser }}
runAsGroup: {{ .runAsGroup }}
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Where the PIN is read from: a 0600 file in an in-memory volume. */}}
{{- define "keyward.pinFile" -}}
/run/keyward/pin/pin
{{- end }}

{{/*
Copies the PIN from the Secret volume (group-readable under fsGroup) to an in-memory volume,
owned by the container's uid with mode 0600, which is what `keyward --pin-file` accepts. Uses the
image's own node: no shell, nothing downloaded. Call with (dict "root" $ "securityContext" ...).
*/}}
{{- define "keyward.pinCopyInitContainer" -}}
- name: pin-file
  image: {{ include "keyward.image" .root }}
  imagePullPolicy: {{ .root.Values.image.pullPolicy }}
  command:
    - node
    - -e
    - >-
      const fs = require('node:fs');
      fs.writeFileSync(process.argv[2], fs.readFileSync(process.argv[1]), { mode: 0o600 });
      fs.chmodSync(process.argv[2], 0o600);
    - /etc/keyward/pin-secret/{{ .root.Values.hsm.pinSecret.key }}
    - {{ include "keyward.pinFile" .root }}
  securityContext:
    {{- include "keyward.containerSecurityContext" .securityContext | nindent 4 }}
  resources:
    requests:
      cpu: 10m
      memory: 32Mi
    limits:
      cpu: 100m
      memory: 64Mi
  volumeMounts:
    - name: pin-secret
      mountPath: /etc/keyward/pin-secret
      readOnly: true
    - name: pin
      mountPath: /run/keyward/pin
{{- end }}

{{/* The Secret volume and the in-memory volume the PIN is copied to. */}}
{{- define "keyward.pinSecretVolumes" -}}
- name: pin-secret
  secret:
    secretName: {{ .Values.hsm.pinSecret.name }}
    # 0400, written in decimal: YAML 1.1 and 1.2 read a leading 0 differently.
    defaultMode: 256
    items:
      - key: {{ .Values.hsm.pinSecret.key }}
        path: {{ .Values.hsm.pinSecret.key }}
- name: pin
  emptyDir:
    medium: Memory
    sizeLimit: 1Mi
{{- end }}

{{/* Environment every container loading the PKCS#11 module gets. */}}
{{- define "keyward.hsmEnv" -}}
{{- if .Values.hsm.softhsm.enabled }}
- name: SOFTHSM2_CONF
  value: /etc/keyward/softhsm/softhsm2.conf
{{- end }}
{{- with .Values.hsm.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
One admission webhook of the operator, as kube-apiserver calls it: through the webhook Service,
trusting caBundle, for CREATE and UPDATE of one Keyward resource, failing closed. Call with
(dict "root" $ "resource" "keyrings" "caBundle" ...); the path is /admit/<resource>
(operator/admission/admissionServer.ts).
*/}}
{{- define "keyward.webhook" -}}
clientConfig:
  service:
    name: {{ include "keyward.operator.webhookServiceName" .root }}
    namespace: {{ .root.Release.Namespace }}
    path: /admit/{{ .resource }}
    port: 443
  {{- with .caBundle }}
  caBundle: {{ . }}
  {{- end }}
rules:
  - apiGroups: [keyward.dev]
    apiVersions: [v1alpha1]
    operations: [CREATE, UPDATE]
    resources: [{{ .resource }}]
    scope: Namespaced
failurePolicy: Fail
matchPolicy: Equivalent
sideEffects: None
admissionReviewVersions: [v1]
timeoutSeconds: {{ .root.Values.operator.webhook.timeoutSeconds }}
{{- end }}

{{/*
How Prometheus scrapes a metrics endpoint: the settings ServiceMonitor endpoints and PodMonitor
podMetricsEndpoints share. Call with monitoring.serviceMonitor or monitoring.podMonitor.
honorLabels keeps the KeyRing metrics' own `namespace` label (the KeyRing's namespace), which
would otherwise become `exported_namespace` beside the target's.
*/}}
{{- define "keyward.scrapeSettings" -}}
interval: {{ .interval }}
{{- with .scrapeTimeout }}
scrapeTimeout: {{ . }}
{{- end }}
honorLabels: {{ .honorLabels }}
scheme: {{ .scheme }}
{{- with .tlsConfig }}
tlsConfig:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .relabelings }}
relabelings:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .metricRelabelings }}
metricRelabelings:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
