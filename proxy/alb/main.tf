resource "aws_lb" "this" {
  #checkov:skip=CKV2_AWS_28: a reusable module; the WAF association belongs to the deployment (infra/terraform adds one)
  #checkov:skip=CKV_AWS_150: deletion protection is var.deletion_protection (default true); the example turns it off to be destroyable
  name               = var.name
  load_balancer_type = "application"
  internal           = var.internal
  subnets            = var.subnet_ids
  security_groups    = var.security_group_ids

  # Reset only by data. The legacy synchronous route sends nothing until its work is done, so a
  # download longer than this gets 504 from the ALB; the async API never comes close.
  idle_timeout = var.idle_timeout

  # Refuse request smuggling: malformed headers are dropped, ambiguous requests are rejected.
  drop_invalid_header_fields = true
  desync_mitigation_mode     = "defensive"

  enable_deletion_protection = var.deletion_protection

  dynamic "access_logs" {
    for_each = var.access_logs_bucket == null ? [] : [var.access_logs_bucket]
    content {
      bucket  = access_logs.value
      prefix  = var.access_logs_prefix
      enabled = true
    }
  }

  tags = var.tags
}

resource "aws_lb_target_group" "nginx" {
  name_prefix = substr(var.name, 0, 6)
  vpc_id      = var.vpc_id
  port        = var.target_port
  protocol    = "HTTP"
  target_type = var.target_type

  deregistration_delay = var.deregistration_delay

  health_check {
    # /health checks Redis and storage through nginx and the API, so a target is taken out when
    # any hop on its path is broken.
    path                = "/health"
    matcher             = "200"
    interval            = 15
    timeout             = 5
    healthy_threshold   = 2
    unhealthy_threshold = 3
  }

  tags = var.tags

  # A port or protocol change replaces the group; the listener must move to the new one first.
  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_lb_listener" "https" {
  load_balancer_arn = aws_lb.this.arn
  port              = 443
  protocol          = "HTTPS"
  ssl_policy        = var.ssl_policy
  certificate_arn   = var.certificate_arn

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.nginx.arn
  }

  tags = var.tags
}

resource "aws_lb_listener" "http" {
  load_balancer_arn = aws_lb.this.arn
  port              = 80
  protocol          = "HTTP"

  default_action {
    type = "redirect"

    redirect {
      port        = "443"
      protocol    = "HTTPS"
      status_code = "HTTP_301"
    }
  }

  tags = var.tags
}
