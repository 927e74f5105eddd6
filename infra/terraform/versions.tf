terraform {
  # The release this environment is checked with (terraform fmt in the test suite).
  required_version = ">= 1.11, < 2.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 6.0"
    }
    cloudflare = {
      source  = "cloudflare/cloudflare"
      version = "~> 5.11"
    }
    random = {
      source  = "hashicorp/random"
      version = "~> 3.7"
    }
  }

  # Remote and locked: the state holds the Redis URL and the API keys. Its settings are in
  # backend.hcl (from backend.hcl.example): `terraform init -backend-config=backend.hcl`.
  backend "s3" {}
}

provider "aws" {
  region = var.region

  default_tags {
    tags = {
      Project     = "dlkit"
      Environment = var.environment
    }
  }
}

# Reads CLOUDFLARE_API_TOKEN from the environment (Zone: DNS edit, Zone Settings edit, Cache Rules edit).
provider "cloudflare" {}
