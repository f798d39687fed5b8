variable "kubeconfig_path" {
  description = "Path to the kubeconfig of the target cluster."
  type        = string
  default     = "~/.kube/config"
}

variable "kube_context" {
  description = "Context of the kubeconfig to use. Null: the kubeconfig's current context."
  type        = string
  default     = null
}

variable "namespace" {
  description = "Namespace the operator runs in (created by this module)."
  type        = string
  default     = "phasegate-system"

  validation {
    condition     = can(regex("^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", var.namespace)) && length(var.namespace) <= 63
    error_message = "namespace must be a DNS label: lower case letters, digits and '-', at most 63 characters."
  }
}

variable "release_name" {
  description = "Name of the Helm release."
  type        = string
  default     = "phasegate"
}

variable "chart_path" {
  description = "Path to the phasegate chart. Null: charts/phasegate of this repository."
  type        = string
  default     = null
}

variable "image_repository" {
  description = "Repository of the operator image (built from the repository's Dockerfile)."
  type        = string
  default     = "phasegate"
}

variable "image_tag" {
  description = "Tag of the operator image. Empty: the chart's appVersion."
  type        = string
  default     = ""
}

variable "watch_namespace" {
  description = "Manage TradingStrategies in this namespace only (namespaced Role instead of a ClusterRole). Empty: all namespaces."
  type        = string
  default     = ""

  validation {
    condition     = var.watch_namespace == "" || can(regex("^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", var.watch_namespace))
    error_message = "watch_namespace must be empty or a DNS label."
  }
}

variable "create_watch_namespace" {
  description = "Create watch_namespace too, when it is set and differs from namespace."
  type        = bool
  default     = false
}

variable "log_level" {
  description = "Log level of the operator: info, or debug (the operator's --verbose)."
  type        = string
  default     = "info"

  validation {
    condition     = contains(["debug", "info"], var.log_level)
    error_message = "log_level must be info or debug."
  }
}

variable "service_monitor_enabled" {
  description = "Create a ServiceMonitor for the operator's metrics (needs the Prometheus Operator's CRDs)."
  type        = bool
  default     = false
}

variable "alertmanager_token_secret" {
  description = "Secret (name and key, in namespace) holding the bearer token Alertmanager's webhook presents to the operator. Passed by reference only: its value never passes through Terraform. Null: none."
  type = object({
    name = string
    key  = optional(string, "token")
  })
  default = null
}

variable "extra_values" {
  description = "Further chart values (see charts/phasegate/values.yaml), merged over the ones this module sets."
  type        = any
  default     = {}
}
