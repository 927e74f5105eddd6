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

  # Keep the state remote and locked; it holds the Redis URL. Fill in and `terraform init`:
  # backend "s3" {
  #   bucket       = "my-terraform-state"
  #   key          = "dlkit/staging.tfstate"
  #   region       = "eu-west-1"
  #   use_lockfile = true
  # }
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
