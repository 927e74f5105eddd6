# Cloudflare in front of the dlkit API: no caching of /v1/* and /health, and the zone's
# Proxy Read Timeout written out. Run with CLOUDFLARE_API_TOKEN set (Zone Settings Write and
# Zone Rulesets Write on the zone):
#
#   terraform init && terraform apply -var zone_id=<zone id>

terraform {
  required_version = ">= 1.5"

  required_providers {
    cloudflare = {
      source  = "cloudflare/cloudflare"
      version = "~> 5.11"
    }
  }
}

# The provider reads CLOUDFLARE_API_TOKEN from the environment.
provider "cloudflare" {}

variable "zone_id" {
  type        = string
  description = "ID of the Cloudflare zone to configure."
}

variable "enterprise" {
  type        = bool
  description = "Whether the zone is on an Enterprise plan (the only plan that can change the Proxy Read Timeout)."
  default     = false
}

module "cloudflare" {
  source = "../.."

  zone_id = var.zone_id
  # Only an Enterprise zone can change the Proxy Read Timeout; others keep Cloudflare's default
  # (100 s, documented as 125 s lately), which is what the module assumes with enterprise = false.
  enterprise         = var.enterprise
  proxy_read_timeout = 100
}

output "proxy_read_timeout" {
  description = "Seconds of origin silence after which Cloudflare answers 524."
  value       = module.cloudflare.proxy_read_timeout
}
