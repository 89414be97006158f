{{/*
Chart name, truncated to 63 characters (a label value's limit).
*/}}
{{- define "vod-signer.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of the release's resources: release name, plus the chart name unless the release
name already contains it. Truncated to 63 characters (DNS label).
*/}}
{{- define "vod-signer.fullname" -}}
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
Name of the throwaway Redis's resources (redis.internal).
*/}}
{{- define "vod-signer.redisFullname" -}}
{{- printf "%s-redis" (include "vod-signer.fullname" . | trunc 57 | trimSuffix "-") }}
{{- end }}

{{/*
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "vod-signer.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels shared by every resource of the release (component excluded).
*/}}
{{- define "vod-signer.commonLabels" -}}
helm.sh/chart: {{ include "vod-signer.chart" . }}
app.kubernetes.io/name: {{ include "vod-signer.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: vod-signer
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Standard labels of the vod-signer server's resources.
*/}}
{{- define "vod-signer.labels" -}}
{{ include "vod-signer.commonLabels" . }}
app.kubernetes.io/component: server
{{- end }}

{{/*
Selector labels of the vod-signer server pods. The component keeps them apart from the
throwaway Redis's pods of the same release.
*/}}
{{- define "vod-signer.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vod-signer.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end }}

{{/*
Standard labels of the throwaway Redis's resources.
*/}}
{{- define "vod-signer.redisLabels" -}}
{{ include "vod-signer.commonLabels" . }}
app.kubernetes.io/component: redis
{{- end }}

{{/*
Selector labels of the throwaway Redis pod.
*/}}
{{- define "vod-signer.redisSelectorLabels" -}}
app.kubernetes.io/name: {{ include "vod-signer.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: redis
{{- end }}

{{/*
Name of the ServiceAccount the pods use.
*/}}
{{- define "vod-signer.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "vod-signer.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The vod-signer image reference: repository:tag, or repository@digest when a digest is set.
*/}}
{{- define "vod-signer.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/*
Name of the Secret mounted as the keys directory.
*/}}
{{- define "vod-signer.keysSecretName" -}}
{{- if .Values.keys.existingSecret }}
{{- .Values.keys.existingSecret }}
{{- else }}
{{- printf "%s-keys" (include "vod-signer.fullname" .) }}
{{- end }}
{{- end }}

{{/*
The Redis URL the server uses: redis.url, or the throwaway Redis's Service, or "" (in-memory).
*/}}
{{- define "vod-signer.redisUrl" -}}
{{- if .Values.redis.internal.enabled }}
{{- printf "redis://%s.%s.svc:6379/0" (include "vod-signer.redisFullname" .) .Release.Namespace }}
{{- else }}
{{- .Values.redis.url }}
{{- end }}
{{- end }}

{{/*
Renders a scalar value as a string for an environment variable: integers as plain digits
(values arrive as float64, which would print as 7.776e+06), fractions (0.1) and everything
else as is.
*/}}
{{- define "vod-signer.scalar" -}}
{{- if or (kindIs "int" .) (kindIs "int64" .) (and (kindIs "float64" .) (eq (floor .) (float64 .))) }}
{{- printf "%d" (int64 .) }}
{{- else }}
{{- toString . }}
{{- end }}
{{- end }}

{{/*
Where the mounted files live in the container.
*/}}
{{- define "vod-signer.keysDir" -}}/etc/vod-signer/keys{{- end }}
{{- define "vod-signer.tlsDir" -}}/etc/vod-signer/tls{{- end }}
{{- define "vod-signer.clientCaDir" -}}/etc/vod-signer/client-ca{{- end }}
{{- define "vod-signer.callerPolicyDir" -}}/etc/vod-signer/caller-policy{{- end }}
{{- define "vod-signer.redisPasswordDir" -}}/etc/vod-signer/redis{{- end }}
{{- define "vod-signer.redisTlsCaDir" -}}/etc/vod-signer/redis-tls-ca{{- end }}
{{- define "vod-signer.redisTlsClientDir" -}}/etc/vod-signer/redis-tls-client{{- end }}
{{- define "vod-signer.notifySecretDir" -}}/etc/vod-signer/notify{{- end }}

{{/* The Secret of the push's signing secrets: the user's, or the chart's (inlineSecret). */}}
{{- define "vod-signer.notifySecretName" -}}
{{- if .Values.notifications.existingSecret }}
{{- .Values.notifications.existingSecret }}
{{- else }}
{{- printf "%s-notify" (include "vod-signer.fullname" .) }}
{{- end }}
{{- end }}

{{/* The key of the signing secrets in that Secret. */}}
{{- define "vod-signer.notifySecretKey" -}}
{{- if .Values.notifications.existingSecret }}
{{- .Values.notifications.existingSecretKey }}
{{- else }}
{{- "secrets" }}
{{- end }}
{{- end }}

{{/*
Refuses values that would deploy something broken or unsafe, with a message saying what to do.
*/}}
{{- define "vod-signer.validate" -}}
{{- $v := .Values }}
{{- if and $v.keys.existingSecret $v.keys.inline }}
{{- fail "keys.existingSecret and keys.inline are exclusive: set one of them" }}
{{- end }}
{{- if not (or $v.keys.existingSecret $v.keys.inline) }}
{{- fail "no keys: set keys.existingSecret to the name of a Secret whose data keys are SecretIds and values SecretKeys (or keys.inline.<SecretId>=<SecretKey> to try it out)" }}
{{- end }}
{{- if $v.keys.inline }}
{{- $ids := without (keys $v.keys.inline | sortAlpha) ".active" }}
{{- if not $ids }}
{{- fail "keys.inline holds no key: give at least one SecretId=SecretKey" }}
{{- end }}
{{- if and $v.keys.activeKey (not (has $v.keys.activeKey $ids)) }}
{{- fail (printf "keys.activeKey %q is not one of the keys in keys.inline (%s)" $v.keys.activeKey (join ", " $ids)) }}
{{- end }}
{{- with (get $v.keys.inline ".active") }}
{{- if not (has (trim (toString .)) $ids) }}
{{- fail (printf "the .active entry of keys.inline names %q, which is not one of its keys (%s)" (trim (toString .)) (join ", " $ids)) }}
{{- end }}
{{- end }}
{{- if and (gt (len $ids) 1) (not $v.keys.activeKey) (not (hasKey $v.keys.inline ".active")) }}
{{- fail "keys.inline holds several keys: set keys.activeKey to the SecretId that issues" }}
{{- end }}
{{- end }}
{{- with $v.notifications }}
{{- if not (has .mode (list "" "push" "pull")) }}
{{- fail (printf "notifications.mode %q: use \"\" (none), push or pull" .mode) }}
{{- end }}
{{- if and (eq .mode "push") (not .url) }}
{{- fail "notifications.mode push needs notifications.url (the app server's receiver)" }}
{{- end }}
{{- if and .url (ne .mode "push") }}
{{- fail "notifications.url is set but notifications.mode is not push: set mode push (or drop the url)" }}
{{- end }}
{{- if and (eq .mode "push") (not (or .existingSecret .inlineSecret)) }}
{{- fail "notifications.mode push signs every push: set notifications.existingSecret to a Secret holding whsec_ secrets (or notifications.inlineSecret to try it out)" }}
{{- end }}
{{- if and .existingSecret .inlineSecret }}
{{- fail "notifications.existingSecret and notifications.inlineSecret are exclusive: set one of them" }}
{{- end }}
{{- end }}
{{- if and $v.redis.url $v.redis.internal.enabled }}
{{- fail "redis.url and redis.internal.enabled are exclusive: use your Redis (redis.url) or the throwaway one (redis.internal.enabled), not both" }}
{{- end }}
{{- $hasRedis := or $v.redis.url $v.redis.internal.enabled }}
{{- if not $hasRedis }}
{{- if $v.autoscaling.enabled }}
{{- fail "autoscaling.enabled needs a Redis shared by the pods: without redis.url (or redis.internal.enabled to try it out) each pod keeps its own in-memory record, so a signature issued by one pod is refused by another and a restart forgets them all. Set redis.url, or turn autoscaling off and set replicaCount=1" }}
{{- end }}
{{- if gt (int $v.replicaCount) 1 }}
{{- fail (printf "replicaCount=%d needs a Redis shared by the pods: without redis.url (or redis.internal.enabled to try it out) each pod keeps its own in-memory record, so a signature issued by one pod is refused by another. Set redis.url, or set replicaCount=1" (int $v.replicaCount)) }}
{{- end }}
{{- end }}
{{- if and $v.redis.existingSecret (not $hasRedis) }}
{{- fail "redis.existingSecret is set but there is no Redis: set redis.url" }}
{{- end }}
{{- if and $v.redis.existingSecret $v.redis.internal.enabled }}
{{- fail "redis.existingSecret is for your own Redis (redis.url); the throwaway Redis has no password" }}
{{- end }}
{{- if and (or $v.redis.tls.caSecretName $v.redis.tls.clientCertSecretName) (not (hasPrefix "rediss" $v.redis.url)) }}
{{- fail "redis.tls.* needs a TLS Redis URL: redis.url=rediss://... (or rediss+cluster://...)" }}
{{- end }}
{{- if and (not $v.callerPolicy.existingSecret) (not $v.callerPolicy.allowAnyCaller) }}
{{- fail "no caller policy: set callerPolicy.existingSecret to a Secret holding the policy TOML (who may issue, who may consume), or callerPolicy.allowAnyCaller=true to let every pod that reaches the port call every RPC (for trying it out only)" }}
{{- end }}
{{- if and $v.tls.clientCaSecretName (not $v.tls.secretName) }}
{{- fail "tls.clientCaSecretName (mTLS) needs tls.secretName: the server's own certificate" }}
{{- end }}
{{- $grace := int $v.terminationGracePeriodSeconds }}
{{- $drain := int $v.config.drainTimeout }}
{{- $preStop := int $v.preStopSleepSeconds }}
{{- if le $grace (add $drain $preStop) }}
{{- fail (printf "terminationGracePeriodSeconds=%d must exceed config.drainTimeout (%d) + preStopSleepSeconds (%d), or Kubernetes kills the pod while calls still drain" $grace $drain $preStop) }}
{{- end }}
{{- if and $v.autoscaling.enabled (gt (int $v.autoscaling.minReplicas) (int $v.autoscaling.maxReplicas)) }}
{{- fail "autoscaling.minReplicas must not exceed autoscaling.maxReplicas" }}
{{- end }}
{{- if and $v.metrics.serviceMonitor.enabled (not $v.metrics.enabled) }}
{{- fail "metrics.serviceMonitor.enabled needs metrics.enabled" }}
{{- end }}
{{- if and $v.metrics.prometheusRule.enabled (not $v.metrics.enabled) }}
{{- fail "metrics.prometheusRule.enabled needs metrics.enabled: without metrics the alerts have nothing to watch" }}
{{- end }}
{{- if and $v.metrics.grafanaDashboard.enabled (not $v.metrics.enabled) }}
{{- fail "metrics.grafanaDashboard.enabled needs metrics.enabled: without metrics the dashboard has nothing to show" }}
{{- end }}
{{- if and $v.networkPolicy.enabled (not $v.networkPolicy.clientPodLabels) }}
{{- fail "networkPolicy.enabled needs networkPolicy.clientPodLabels: the labels your client pods (app server, upload gateway) carry, e.g. --set networkPolicy.clientPodLabels.vod-signer-client=true (an empty set would admit every pod)" }}
{{- end }}
{{- end }}
