variable "region" {
  type        = string
  description = "AWS region of the staging environment."
  default     = "eu-west-1"
}

variable "environment" {
  type        = string
  description = "Name of the environment, used in resource names and tags."
  default     = "staging"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,15}$", var.environment))
    error_message = "environment must be 2-16 lowercase letters, digits or hyphens, starting with a letter (it goes into resource names with length limits)."
  }
}

variable "vpc_cidr" {
  type        = string
  description = "CIDR block of the VPC; split into two public and two private subnets."
  default     = "10.40.0.0/16"

  validation {
    condition     = can(cidrnetmask(var.vpc_cidr))
    error_message = "vpc_cidr must be an IPv4 CIDR block such as 10.40.0.0/16."
  }
}

variable "hostname" {
  type        = string
  description = "Public name of the API in the Cloudflare zone, e.g. dlkit-staging.example.com; proxied by Cloudflare to the ALB."
}

variable "cloudflare_zone_id" {
  type        = string
  description = "ID of the Cloudflare zone that holds hostname."
}

variable "cloudflare_enterprise" {
  type        = bool
  description = "Whether the Cloudflare zone is on an Enterprise plan, the only plan that can change the Proxy Read Timeout. Otherwise the zone keeps Cloudflare's default (100 s; documented as 125 s lately)."
  default     = false
}

variable "api_clients" {
  type        = list(string)
  description = "Names of the API's callers: each gets a random API key (terraform output -json api_keys), stored with the others as API_KEYS in Secrets Manager. Staging is public, so there is no anonymous access."
  default     = ["staging"]

  validation {
    condition     = length(var.api_clients) > 0 && alltrue([for c in var.api_clients : can(regex("^[A-Za-z0-9_.-]+$", c))])
    error_message = "api_clients needs at least one name of letters, digits, '.', '_' or '-' (no ':' or ',': they separate API_KEYS)."
  }
}

variable "certificate_arn" {
  type        = string
  description = "ARN of an ACM certificate in region valid for hostname: Cloudflare connects to the ALB over HTTPS (SSL mode Full (strict))."
}

variable "app_image" {
  type        = string
  description = "The dlkit image (infra/Dockerfile, default target) for the API and the workers, by digest: <account>.dkr.ecr.<region>.amazonaws.com/dlkit@sha256:..."
}

variable "nginx_image" {
  type        = string
  description = "The nginx image with the production config (infra/Dockerfile, --target nginx), by digest."
}

variable "api_count" {
  type        = number
  description = "Number of API tasks (nginx + gunicorn); at least two, one per Availability Zone."
  default     = 2
}

variable "worker_min_count" {
  type        = number
  description = "Fewest worker tasks the autoscaler keeps running."
  default     = 1
}

variable "worker_max_count" {
  type        = number
  description = "Most worker tasks the autoscaler starts when the queue is deep."
  default     = 6
}

variable "queue_depth_scale_out" {
  type        = number
  description = "Queued jobs at or above which a worker is added (each worker runs one job at a time)."
  default     = 3
}

variable "redis_node_type" {
  type        = string
  description = "ElastiCache node type of the primary and the replica."
  default     = "cache.t4g.micro"
}

variable "log_retention_days" {
  type        = number
  description = "Days CloudWatch keeps the containers' logs."
  default     = 30
}

variable "alarm_topic_arn" {
  type        = string
  description = "SNS topic that receives the CloudWatch alarms; null keeps the alarms without notifications."
  default     = null
}
