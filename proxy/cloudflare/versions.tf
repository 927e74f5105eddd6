terraform {
  required_version = ">= 1.5"

  required_providers {
    cloudflare = {
      source = "cloudflare/cloudflare"
      # v5 is a rewrite: `rules` is a list attribute and zone settings are one resource each.
      version = "~> 5.11"
    }
  }
}
