{{/*
Expand the name of the chart.
*/}}
{{- define "bunq-session-worker.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Create a default fully qualified app name.
We truncate at 63 chars because some Kubernetes name fields are limited to this (by the DNS naming spec).
If release name contains chart name it will be used as a full name.
*/}}
{{- define "bunq-session-worker.fullname" -}}
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

{{/*
Create chart name and version as used by the chart label.
*/}}
{{- define "bunq-session-worker.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels
*/}}
{{- define "bunq-session-worker.labels" -}}
helm.sh/chart: {{ include "bunq-session-worker.chart" . }}
{{ include "bunq-session-worker.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/component: worker
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Selector labels
*/}}
{{- define "bunq-session-worker.selectorLabels" -}}
app.kubernetes.io/name: {{ include "bunq-session-worker.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Create the name of the service account to use
*/}}
{{- define "bunq-session-worker.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "bunq-session-worker.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Container image: repository@digest when a digest is pinned, else repository:tag
(tag defaulting to the chart's appVersion).
*/}}
{{- define "bunq-session-worker.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/*
Seconds the kubelet waits after SIGTERM before SIGKILL: the worker's drain
timeout plus a margin, so a replica is never killed while it is still draining.
*/}}
{{- define "bunq-session-worker.terminationGracePeriodSeconds" -}}
{{- add (int .Values.shutdown.timeoutSeconds) (int .Values.shutdown.gracePeriodMarginSeconds) }}
{{- end }}

{{/*
File names of the key files inside keysMountPath (fixed, so the env vars
pointing at them never disagree with the volume).
*/}}
{{- define "bunq-session-worker.clientKeyFile" -}}
{{- printf "%s/client_key.pem" (.Values.keysMountPath | trimSuffix "/") }}
{{- end }}

{{- define "bunq-session-worker.sessionEncryptionKeyFile" -}}
{{- printf "%s/session_encryption.key" (.Values.keysMountPath | trimSuffix "/") }}
{{- end }}

{{- define "bunq-session-worker.partnerApiKeyFile" -}}
{{- printf "%s/partner_api_key" (.Values.keysMountPath | trimSuffix "/") }}
{{- end }}

{{/*
File name of the n-th old encryption key (from 1), inside keysMountPath.
*/}}
{{- define "bunq-session-worker.sessionEncryptionOldKeyName" -}}
{{- printf "session_encryption.old-%d.key" (add1 .) }}
{{- end }}

{{/*
SESSION_ENCRYPTION_OLD_KEY_FILES: the old keys' paths, comma-separated.
*/}}
{{- define "bunq-session-worker.sessionEncryptionOldKeyFiles" -}}
{{- $keys := .Values.keysMountPath | trimSuffix "/" }}
{{- $paths := list }}
{{- range $i, $_ := .Values.sessionEncryption.oldKeys }}
{{- $paths = append $paths (printf "%s/%s" $keys (include "bunq-session-worker.sessionEncryptionOldKeyName" $i)) }}
{{- end }}
{{- join "," $paths }}
{{- end }}

{{/*
Replica count that can exist at once, for deciding whether a
PodDisruptionBudget makes sense.
*/}}
{{- define "bunq-session-worker.pdbEnabled" -}}
{{- if and .Values.podDisruptionBudget.enabled (or .Values.autoscaling.enabled (gt (int .Values.replicaCount) 1)) -}}
true
{{- end }}
{{- end }}

{{/*
Fail early, at render time, on values that would only fail at start-up
(or, worse, silently put a secret into a ConfigMap).
*/}}
{{- define "bunq-session-worker.validateValues" -}}
{{- if not .Values.bunq.baseUrl }}
{{- fail "bunq.baseUrl is required (e.g. https://api.bunq.com/v1 or https://public-api.sandbox.bunq.com/v1); the worker has no default host" }}
{{- end }}
{{- if not (regexMatch "^https?://" .Values.bunq.baseUrl) }}
{{- fail "bunq.baseUrl must be an http(s) URL" }}
{{- end }}
{{- if not .Values.bunq.clientKey.existingSecret }}
{{- fail "bunq.clientKey.existingSecret is required: the name of a Secret holding the client private key PEM" }}
{{- end }}
{{- if not .Values.amqp.existingSecret }}
{{- fail "amqp.existingSecret is required: the name of a Secret holding AMQP_URL (it contains credentials)" }}
{{- end }}
{{- $redisSources := compact (list .Values.redis.url .Values.redis.clusterUrls .Values.redis.existingSecret) }}
{{- if gt (len $redisSources) 1 }}
{{- fail "set only one of redis.url, redis.clusterUrls and redis.existingSecret" }}
{{- end }}
{{- if eq (len $redisSources) 0 }}
{{- fail "one of redis.url or redis.clusterUrls (no credentials) or redis.existingSecret is required" }}
{{- end }}
{{- if contains "@" .Values.redis.url }}
{{- fail "redis.url looks like it carries credentials ('@'); it would land in a ConfigMap. Put it in a Secret and set redis.existingSecret" }}
{{- end }}
{{- if contains "@" .Values.redis.clusterUrls }}
{{- fail "redis.clusterUrls looks like it carries credentials ('@'); it would land in a ConfigMap. Put it in a Secret and set redis.existingSecret with redis.cluster" }}
{{- end }}
{{- if and .Values.sessionEncryption.oldKeys (not .Values.sessionEncryption.existingSecret) }}
{{- fail "sessionEncryption.oldKeys needs sessionEncryption.existingSecret: old keys only open, the current key seals" }}
{{- end }}
{{- range $i, $old := .Values.sessionEncryption.oldKeys }}
{{- if not $old.existingSecret }}
{{- fail (printf "sessionEncryption.oldKeys[%d].existingSecret is required: the name of a Secret holding an old key" $i) }}
{{- end }}
{{- end }}
{{- if and .Values.sessionRenewal.enabled (not .Values.sessionEncryption.existingSecret) }}
{{- fail "sessionRenewal.enabled stores each user's credential in Redis: set sessionEncryption.existingSecret to seal it" }}
{{- end }}
{{- if and .Values.credentialReset.enabled (not .Values.credentialReset.partnerApiKey.existingSecret) }}
{{- fail "credentialReset.enabled resets tokens on the partner's own session: set credentialReset.partnerApiKey.existingSecret to a Secret holding the partner's bunq API key" }}
{{- end }}
{{- if and .Values.credentialReset.enabled (not .Values.sessionEncryption.existingSecret) }}
{{- fail "credentialReset.enabled keeps the partner's session and fresh tokens in Redis: set sessionEncryption.existingSecret to seal them" }}
{{- end }}
{{- if not (has .Values.bunq.rateLimitScope (list "global" "credential")) }}
{{- fail "bunq.rateLimitScope must be 'global' or 'credential'" }}
{{- end }}
{{- if lt (int .Values.shutdown.gracePeriodMarginSeconds) 1 }}
{{- fail "shutdown.gracePeriodMarginSeconds must be at least 1 so the grace period exceeds the drain timeout" }}
{{- end }}
{{- if lt (int .Values.amqp.prefetch) 1 }}
{{- fail "amqp.prefetch must be at least 1" }}
{{- end }}
{{- end }}
