resource "aws_ecs_cluster" "this" {
  name = local.name

  setting {
    name  = "containerInsights"
    value = "enabled"
  }
}

resource "aws_cloudwatch_log_group" "app" {
  #checkov:skip=CKV_AWS_158: logs carry request ids and timings, no secrets; the AWS-managed key is enough for staging
  #checkov:skip=CKV_AWS_338: a staging environment keeps logs for log_retention_days (30), not a year
  name              = "/ecs/${local.name}"
  retention_in_days = var.log_retention_days
}

locals {
  # Settings the API and the workers share (dlkit/settings.py). No timeout is set here: the app,
  # gunicorn and nginx use the values in their files, which `dlkit audit` checks. S3 credentials
  # come from the task role; REDIS_URL (with the auth token) from Secrets Manager, and for the API
  # API_KEYS too: staging is public, so no caller is anonymous.
  app_environment = [
    { name = "S3_REGION", value = var.region },
    { name = "S3_BUCKET_NAME", value = aws_s3_bucket.artifacts.bucket },
  ]
  app_secrets = [
    { name = "REDIS_URL", valueFrom = aws_secretsmanager_secret.redis_url.arn },
  ]

  log_configuration = {
    logDriver = "awslogs"
    options = {
      awslogs-group         = aws_cloudwatch_log_group.app.name
      awslogs-region        = var.region
      awslogs-stream-prefix = "dlkit"
    }
  }

  # ECS ignores the image's HEALTHCHECK: the task definition carries its own. Plain Python, as in
  # the image (no curl there).
  python_get = "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=4)"
}

# API task: nginx (the ALB's target, port 8080) in front of gunicorn on localhost:8000, the same
# two hops as in every other deployment of the kit.
resource "aws_ecs_task_definition" "api" {
  family                   = "${local.name}-api"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = 512
  memory                   = 1024
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.api.arn

  # Fargate task storage for /tmp (prometheus-client's multiprocess files, gunicorn's heartbeat
  # files), so the app's root filesystem can be read-only.
  volume {
    name = "tmp"
  }

  container_definitions = jsonencode([
    {
      name         = "nginx"
      image        = var.nginx_image
      essential    = true
      portMappings = [{ containerPort = 8080, protocol = "tcp" }]
      environment = [
        { name = "DLKIT_UPSTREAM", value = "127.0.0.1:8000" },
        # The ALB's addresses (the VPC): nginx takes the client address from the CF-Connecting-IP
        # header only from them. The ALB answers only Cloudflare (main.tf), which sets the header.
        { name = "DLKIT_TRUSTED_PROXIES", value = var.vpc_cidr },
      ]
      dependsOn        = [{ containerName = "api", condition = "HEALTHY" }]
      logConfiguration = local.log_configuration
    },
    {
      name         = "api"
      image        = var.app_image
      essential    = true
      portMappings = [{ containerPort = 8000, protocol = "tcp" }]
      environment  = local.app_environment
      secrets      = concat(local.app_secrets, [{ name = "API_KEYS", valueFrom = aws_secretsmanager_secret.api_keys.arn }])

      readonlyRootFilesystem = true
      mountPoints            = [{ sourceVolume = "tmp", containerPath = "/tmp" }]
      healthCheck = {
        command     = ["CMD", "python", "-c", local.python_get, "http://127.0.0.1:8000/health"]
        interval    = 15
        timeout     = 5
        retries     = 3
        startPeriod = 20
      }
      logConfiguration = local.log_configuration
    },
  ])
}

resource "aws_ecs_service" "api" {
  name            = "api"
  cluster         = aws_ecs_cluster.this.id
  task_definition = aws_ecs_task_definition.api.arn
  desired_count   = var.api_count
  launch_type     = "FARGATE"

  network_configuration {
    subnets          = module.vpc.private_subnets
    security_groups  = [aws_security_group.api.id]
    assign_public_ip = false
  }

  load_balancer {
    target_group_arn = module.alb.target_group_arn
    container_name   = "nginx"
    container_port   = 8080
  }
  # The ALB's first health checks wait for nginx, gunicorn and their own start periods.
  health_check_grace_period_seconds = 60

  # ECS refuses a target group that no listener uses yet: on the first apply the service must
  # wait for the ALB's listeners, which only the module knows.
  depends_on = [module.alb]

  # A failed rollout goes back to the last version that passed its health checks.
  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }
}

