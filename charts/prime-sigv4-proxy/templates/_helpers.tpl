{{/*
=====================================================================================
 Names and labels (helm create conventions)
=====================================================================================
*/}}

{{/* Expand the name of the chart. */}}
{{- define "prime-sigv4-proxy.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Create a default fully qualified app name (63 chars: the DNS label limit).
If the release name contains the chart name it is used as the full name.
*/}}
{{- define "prime-sigv4-proxy.fullname" -}}
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

{{/* Chart name and version as used by the chart label. */}}
{{- define "prime-sigv4-proxy.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Common labels */}}
{{- define "prime-sigv4-proxy.labels" -}}
helm.sh/chart: {{ include "prime-sigv4-proxy.chart" . }}
{{ include "prime-sigv4-proxy.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: {{ .Values.mode }}
{{- end }}

{{/* Selector labels */}}
{{- define "prime-sigv4-proxy.selectorLabels" -}}
app.kubernetes.io/name: {{ include "prime-sigv4-proxy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Name of the service account to use (standalone mode). */}}
{{- define "prime-sigv4-proxy.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "prime-sigv4-proxy.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Name of the ConfigMap holding config.toml. */}}
{{- define "prime-sigv4-proxy.configMapName" -}}
{{- include "prime-sigv4-proxy.fullname" . }}
{{- end }}

{{/* image reference: repository[:tag|@digest] */}}
{{- define "prime-sigv4-proxy.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag | toString) }}
{{- end }}
{{- end }}

{{/*
=====================================================================================
 Paths (fixed; the Dockerfile and docs refer to them)
=====================================================================================
*/}}
{{- define "prime-sigv4-proxy.configDir" -}}/etc/prime-sigv4-proxy{{- end }}
{{- define "prime-sigv4-proxy.configPath" -}}/etc/prime-sigv4-proxy/config.toml{{- end }}
{{/* configReload inPlace: the ConfigMap's directory, mounted whole (no subPath). */}}
{{- define "prime-sigv4-proxy.configReloadDir" -}}/etc/prime-sigv4-proxy/config{{- end }}
{{- define "prime-sigv4-proxy.inPlaceReload" -}}
{{- if eq .Values.configReload "inPlace" }}true{{ end }}
{{- end }}
{{/* The --config path the container is started with. */}}
{{- define "prime-sigv4-proxy.configArg" -}}
{{- if include "prime-sigv4-proxy.inPlaceReload" . }}
{{- printf "%s/config.toml" (include "prime-sigv4-proxy.configReloadDir" .) }}
{{- else }}
{{- include "prime-sigv4-proxy.configPath" . }}
{{- end }}
{{- end }}
{{- define "prime-sigv4-proxy.tlsDir" -}}/etc/prime-sigv4-proxy/tls{{- end }}
{{- define "prime-sigv4-proxy.clientCaDir" -}}/etc/prime-sigv4-proxy/client-ca{{- end }}

{{/*
Container port names. In sidecar mode they are prefixed, so they cannot clash with the
application's own port names in the same pod (e.g. its "http" port).
*/}}
{{- define "prime-sigv4-proxy.proxyPortName" -}}
{{- if eq .Values.mode "sidecar" }}prime-proxy{{ else }}{{ ternary "https" "http" .Values.tls.enabled }}{{ end }}
{{- end }}
{{- define "prime-sigv4-proxy.adminPortName" -}}
{{- if eq .Values.mode "sidecar" }}prime-admin{{ else }}admin{{ end }}
{{- end }}

{{/* Is the client CA in its own Secret (mounted separately) rather than the TLS Secret? */}}
{{- define "prime-sigv4-proxy.separateClientCa" -}}
{{- if and .Values.tls.enabled .Values.tls.clientCaSecretName (ne .Values.tls.clientCaSecretName .Values.tls.secretName) }}true{{ end }}
{{- end }}

{{/*
=====================================================================================
 Effective configuration
=====================================================================================
*/}}

{{/* The `listen` address: loopback in sidecar mode, all interfaces in standalone mode. */}}
{{- define "prime-sigv4-proxy.listen" -}}
{{- if .Values.config.listen }}
{{- .Values.config.listen }}
{{- else if eq .Values.mode "sidecar" }}
{{- printf "127.0.0.1:%d" (int .Values.ports.proxy) }}
{{- else }}
{{- printf "0.0.0.0:%d" (int .Values.ports.proxy) }}
{{- end }}
{{- end }}

{{/* The `admin_listen` address: all interfaces, so the kubelet can probe the pod IP. */}}
{{- define "prime-sigv4-proxy.adminListen" -}}
{{- if .Values.config.admin_listen }}
{{- .Values.config.admin_listen }}
{{- else }}
{{- printf "0.0.0.0:%d" (int .Values.ports.admin) }}
{{- end }}
{{- end }}

{{/* The peer allowed to call the proxy: pods with networkPolicy.clients.podLabels, in the
release's namespace or in those networkPolicy.clients.namespaceSelector selects. */}}
{{- define "prime-sigv4-proxy.networkPolicy.clientPeer" -}}
- podSelector:
    matchLabels:
      {{- toYaml .Values.networkPolicy.clients.podLabels | nindent 6 }}
  {{- if not (kindIs "invalid" .Values.networkPolicy.clients.namespaceSelector) }}
  namespaceSelector:
    {{- toYaml .Values.networkPolicy.clients.namespaceSelector | nindent 4 }}
  {{- end }}
{{- end }}

{{/* The shared rate limit's Redis URL (config.rate_limit.shared.url), or "". */}}
{{- define "prime-sigv4-proxy.redisUrl" -}}
{{- $limit := default (dict) (get (default (dict) .Values.config) "rate_limit") }}
{{- $shared := default (dict) (get $limit "shared") }}
{{- default "" (get $shared "url") }}
{{- end }}

{{/* The TCP port of that URL (6379 when it names none), or "" when the URL is empty. */}}
{{- define "prime-sigv4-proxy.redisPort" -}}
{{- $url := include "prime-sigv4-proxy.redisUrl" . }}
{{- if $url }}
{{- $authority := regexReplaceAll "^[A-Za-z]+://(?:[^/@]*@)?([^/?#]*).*$" $url "${1}" }}
{{- $port := regexFind ":[0-9]+$" $authority | trimPrefix ":" }}
{{- default "6379" $port }}
{{- end }}
{{- end }}

{{/* Where the Redis password Secret is mounted (sharedRateLimit.passwordSecret). */}}
{{- define "prime-sigv4-proxy.redisDir" -}}/etc/prime-sigv4-proxy/redis{{- end }}

{{/*
Memory: the proxy keeps buffered request and response bodies under
config.listener.max_buffered_bytes (default 64 MiB); on top of that it needs a fixed overhead
(code, TLS and HTTP state, connection buffers, the log buffer), taken as 48 MiB. A memory limit
below budget + overhead could OOM-kill the pod before the budget refuses a request, so it is
refused here. Quantities in bytes or with Ki/Mi/Gi are checked; others are left alone.
*/}}
{{- define "prime-sigv4-proxy.memoryOverheadBytes" -}}50331648{{- end }}
{{- define "prime-sigv4-proxy.memoryBudgetBytes" -}}
{{- $listener := default (dict) (get (default (dict) .Values.config) "listener") }}
{{- int64 (default 67108864 (get $listener "max_buffered_bytes")) }}
{{- end }}

{{/* A memory quantity ("128Mi", "1Gi", "134217728") in bytes, or "" when not understood. */}}
{{- define "prime-sigv4-proxy.quantityBytes" -}}
{{- $q := toString . }}
{{- if regexMatch "^[0-9]+$" $q }}{{ $q }}
{{- else if regexMatch "^[0-9]+Ki$" $q }}{{ mul (int64 (trimSuffix "Ki" $q)) 1024 }}
{{- else if regexMatch "^[0-9]+Mi$" $q }}{{ mul (int64 (trimSuffix "Mi" $q)) 1048576 }}
{{- else if regexMatch "^[0-9]+Gi$" $q }}{{ mul (int64 (trimSuffix "Gi" $q)) 1073741824 }}
{{- end }}
{{- end }}

{{- define "prime-sigv4-proxy.validateMemory" -}}
{{- $limits := default (dict) (get (default (dict) .Values.resources) "limits") }}
{{- with get $limits "memory" }}
{{- $limit := include "prime-sigv4-proxy.quantityBytes" . }}
{{- if $limit }}
{{- $needed := add (int64 (include "prime-sigv4-proxy.memoryBudgetBytes" $)) (int64 (include "prime-sigv4-proxy.memoryOverheadBytes" $)) }}
{{- if lt (int64 $limit) (int64 $needed) }}
{{- fail (printf "resources.limits.memory (%s) is below config.listener.max_buffered_bytes (%d MiB) plus the proxy's fixed overhead (%d MiB) = %d MiB: raise the limit or lower the budget, or the pod is OOM-killed before the budget refuses a request" (toString .) (div (int64 (include "prime-sigv4-proxy.memoryBudgetBytes" $)) 1048576) (div (int64 (include "prime-sigv4-proxy.memoryOverheadBytes" $)) 1048576) (div (int64 $needed) 1048576)) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* Checks that span several values (the schema checks each value alone). */}}
{{- define "prime-sigv4-proxy.validate" -}}
{{- if and .Values.tls.enabled (not .Values.tls.secretName) }}
{{- fail "tls.enabled is true but tls.secretName is empty: name a kubernetes.io/tls Secret (e.g. a cert-manager Certificate's secretName)" }}
{{- end }}
{{- if and .Values.tls.clientCaSecretName (not .Values.tls.enabled) }}
{{- fail "tls.clientCaSecretName needs tls.enabled: mutual TLS is only offered on a TLS listener" }}
{{- end }}
{{- if eq (int .Values.ports.proxy) (int .Values.ports.admin) }}
{{- fail "ports.proxy and ports.admin must differ" }}
{{- end }}
{{- if and .Values.sharedRateLimit.passwordSecret.name (not (include "prime-sigv4-proxy.redisUrl" .)) }}
{{- fail "sharedRateLimit.passwordSecret is set but config.rate_limit.shared.url is empty: the password is for the shared rate limit's Redis" }}
{{- end }}
{{- include "prime-sigv4-proxy.validateMemory" . }}
{{- $graceMs := int64 (default 10000 .Values.config.shutdown_grace_ms) }}
{{- $neededMs := add $graceMs (mul (int64 .Values.lifecycle.preStopSleepSeconds) 1000) }}
{{- if le (mul (int64 .Values.terminationGracePeriodSeconds) 1000) $neededMs }}
{{- fail (printf "terminationGracePeriodSeconds (%d s) must be greater than config.shutdown_grace_ms (%d ms) plus lifecycle.preStopSleepSeconds (%d s), or in-flight requests are killed before they finish" (int64 .Values.terminationGracePeriodSeconds) $graceMs (int64 .Values.lifecycle.preStopSleepSeconds)) }}
{{- end }}
{{- end }}

{{/*
The configuration as a map: .Values.config plus what the chart derives (listen addresses, TLS
file paths). Rendered as TOML by "prime-sigv4-proxy.configToml".
*/}}
{{- define "prime-sigv4-proxy.configToml" -}}
{{- include "prime-sigv4-proxy.validate" . }}
{{- $cfg := deepCopy (default (dict) .Values.config) }}
{{- $_ := set $cfg "listen" (include "prime-sigv4-proxy.listen" .) }}
{{- $_ := set $cfg "admin_listen" (include "prime-sigv4-proxy.adminListen" .) }}
{{- if .Values.tls.enabled }}
{{- $tls := deepCopy (default (dict) (get $cfg "tls")) }}
{{- $_ := set $tls "cert_file" (printf "%s/tls.crt" (include "prime-sigv4-proxy.tlsDir" .)) }}
{{- $_ := set $tls "key_file" (printf "%s/tls.key" (include "prime-sigv4-proxy.tlsDir" .)) }}
{{- if .Values.tls.clientCaSecretName }}
{{- if include "prime-sigv4-proxy.separateClientCa" . }}
{{- $_ := set $tls "client_ca_file" (printf "%s/%s" (include "prime-sigv4-proxy.clientCaDir" .) .Values.tls.clientCaKey) }}
{{- else }}
{{- $_ := set $tls "client_ca_file" (printf "%s/%s" (include "prime-sigv4-proxy.tlsDir" .) .Values.tls.clientCaKey) }}
{{- end }}
{{- end }}
{{- $_ := set $cfg "tls" $tls }}
{{- end }}
{{- if .Values.sharedRateLimit.passwordSecret.name }}
{{- $limit := deepCopy (default (dict) (get $cfg "rate_limit")) }}
{{- $shared := deepCopy (default (dict) (get $limit "shared")) }}
{{- $_ := set $shared "password_file" (printf "%s/%s" (include "prime-sigv4-proxy.redisDir" .) .Values.sharedRateLimit.passwordSecret.key) }}
{{- $_ := set $limit "shared" $shared }}
{{- $_ := set $cfg "rate_limit" $limit }}
{{- end -}}
# prime-sigv4-proxy configuration, rendered by the Helm chart {{ include "prime-sigv4-proxy.chart" . }}
# from the `config` value. Built-in defaults apply to keys not set here; PRIME_PROXY_* environment
# variables override it.
{{ include "prime-sigv4-proxy.toml.table" (dict "table" $cfg "path" (list) "header" "") }}
{{- end }}

{{/* sha256 of the rendered config.toml: a pod annotation, so config changes roll the pods. */}}
{{- define "prime-sigv4-proxy.configChecksum" -}}
{{- include "prime-sigv4-proxy.configToml" . | sha256sum }}
{{- end }}

{{/*
=====================================================================================
 TOML rendering of a nested map
   {{ include "prime-sigv4-proxy.toml.table" (dict "table" $map "path" (list) "header" "") }}
 - scalar keys of a table come first (TOML needs them before any sub-table), sorted;
 - maps become [a.b] tables, lists of maps become [[a.b]] arrays of tables;
 - strings are TOML basic strings (JSON escaping is a subset of TOML's), integers stay
   integers (YAML numbers arrive as float64), floats keep their fraction, bools are bare;
 - null values are left out (so `--set config.x=null` restores the built-in default);
 - keys that are not bare keys ([A-Za-z0-9_-]+) are quoted.
=====================================================================================
*/}}

{{- define "prime-sigv4-proxy.toml.key" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . }}{{ . }}{{ else }}{{ toJson . }}{{ end }}
{{- end }}

{{- define "prime-sigv4-proxy.toml.value" -}}
{{- $v := . }}
{{- if kindIs "string" $v }}
{{- toJson $v }}
{{- else if kindIs "bool" $v }}
{{- ternary "true" "false" $v }}
{{- else if or (kindIs "float64" $v) (kindIs "float32" $v) }}
{{- if eq (float64 $v) (float64 (int64 $v)) }}{{ int64 $v }}{{ else }}{{ $v }}{{ end }}
{{- else if has (kindOf $v) (list "int" "int8" "int16" "int32" "int64" "uint" "uint8" "uint16" "uint32" "uint64") }}
{{- $v }}
{{- else if kindIs "slice" $v }}
{{- $items := list }}
{{- range $v }}{{ if not (kindIs "invalid" .) }}{{ $items = append $items (include "prime-sigv4-proxy.toml.value" .) }}{{ end }}{{ end }}
{{- printf "[%s]" (join ", " $items) }}
{{- else if kindIs "map" $v }}
{{- $items := list }}
{{- range $k := keys $v | sortAlpha }}
{{- $e := index $v $k }}
{{- if not (kindIs "invalid" $e) }}
{{- $items = append $items (printf "%s = %s" (include "prime-sigv4-proxy.toml.key" $k) (include "prime-sigv4-proxy.toml.value" $e)) }}
{{- end }}
{{- end }}
{{- printf "{ %s }" (join ", " $items) }}
{{- else }}
{{- fail (printf "config: cannot render %v (%s) as TOML" $v (kindOf $v)) }}
{{- end }}
{{- end }}

{{/* Is this list non-empty and made of maps only (a TOML array of tables)? */}}
{{- define "prime-sigv4-proxy.toml.isTableArray" -}}
{{- if and (kindIs "slice" .) (gt (len .) 0) }}
{{- $maps := 0 }}
{{- range . }}{{ if kindIs "map" . }}{{ $maps = add1 $maps }}{{ end }}{{ end }}
{{- if eq $maps (len .) }}true{{ end }}
{{- end }}
{{- end }}

{{- define "prime-sigv4-proxy.toml.table" -}}
{{- $t := .table }}
{{- $path := .path }}
{{- $scalars := list }}
{{- $tables := list }}
{{- $arrays := list }}
{{- range $k := keys $t | sortAlpha }}
{{- $v := index $t $k }}
{{- if kindIs "invalid" $v }}
{{- else if kindIs "map" $v }}
{{- $tables = append $tables $k }}
{{- else if include "prime-sigv4-proxy.toml.isTableArray" $v }}
{{- $arrays = append $arrays $k }}
{{- else }}
{{- $scalars = append $scalars $k }}
{{- end }}
{{- end }}
{{- if or (and .header $scalars) (eq .header "[[") }}
{{- $names := list }}
{{- range $path }}{{ $names = append $names (include "prime-sigv4-proxy.toml.key" .) }}{{ end }}
{{- if eq .header "[[" }}
{{ printf "\n[[%s]]" (join "." $names) }}
{{- else }}
{{ printf "\n[%s]" (join "." $names) }}
{{- end }}
{{- end }}
{{- range $k := $scalars }}
{{ include "prime-sigv4-proxy.toml.key" $k }} = {{ include "prime-sigv4-proxy.toml.value" (index $t $k) }}
{{- end }}
{{- range $k := $tables }}
{{- include "prime-sigv4-proxy.toml.table" (dict "table" (index $t $k) "path" (append $path $k) "header" "[") }}
{{- end }}
{{- range $k := $arrays }}
{{- range $item := index $t $k }}
{{- include "prime-sigv4-proxy.toml.table" (dict "table" $item "path" (append $path $k) "header" "[[") }}
{{- end }}
{{- end }}
{{- end }}

{{/*
=====================================================================================
 Pod pieces shared by the standalone Deployment and the sidecar templates.
 Each takes the context of this chart (.Values = this chart's values).
=====================================================================================
*/}}

{{/* The proxy container (one item of a containers: or initContainers: list). */}}
{{- define "prime-sigv4-proxy.container" -}}
- name: prime-sigv4-proxy
  image: {{ include "prime-sigv4-proxy.image" . | quote }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  {{- if and (eq .Values.mode "sidecar") .Values.sidecar.nativeSidecar }}
  restartPolicy: Always
  {{- end }}
  args:
    - --config
    - {{ include "prime-sigv4-proxy.configArg" . }}
  env:
    # The image defaults these to 0.0.0.0 for `docker run`; environment variables override
    # config.toml, so set them to the same addresses as the rendered config.
    - name: PRIME_PROXY_LISTEN
      value: {{ include "prime-sigv4-proxy.listen" . | quote }}
    - name: PRIME_PROXY_ADMIN_LISTEN
      value: {{ include "prime-sigv4-proxy.adminListen" . | quote }}
    {{- with .Values.env }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with .Values.envFrom }}
  envFrom:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  ports:
    - name: {{ include "prime-sigv4-proxy.proxyPortName" . }}
      containerPort: {{ .Values.ports.proxy }}
      protocol: TCP
    - name: {{ include "prime-sigv4-proxy.adminPortName" . }}
      containerPort: {{ .Values.ports.admin }}
      protocol: TCP
  {{- range $kind := list "startupProbe" "livenessProbe" "readinessProbe" }}
  {{- with index $.Values $kind }}
  {{- $probe := deepCopy . }}
  {{- if and (hasKey $probe "httpGet") (not (hasKey $probe.httpGet "port")) }}
  {{- $_ := set $probe.httpGet "port" (include "prime-sigv4-proxy.adminPortName" $) }}
  {{- end }}
  {{ $kind }}:
    {{- toYaml $probe | nindent 4 }}
  {{- end }}
  {{- end }}
  {{- if gt (int .Values.lifecycle.preStopSleepSeconds) 0 }}
  lifecycle:
    preStop:
      sleep:
        seconds: {{ int .Values.lifecycle.preStopSleepSeconds }}
  {{- end }}
  {{- with .Values.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.securityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  volumeMounts:
    {{- if include "prime-sigv4-proxy.inPlaceReload" . }}
    # configReload inPlace: a directory mount (no subPath), so the kubelet's atomic swap of
    # the ..data symlink on a ConfigMap change reaches the pod and the proxy reloads the file.
    - name: prime-sigv4-proxy-config
      mountPath: {{ include "prime-sigv4-proxy.configReloadDir" . }}
      readOnly: true
    {{- else }}
    # configReload restart: the file alone; a config change rolls the pods (checksum annotation).
    - name: prime-sigv4-proxy-config
      mountPath: {{ include "prime-sigv4-proxy.configPath" . }}
      subPath: config.toml
      readOnly: true
    {{- end }}
    {{- if .Values.tls.enabled }}
    # A directory mount (no subPath): renewed certificates reach the pod and are reloaded.
    - name: prime-sigv4-proxy-tls
      mountPath: {{ include "prime-sigv4-proxy.tlsDir" . }}
      readOnly: true
    {{- if include "prime-sigv4-proxy.separateClientCa" . }}
    - name: prime-sigv4-proxy-client-ca
      mountPath: {{ include "prime-sigv4-proxy.clientCaDir" . }}
      readOnly: true
    {{- end }}
    {{- end }}
    {{- if .Values.sharedRateLimit.passwordSecret.name }}
    # The Redis password of the shared rate limit, read from a file (never an environment
    # variable, never in config.toml).
    - name: prime-sigv4-proxy-redis
      mountPath: {{ include "prime-sigv4-proxy.redisDir" . }}
      readOnly: true
    {{- end }}
    {{- with .Values.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end }}

{{/* The proxy's volumes (items of a volumes: list). */}}
{{- define "prime-sigv4-proxy.volumes" -}}
- name: prime-sigv4-proxy-config
  configMap:
    name: {{ include "prime-sigv4-proxy.configMapName" . }}
    items:
      - key: config.toml
        path: config.toml
{{- if .Values.tls.enabled }}
- name: prime-sigv4-proxy-tls
  secret:
    secretName: {{ .Values.tls.secretName }}
{{- if include "prime-sigv4-proxy.separateClientCa" . }}
- name: prime-sigv4-proxy-client-ca
  secret:
    secretName: {{ .Values.tls.clientCaSecretName }}
    items:
      - key: {{ .Values.tls.clientCaKey }}
        path: {{ .Values.tls.clientCaKey }}
{{- end }}
{{- end }}
{{- with .Values.sharedRateLimit.passwordSecret }}
{{- if .name }}
- name: prime-sigv4-proxy-redis
  secret:
    secretName: {{ .name }}
    items:
      - key: {{ .key }}
        path: {{ .key }}
{{- end }}
{{- end }}
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Pod annotations the proxy needs: the config checksum (configReload restart: a config
change rolls the pods; inPlace: none, the proxy reloads the file) and Prometheus scrape hints.
May be empty. */}}
{{- define "prime-sigv4-proxy.podAnnotations" -}}
{{- if not (include "prime-sigv4-proxy.inPlaceReload" .) }}
checksum/prime-sigv4-proxy-config: {{ include "prime-sigv4-proxy.configChecksum" . }}
{{- end }}
{{- if .Values.metrics.podAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .Values.ports.admin | toString | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end }}

{{/*
=====================================================================================
 Sidecar mode: public templates for an application chart that depends on this chart.

   # Chart.yaml of your application
   dependencies:
     - name: prime-sigv4-proxy
       version: 0.1.0
       repository: file://../prime-sigv4-proxy   # or your chart repository
   # values.yaml of your application
   prime-sigv4-proxy:
     mode: sidecar
     config: {...}
   # templates/deployment.yaml of your application
   spec:
     template:
       metadata:
         annotations:
           {{- include "prime-sigv4-proxy.sidecarPodAnnotations" . | nindent 8 }}
       spec:
         containers:
           - name: app
             ...
           {{- include "prime-sigv4-proxy.sidecar" . | nindent 10 }}
         volumes:
           {{- include "prime-sigv4-proxy.sidecarVolumes" . | nindent 10 }}

 Pass the application's root context (`.`): the templates find this chart's values and
 names through .Subcharts. With a dependency alias, pass the subchart's context instead:
   {{ include "prime-sigv4-proxy.sidecar" (index .Subcharts "my-alias") }}
 Called from this chart itself, the context is already the right one.
=====================================================================================
*/}}

{{/* Internal: the subchart context for a parent's root context (or the context itself). */}}
{{- define "prime-sigv4-proxy.sidecarContextName" -}}
{{- if and (hasKey . "Subcharts") .Subcharts (hasKey .Subcharts "prime-sigv4-proxy") -}}
parent
{{- else -}}
self
{{- end -}}
{{- end }}

{{- define "prime-sigv4-proxy.sidecar" -}}
{{- $ctx := . }}
{{- if eq (include "prime-sigv4-proxy.sidecarContextName" .) "parent" }}
{{- $ctx = index .Subcharts "prime-sigv4-proxy" }}
{{- end }}
{{- if ne $ctx.Values.mode "sidecar" }}
{{- fail "prime-sigv4-proxy.sidecar: set `prime-sigv4-proxy.mode: sidecar` in the application's values" }}
{{- end }}
{{- include "prime-sigv4-proxy.container" $ctx }}
{{- end }}

{{- define "prime-sigv4-proxy.sidecarVolumes" -}}
{{- $ctx := . }}
{{- if eq (include "prime-sigv4-proxy.sidecarContextName" .) "parent" }}
{{- $ctx = index .Subcharts "prime-sigv4-proxy" }}
{{- end }}
{{- include "prime-sigv4-proxy.volumes" $ctx }}
{{- end }}

{{- define "prime-sigv4-proxy.sidecarPodAnnotations" -}}
{{- $ctx := . }}
{{- if eq (include "prime-sigv4-proxy.sidecarContextName" .) "parent" }}
{{- $ctx = index .Subcharts "prime-sigv4-proxy" }}
{{- end }}
{{- include "prime-sigv4-proxy.podAnnotations" $ctx }}
{{- end }}

{{/*
=====================================================================================
 PrometheusRule pieces
=====================================================================================
*/}}

{{/* The label matchers that select this release's series (prometheusRule.selector). */}}
{{- define "prime-sigv4-proxy.rules.selector" -}}
{{- default (printf "namespace=%q" .Release.Namespace) .Values.prometheusRule.selector }}
{{- end }}

{{/* `by (...)` labels of the fleet-wide alerts, and of the per-replica ones. */}}
{{- define "prime-sigv4-proxy.rules.groupBy" -}}
{{- join ", " .Values.prometheusRule.groupBy }}
{{- end }}
{{- define "prime-sigv4-proxy.rules.podGroupBy" -}}
{{- join ", " (append (without .Values.prometheusRule.groupBy .Values.prometheusRule.podLabel) .Values.prometheusRule.podLabel) }}
{{- end }}

{{/* `{{ $labels.NAME }}` for an alert annotation (Prometheus' template, not Helm's). */}}
{{- define "prime-sigv4-proxy.rules.label" -}}
{{- printf "{{ $labels.%s }}" . }}
{{- end }}

{{/* `for`, and the labels of one alert: (dict "ctx" $ "alert" $alertValues). */}}
{{- define "prime-sigv4-proxy.rules.common" -}}
for: {{ .alert.for }}
labels:
  severity: {{ .alert.severity | quote }}
  {{- with .ctx.Values.prometheusRule.additionalLabels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}
