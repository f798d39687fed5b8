# Installs the phasegate operator: its namespace (kubernetes provider) and the chart
# (helm provider). The chart's crds/ folder installs the TradingStrategy CRD on the first
# install; Helm never upgrades CRDs, so apply crds/ again after an upgrade that changes
# the API (see README.md).

provider "kubernetes" {
  config_path    = pathexpand(var.kubeconfig_path)
  config_context = var.kube_context
}

provider "helm" {
  kubernetes = {
    config_path    = pathexpand(var.kubeconfig_path)
    config_context = var.kube_context
  }
}

locals {
  chart_path = coalesce(var.chart_path, "${path.module}/../charts/phasegate")

  # The operator pod meets the "restricted" Pod Security Standard (non-root, read-only
  # root filesystem, no capabilities, RuntimeDefault seccomp): enforce it.
  pod_security_labels = {
    "pod-security.kubernetes.io/enforce" = "restricted"
    "pod-security.kubernetes.io/audit"   = "restricted"
    "pod-security.kubernetes.io/warn"    = "restricted"
  }

  chart_values = {
    image = {
      repository = var.image_repository
      tag        = var.image_tag
    }
    watchNamespace = var.watch_namespace
    logLevel       = var.log_level
    serviceMonitor = {
      enabled = var.service_monitor_enabled
    }
    alertmanager = {
      tokenSecret = {
        name = var.alertmanager_token_secret == null ? "" : var.alertmanager_token_secret.name
        key  = var.alertmanager_token_secret == null ? "token" : var.alertmanager_token_secret.key
      }
    }
  }
}

resource "kubernetes_namespace_v1" "operator" {
  metadata {
    name = var.namespace
    labels = merge(local.pod_security_labels, {
      "app.kubernetes.io/part-of" = "phasegate"
    })
  }
}

resource "kubernetes_namespace_v1" "watch" {
  count = var.create_watch_namespace && var.watch_namespace != "" && var.watch_namespace != var.namespace ? 1 : 0

  metadata {
    name = var.watch_namespace
    labels = {
      "app.kubernetes.io/part-of" = "phasegate"
    }
  }
}

resource "helm_release" "phasegate" {
  name      = var.release_name
  chart     = local.chart_path
  namespace = kubernetes_namespace_v1.operator.metadata[0].name

  # The namespace is managed above, not by Helm.
  create_namespace = false
  # Roll back a failed install or upgrade, and wait for the operator to be ready.
  atomic  = true
  wait    = true
  timeout = 300

  values = [
    yamlencode(local.chart_values),
    yamlencode(var.extra_values),
  ]

  depends_on = [kubernetes_namespace_v1.watch]
}
