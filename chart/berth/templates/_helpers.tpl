{{/*
The chart name (app.kubernetes.io/name).
*/}}
{{- define "berth.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
helm.sh/chart label value.
*/}}
{{- define "berth.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The image reference. images.vmrunner (the original chart's key) wins when set; otherwise
image.repository with image.digest (if set) or image.tag (default: the chart's appVersion).
*/}}
{{- define "berth.image" -}}
{{- $legacy := "" -}}
{{- with .Values.images }}{{ $legacy = .vmrunner | default "" }}{{ end -}}
{{- if $legacy -}}
{{- $legacy -}}
{{- else if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion | toString) -}}
{{- end -}}
{{- end -}}

{{/*
The image tag shown in app.kubernetes.io/version.
*/}}
{{- define "berth.version" -}}
{{- .Values.image.tag | default .Chart.AppVersion | toString | replace "@" "_" | replace ":" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Selector labels of one VM. Argument: dict "root" $ "vm" NAME. Immutable in a StatefulSet.
*/}}
{{- define "berth.selectorLabels" -}}
app.kubernetes.io/name: {{ include "berth.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
berth/vm: {{ .vm }}
{{- end -}}

{{/*
All labels of one VM's objects. Argument: dict "root" $ "vm" NAME.
*/}}
{{- define "berth.labels" -}}
{{ include "berth.selectorLabels" . }}
app.kubernetes.io/version: {{ include "berth.version" .root | quote }}
app.kubernetes.io/component: vm
app.kubernetes.io/part-of: berth
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ include "berth.chart" .root }}
{{- end -}}

{{/*
The ports map of a VM (netconfig.ports), or an empty dict.
*/}}
{{- define "berth.ports" -}}
{{- $net := .netconfig | default dict -}}
{{- toYaml ($net.ports | default dict) -}}
{{- end -}}

{{/*
Whether a VM gets the optional Service: netconfig.service.enabled, else service.enabled.
Argument: dict "root" $ "cfg" VM. Prints "true" or "".
*/}}
{{- define "berth.serviceEnabled" -}}
{{- $net := .cfg.netconfig | default dict -}}
{{- $svc := $net.service | default dict -}}
{{- if hasKey $svc "enabled" -}}
{{- if $svc.enabled }}true{{ end -}}
{{- else if .root.Values.service.enabled -}}
true
{{- end -}}
{{- end -}}

{{/*
The capabilities berth needs: NET_ADMIN always (bridge, tap, nftables, forwarding over
netlink); NET_RAW for the DHCP responder's AF_PACKET socket, unless netconfig.no_dhcp.
Argument: a VM. Prints a YAML list.
*/}}
{{- define "berth.capabilities" -}}
{{- $net := .vm.netconfig | default dict -}}
- NET_ADMIN
{{- if not $net.no_dhcp }}
- NET_RAW
{{- end }}
{{- if ne (int (.root.Values.sandbox | default dict).uid) 0 }}
- CHOWN
- SETGID
- SETUID
{{- end }}
{{- end -}}

{{/*
The name of the Secret with the VNC password: vnc.existingSecret, else "<release>-berth-vnc".
*/}}
{{- define "berth.vncSecretName" -}}
{{- .Values.vnc.existingSecret | default (printf "%s-berth-vnc" .Release.Name | trunc 63 | trimSuffix "-") -}}
{{- end -}}

{{/*
Whether some enabled VM serves the VNC console (netconfig.no_vnc unset). Prints "true" or "".
*/}}
{{- define "berth.anyVnc" -}}
{{- range $name, $vm := .Values.vmlist -}}
{{- if and $vm $vm.enabled -}}
{{- $net := $vm.netconfig | default dict -}}
{{- if not $net.no_vnc }}true{{ end -}}
{{- end -}}
{{- end -}}
{{- end -}}
