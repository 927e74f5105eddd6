output "url" {
  description = "Public URL of the API, through Cloudflare and the ALB: the entry for clients, Locust and `dlkit demo --entry`."
  value       = "https://${var.hostname}"
}

output "api_keys" {
  description = "API key of each name in api_clients (send `Authorization: Bearer <key>`)."
  value       = { for client in var.api_clients : client => random_password.api_key[client].result }
  sensitive   = true
}

output "api_keys_secret_arn" {
  description = "Secrets Manager secret holding API_KEYS, as the API tasks read it."
  value       = aws_secretsmanager_secret.api_keys.arn
}

output "ecr_repositories" {
  description = "ECR repository URL per image of infra/Dockerfile: push `dlkit` (default target) and `dlkit-nginx` (--target nginx) here."
  value       = { for name, repo in aws_ecr_repository.this : name => repo.repository_url }
}

output "alb_dns_name" {
  description = "DNS name of the ALB (Cloudflare's origin)."
  value       = module.alb.dns_name
}

output "artifact_bucket" {
  description = "S3 bucket holding the download artifacts."
  value       = aws_s3_bucket.artifacts.bucket
}

output "ecs_cluster" {
  description = "ECS cluster running the api and worker services."
  value       = aws_ecs_cluster.this.name
}

output "log_groups" {
  description = "CloudWatch log groups: the containers (nginx JSON access log, API, workers, queue-depth task) and the VPC flow logs."
  value = {
    containers = aws_cloudwatch_log_group.app.name
    flow_logs  = module.vpc.vpc_flow_log_cloudwatch_log_group_name
  }
}

output "dashboards" {
  description = "Where to watch staging in the AWS console: Container Insights for the ECS services, the CloudWatch alarms of this environment, and the container logs."
  value = {
    container_insights = "https://${var.region}.console.aws.amazon.com/cloudwatch/home?region=${var.region}#container-insights:infrastructure/ECS:Cluster?~(query~(controls~(CW*3a*3aECS.cluster~(~'${aws_ecs_cluster.this.name})))~context~())"
    alarms             = "https://${var.region}.console.aws.amazon.com/cloudwatch/home?region=${var.region}#alarmsV2:?~(search~'${local.name})"
    logs               = "https://${var.region}.console.aws.amazon.com/cloudwatch/home?region=${var.region}#logsV2:log-groups/log-group/${replace(aws_cloudwatch_log_group.app.name, "/", "$252F")}"
  }
}

output "redis_primary_endpoint" {
  description = "Primary endpoint of the ElastiCache replication group (TLS, auth token in Secrets Manager)."
  value       = aws_elasticache_replication_group.redis.primary_endpoint_address
}

output "redis_url_secret_arn" {
  description = "Secrets Manager secret holding REDIS_URL, auth token included."
  value       = aws_secretsmanager_secret.redis_url.arn
}