# Worker task: the same image, `python -m worker`. Its /metrics on 9110 doubles as its health check.
resource "aws_ecs_task_definition" "worker" {
  family                   = "${local.name}-worker"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = 256
  memory                   = 512
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.worker.arn

  volume {
    name = "tmp"
  }

  container_definitions = jsonencode([
    {
      name        = "worker"
      image       = var.app_image
      essential   = true
      command     = ["python", "-m", "worker"]
      environment = concat(local.app_environment, [{ name = "WORKER_METRICS_PORT", value = "9110" }])
      secrets     = local.app_secrets
      # RQ stops warmly on SIGTERM, finishing the job in hand; 120 s is Fargate's maximum. A job
      # cut anyway is failed by the app's heartbeat watchdog, not left "processing".
      stopTimeout = 120

      readonlyRootFilesystem = true
      mountPoints            = [{ sourceVolume = "tmp", containerPath = "/tmp" }]
      healthCheck = {
        command     = ["CMD", "python", "-c", local.python_get, "http://127.0.0.1:9110/metrics"]
        interval    = 15
        timeout     = 5
        retries     = 3
        startPeriod = 15
      }
      logConfiguration = local.log_configuration
    },
  ])
}

resource "aws_ecs_service" "worker" {
  name            = "worker"
  cluster         = aws_ecs_cluster.this.id
  task_definition = aws_ecs_task_definition.worker.arn
  desired_count   = var.worker_min_count
  launch_type     = "FARGATE"

  network_configuration {
    subnets          = module.vpc.private_subnets
    security_groups  = [aws_security_group.worker.id]
    assign_public_ip = false
  }

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  # The autoscaler owns the count after creation.
  lifecycle {
    ignore_changes = [desired_count]
  }
}

