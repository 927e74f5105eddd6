# An ALB in front of nginx (port 8080) in an existing VPC. Credentials and region come from the
# usual AWS environment (AWS_PROFILE, AWS_REGION, ...):
#
#   terraform init && terraform apply -var vpc_id=... -var 'subnet_ids=["subnet-a","subnet-b"]' \
#     -var certificate_arn=arn:aws:acm:...

terraform {
  required_version = ">= 1.5"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.0, < 7.0"
    }
  }
}

provider "aws" {}

variable "vpc_id" {
  type        = string
  description = "VPC the nginx targets run in."
}

variable "subnet_ids" {
  type        = list(string)
  description = "Public subnets in at least two Availability Zones."
}

variable "certificate_arn" {
  type        = string
  description = "ACM certificate for the HTTPS listener."
}

data "aws_vpc" "this" {
  id = var.vpc_id
}

resource "aws_security_group" "alb" {
  name_prefix = "dlkit-alb-"
  description = "dlkit ALB: HTTP and HTTPS in, nginx out"
  vpc_id      = var.vpc_id
}

resource "aws_vpc_security_group_ingress_rule" "https" {
  description       = "HTTPS from clients"
  security_group_id = aws_security_group.alb.id
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}

resource "aws_vpc_security_group_ingress_rule" "http" {
  #checkov:skip=CKV_AWS_260: port 80 only answers a redirect to HTTPS (the module's HTTP listener)
  description       = "HTTP from clients, redirected to HTTPS"
  security_group_id = aws_security_group.alb.id
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = 80
  to_port           = 80
}

resource "aws_vpc_security_group_egress_rule" "nginx" {
  description       = "To nginx targets in the VPC"
  security_group_id = aws_security_group.alb.id
  cidr_ipv4         = data.aws_vpc.this.cidr_block
  ip_protocol       = "tcp"
  from_port         = 8080
  to_port           = 8080
}

module "alb" {
  source = "../.."

  vpc_id             = var.vpc_id
  subnet_ids         = var.subnet_ids
  security_group_ids = [aws_security_group.alb.id]
  certificate_arn    = var.certificate_arn
  # The default, written out. nginx keeps idle connections 75 s, longer than this, so the ALB
  # (never nginx) closes them; raising it past 75 needs nginx's keepalive_timeout raised first.
  idle_timeout        = 60
  deletion_protection = false # an example you can destroy
}

output "dns_name" {
  description = "Point DNS (or Cloudflare's origin) here."
  value       = module.alb.dns_name
}

output "target_group_arn" {
  description = "Register the nginx hosts or tasks here."
  value       = module.alb.target_group_arn
}
