output "url" {
  description = "Public URL of the API, through Cloudflare and the ALB."
  value       = "https://${var.hostname}"
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

output "redis_primary_endpoint" {
  description = "Primary endpoint of the ElastiCache replication group (TLS, auth token in Secrets Manager)."
  value       = aws_elasticache_replication_group.redis.primary_endpoint_address
}

output "redis_url_secret_arn" {
  description = "Secrets Manager secret holding REDIS_URL, auth token included."
  value       = aws_secretsmanager_secret.redis_url.arn
}
