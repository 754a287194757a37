{{/* Common names and labels. */}}
{{- define "tessera.fullname" -}}
{{- if contains "tessera" .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-tessera" .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "tessera.labels" -}}
app.kubernetes.io/name: tessera
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "tessera.selector" -}}
app.kubernetes.io/name: tessera
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tessera.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "tessera.operatorServiceAccount" -}}
{{- default (printf "%s-operator" (include "tessera.fullname" .)) .Values.serviceAccount.operatorName -}}
{{- end -}}

{{- define "tessera.chunkserverServiceAccount" -}}
{{- default (printf "%s-chunkserver" (include "tessera.fullname" .)) .Values.serviceAccount.chunkserverName -}}
{{- end -}}

{{- define "tessera.csiServiceAccount" -}}
{{- default (printf "%s-csi" (include "tessera.fullname" .)) .Values.serviceAccount.csiName -}}
{{- end -}}

{{- define "tessera.masterAddress" -}}
{{- printf "%s-master.%s.svc:7300" (include "tessera.fullname" .) .Release.Namespace -}}
{{- end -}}
