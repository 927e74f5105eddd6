# dlkit staging: Cloudflare -> ALB -> ECS Fargate (nginx + gunicorn in each API task) -> ElastiCache
# and S3, with RQ workers as a second ECS service scaled on queue depth. The proxy layers come from
# the kit's own modules (proxy/alb, proxy/cloudflare), with the timeouts `dlkit audit` checks.

locals {
  name = "dlkit-${var.environment}"
  azs  = slice(data.aws_availability_zones.available.names, 0, 2)
}

data "aws_availability_zones" "available" {
  #checkov:skip=CKV_AWS_394: the first two zones are taken by name (slice below); staging accepts a re-plan if AWS ever reorders them
  state = "available"
}

# Two AZs, public subnets for the ALB and the NAT gateway, private ones for the tasks and Redis.
# One NAT gateway, not one per AZ: staging accepts losing egress with its AZ to save ~$35/month.
module "vpc" {
  #checkov:skip=CKV_TF_1: a registry module pinned to an exact release; registry versions are immutable
  source  = "terraform-aws-modules/vpc/aws"
  version = "6.5.0"

  name = local.name
  cidr = var.vpc_cidr
  azs  = local.azs

  public_subnets  = [for i in range(2) : cidrsubnet(var.vpc_cidr, 8, i)]
  private_subnets = [for i in range(2) : cidrsubnet(var.vpc_cidr, 8, i + 10)]

  enable_nat_gateway = true
  single_nat_gateway = true

  enable_flow_log                                 = true
  create_flow_log_cloudwatch_log_group            = true
  create_flow_log_cloudwatch_iam_role             = true
  flow_log_cloudwatch_log_group_retention_in_days = var.log_retention_days
}

# The ALB only answers Cloudflare: a request that skips the edge would skip its cache rules and
# its 524, and the chain `dlkit audit` checks would not be the one clients meet.
data "cloudflare_ip_ranges" "this" {}

resource "aws_security_group" "alb" {
  name_prefix = "${local.name}-alb-"
  description = "dlkit ALB: HTTPS and HTTP from Cloudflare, nginx in the API tasks"
  vpc_id      = module.vpc.vpc_id

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "alb_from_cloudflare" {
  for_each = toset(flatten([for port in [80, 443] : [for cidr in data.cloudflare_ip_ranges.this.ipv4_cidrs : "${port} ${cidr}"]]))

  security_group_id = aws_security_group.alb.id
  description       = "Cloudflare edge, port ${split(" ", each.value)[0]}"
  cidr_ipv4         = split(" ", each.value)[1]
  ip_protocol       = "tcp"
  from_port         = tonumber(split(" ", each.value)[0])
  to_port           = tonumber(split(" ", each.value)[0])
}

resource "aws_vpc_security_group_egress_rule" "alb_to_nginx" {
  security_group_id            = aws_security_group.alb.id
  description                  = "nginx in the API tasks"
  referenced_security_group_id = aws_security_group.api.id
  ip_protocol                  = "tcp"
  from_port                    = 8080
  to_port                      = 8080
}

module "alb" {
  source = "../../proxy/alb"

  name               = local.name
  vpc_id             = module.vpc.vpc_id
  subnet_ids         = module.vpc.public_subnets
  security_group_ids = [aws_security_group.alb.id]
  certificate_arn    = var.certificate_arn
  # Fargate tasks in awsvpc mode register by IP.
  target_type = "ip"
  # idle_timeout is left to the module's default (60 s, proxy/alb/variables.tf), which is what
  # `dlkit audit` checks against nginx's keepalive_timeout (75 s). If you override it here, the
  # audit reports the override with this file's line.
  deletion_protection = true
}

# AWS WAF in front of the ALB as a second line behind Cloudflare: AWS's common rule set and known
# bad inputs, counted per rule in CloudWatch.
resource "aws_wafv2_web_acl" "alb" {
  #checkov:skip=CKV2_AWS_31: staging keeps per-rule metrics and sampled requests (visibility_config); full WAF logs are billed per GB
  name  = local.name
  scope = "REGIONAL"

  default_action {
    allow {}
  }

  rule {
    name     = "aws-common"
    priority = 1

    override_action {
      none {}
    }

    statement {
      managed_rule_group_statement {
        vendor_name = "AWS"
        name        = "AWSManagedRulesCommonRuleSet"

        # Its 8 KB body limit would block a valid initiate (up to 1000 file ids, about 10 KB);
        # nginx caps bodies at 64k already (client_max_body_size).
        rule_action_override {
          name = "SizeRestrictions_BODY"
          action_to_use {
            count {}
          }
        }
      }
    }

    visibility_config {
      cloudwatch_metrics_enabled = true
      metric_name                = "${local.name}-aws-common"
      sampled_requests_enabled   = true
    }
  }

  rule {
    name     = "aws-known-bad-inputs"
    priority = 2

    override_action {
      none {}
    }

    statement {
      managed_rule_group_statement {
        vendor_name = "AWS"
        name        = "AWSManagedRulesKnownBadInputsRuleSet"
      }
    }

    visibility_config {
      cloudwatch_metrics_enabled = true
      metric_name                = "${local.name}-aws-known-bad-inputs"
      sampled_requests_enabled   = true
    }
  }

  visibility_config {
    cloudwatch_metrics_enabled = true
    metric_name                = local.name
    sampled_requests_enabled   = true
  }
}

resource "aws_wafv2_web_acl_association" "alb" {
  resource_arn = module.alb.lb_arn
  web_acl_arn  = aws_wafv2_web_acl.alb.arn
}

# Cloudflare: no caching of the API, and the proxied name pointing at the ALB. Only an Enterprise
# zone can change its Proxy Read Timeout: other plans keep Cloudflare's default (100 s, documented
# as 125 s lately), and `dlkit audit` checks the chain against both.
module "cloudflare" {
  source = "../../proxy/cloudflare"

  zone_id    = var.cloudflare_zone_id
  enterprise = var.cloudflare_enterprise
}

resource "cloudflare_dns_record" "api" {
  zone_id = var.cloudflare_zone_id
  name    = var.hostname
  type    = "CNAME"
  content = module.alb.dns_name
  proxied = true
  ttl     = 1 # automatic: required for a proxied record
}
