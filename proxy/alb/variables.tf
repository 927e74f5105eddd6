variable "name" {
  type        = string
  description = "Name of the load balancer and prefix of its target group (at most 32 characters for the load balancer)."
  default     = "dlkit"
}

variable "vpc_id" {
  type        = string
  description = "ID of the VPC the nginx targets run in."
}

variable "subnet_ids" {
  type        = list(string)
  description = "Subnets for the load balancer, in at least two Availability Zones (public subnets for an internet-facing one)."
}

variable "security_group_ids" {
  type        = list(string)
  description = "Security groups of the load balancer: allow 80 and 443 in, and the target port out to nginx."
}

variable "internal" {
  type        = bool
  description = "Whether the load balancer is internal (for example behind a CDN that reaches it privately) rather than internet-facing."
  default     = false
}

variable "certificate_arn" {
  type        = string
  description = "ARN of the ACM certificate the HTTPS listener presents."
}

variable "ssl_policy" {
  type        = string
  description = "Security policy of the HTTPS listener (TLS 1.3 and 1.2 only by default)."
  default     = "ELBSecurityPolicy-TLS13-1-2-2021-06"
}

variable "target_port" {
  type        = number
  description = "Port nginx listens on in each target (proxy/nginx/dlkit.conf.template)."
  default     = 8080
}

variable "target_type" {
  type        = string
  description = "How targets register: \"instance\" for EC2 instances, \"ip\" for ECS tasks in awsvpc mode."
  default     = "instance"
}

variable "idle_timeout" {
  type        = number
  description = "Seconds a client or target connection may stay without data before the ALB closes it; a request whose target is silent this long gets 504. The target (nginx keepalive_timeout 75s) must keep idle connections open longer than this, or the ALB reuses a connection nginx is closing and answers 502."
  default     = 60

  validation {
    condition     = var.idle_timeout >= 1 && var.idle_timeout <= 4000 && floor(var.idle_timeout) == var.idle_timeout
    error_message = "idle_timeout must be a whole number of seconds from 1 to 4000."
  }
}

variable "deregistration_delay" {
  type        = number
  description = "Seconds a deregistering target keeps serving its in-flight requests; matches gunicorn's graceful_timeout (30 s), since API calls answer in milliseconds and long work runs in jobs."
  default     = 30
}

variable "deletion_protection" {
  type        = bool
  description = "Whether AWS refuses to delete the load balancer until this is turned off."
  default     = true
}

variable "access_logs_bucket" {
  type        = string
  description = "S3 bucket for access logs (its policy must let Elastic Load Balancing write); null disables access logs."
  default     = null
}

variable "access_logs_prefix" {
  type        = string
  description = "Key prefix of the access logs in access_logs_bucket."
  default     = "dlkit-alb"
}

variable "tags" {
  type        = map(string)
  description = "Tags for every resource of the module."
  default     = {}
}
