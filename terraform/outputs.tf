output "namespace" {
  description = "Namespace the operator runs in."
  value       = kubernetes_namespace_v1.operator.metadata[0].name
}

output "release_name" {
  description = "Name of the Helm release."
  value       = helm_release.phasegate.name
}

output "release_status" {
  description = "Status of the Helm release (deployed, failed...)."
  value       = helm_release.phasegate.status
}

output "chart_version" {
  description = "Version of the installed chart."
  value       = helm_release.phasegate.version
}

output "watch_namespace" {
  description = "Namespace whose TradingStrategies the operator manages; empty means all."
  value       = var.watch_namespace
}