resource "aws_security_group" "api" {
  name_prefix = "${local.name}-api-"
  description = "dlkit API tasks: nginx from the ALB"
  vpc_id      = module.vpc.vpc_id

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "api_from_alb" {
  security_group_id            = aws_security_group.api.id
  description                  = "ALB to nginx"
  referenced_security_group_id = aws_security_group.alb.id
  ip_protocol                  = "tcp"
  from_port                    = 8080
  to_port                      = 8080
}

resource "aws_security_group" "worker" {
  name_prefix = "${local.name}-worker-"
  description = "dlkit workers and the queue-depth task: outbound only"
  vpc_id      = module.vpc.vpc_id

  lifecycle {
    create_before_destroy = true
  }
}

# Tasks reach Redis in the VPC, and S3, ECR, CloudWatch and Secrets Manager over HTTPS through
# the NAT gateway.
resource "aws_vpc_security_group_egress_rule" "tasks_https" {
  for_each = { api = aws_security_group.api.id, worker = aws_security_group.worker.id }

  security_group_id = each.value
  description       = "HTTPS to AWS APIs (S3, ECR, CloudWatch, Secrets Manager)"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}

resource "aws_vpc_security_group_egress_rule" "tasks_redis" {
  for_each = { api = aws_security_group.api.id, worker = aws_security_group.worker.id }

  security_group_id            = each.value
  description                  = "Redis (ElastiCache, TLS)"
  referenced_security_group_id = aws_security_group.redis.id
  ip_protocol                  = "tcp"
  from_port                    = 6379
  to_port                      = 6379
}

# Worker autoscaling on queue depth. CloudWatch cannot read Redis, so a small scheduled task
# (the same image, every minute) reads the queued jobs and publishes them as dlkit/QueueDepth,
# with the reader behind the API's dlkit_jobs{status="queued"} (dlkit/queue_state.py): one number.
# The scaling alarms cannot tell a stopped publisher from a quiet queue, so queue_depth_missing alarms on it.
locals {
  queue_depth_script = <<-PY
    import boto3
    from redis import Redis
    from dlkit import queue_state
    from dlkit.settings import Settings
    s = Settings.from_env()
    depth = queue_state.read(Redis.from_url(s.REDIS_URL), s.QUEUE_NAME).queued
    boto3.client("cloudwatch").put_metric_data(Namespace="dlkit", MetricData=[{
        "MetricName": "QueueDepth", "Value": depth, "Unit": "Count",
        "Dimensions": [{"Name": "Environment", "Value": "${var.environment}"}]}])
  PY
}

resource "aws_ecs_task_definition" "queue_depth" {
  family                   = "${local.name}-queue-depth"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = 256
  memory                   = 512
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.queue_depth.arn

  container_definitions = jsonencode([
    {
      name             = "queue-depth"
      image            = var.app_image
      essential        = true
      command          = ["python", "-c", local.queue_depth_script]
      environment      = local.app_environment
      secrets          = local.app_secrets
      logConfiguration = local.log_configuration
    },
  ])
}

resource "aws_scheduler_schedule" "queue_depth" {
  #checkov:skip=CKV_AWS_297: the schedule holds no secret (a task definition ARN and subnets); the AWS-owned key is enough
  name                = "${local.name}-queue-depth"
  schedule_expression = "rate(1 minute)"

  flexible_time_window {
    mode = "OFF"
  }

  target {
    arn      = aws_ecs_cluster.this.arn
    role_arn = aws_iam_role.scheduler.arn

    ecs_parameters {
      task_definition_arn = aws_ecs_task_definition.queue_depth.arn
      launch_type         = "FARGATE"

      network_configuration {
        subnets          = module.vpc.private_subnets
        security_groups  = [aws_security_group.worker.id]
        assign_public_ip = false
      }
    }
  }
}

resource "aws_appautoscaling_target" "worker" {
  service_namespace  = "ecs"
  resource_id        = "service/${aws_ecs_cluster.this.name}/${aws_ecs_service.worker.name}"
  scalable_dimension = "ecs:service:DesiredCount"
  min_capacity       = var.worker_min_count
  max_capacity       = var.worker_max_count
}

# Step scaling: plain to read, and the queue is not a per-task metric that target tracking expects.
resource "aws_appautoscaling_policy" "worker_out" {
  name               = "${local.name}-worker-out"
  service_namespace  = aws_appautoscaling_target.worker.service_namespace
  resource_id        = aws_appautoscaling_target.worker.resource_id
  scalable_dimension = aws_appautoscaling_target.worker.scalable_dimension
  policy_type        = "StepScaling"

  step_scaling_policy_configuration {
    adjustment_type         = "ChangeInCapacity"
    cooldown                = 120
    metric_aggregation_type = "Maximum"

    # Bounds are relative to the alarm threshold (queue_depth_scale_out).
    step_adjustment {
      metric_interval_lower_bound = 0
      metric_interval_upper_bound = 10
      scaling_adjustment          = 1
    }
    step_adjustment {
      metric_interval_lower_bound = 10
      scaling_adjustment          = 3
    }
  }
}

resource "aws_appautoscaling_policy" "worker_in" {
  name               = "${local.name}-worker-in"
  service_namespace  = aws_appautoscaling_target.worker.service_namespace
  resource_id        = aws_appautoscaling_target.worker.resource_id
  scalable_dimension = aws_appautoscaling_target.worker.scalable_dimension
  policy_type        = "StepScaling"

  step_scaling_policy_configuration {
    adjustment_type         = "ChangeInCapacity"
    cooldown                = 300
    metric_aggregation_type = "Maximum"

    step_adjustment {
      metric_interval_upper_bound = 0
      scaling_adjustment          = -1
    }
  }
}

resource "aws_cloudwatch_metric_alarm" "queue_deep" {
  alarm_name          = "${local.name}-queue-deep"
  alarm_description   = "Jobs are waiting: add workers."
  namespace           = "dlkit"
  metric_name         = "QueueDepth"
  dimensions          = { Environment = var.environment }
  statistic           = "Maximum"
  period              = 60
  evaluation_periods  = 2
  comparison_operator = "GreaterThanOrEqualToThreshold"
  threshold           = var.queue_depth_scale_out
  treat_missing_data  = "missing"
  alarm_actions       = [aws_appautoscaling_policy.worker_out.arn]
}

resource "aws_cloudwatch_metric_alarm" "queue_empty" {
  alarm_name          = "${local.name}-queue-empty"
  alarm_description   = "No job has waited for 10 minutes: remove a worker (down to worker_min_count)."
  namespace           = "dlkit"
  metric_name         = "QueueDepth"
  dimensions          = { Environment = var.environment }
  statistic           = "Maximum"
  period              = 60
  evaluation_periods  = 10
  comparison_operator = "LessThanOrEqualToThreshold"
  threshold           = 0
  treat_missing_data  = "missing"
  alarm_actions       = [aws_appautoscaling_policy.worker_in.arn]
}

# The publisher stopped (the schedule, its role or the task failing): without this the scaling
# alarms sit in INSUFFICIENT_DATA and the worker count silently freezes. Missing is breaching here.
resource "aws_cloudwatch_metric_alarm" "queue_depth_missing" {
  alarm_name          = "${local.name}-queue-depth-missing"
  alarm_description   = "No dlkit/QueueDepth datapoint for 5 minutes: the queue-depth task is not running, so worker autoscaling is blind. Check the ${aws_scheduler_schedule.queue_depth.name} schedule and the task's logs."
  namespace           = "dlkit"
  metric_name         = "QueueDepth"
  dimensions          = { Environment = var.environment }
  statistic           = "SampleCount"
  period              = 60
  evaluation_periods  = 5
  comparison_operator = "LessThanThreshold"
  threshold           = 1
  treat_missing_data  = "breaching"
  alarm_actions       = var.alarm_topic_arn == null ? [] : [var.alarm_topic_arn]
  ok_actions          = var.alarm_topic_arn == null ? [] : [var.alarm_topic_arn]
}
