terraform {
  # Provider-defined attribute syntax of the helm provider 3.x (kubernetes = { ... })
  # and optional() object attributes need Terraform 1.3 or later.
  required_version = ">= 1.3.0"

  required_providers {
    helm = {
      source  = "hashicorp/helm"
      version = "~> 3.0"
    }
    kubernetes = {
      source  = "hashicorp/kubernetes"
      version = "~> 3.0"
    }
  }
}
