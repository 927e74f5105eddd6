# Redis protocol: ElastiCache for Valkey, a primary and a replica in two AZs with automatic
# failover; TLS in transit, encrypted at rest, an auth token. The tasks get the whole REDIS_URL
# (rediss://, token included) from Secrets Manager.

resource "random_password" "redis_auth" {
  length = 64
  # ElastiCache refuses @, " and / in a token; letters and digits also need no escaping in a URL.
  special = false
}

resource "aws_elasticache_subnet_group" "redis" {
  name       = local.name
  subnet_ids = module.vpc.private_subnets
}

resource "aws_security_group" "redis" {
  name_prefix = "${local.name}-redis-"
  description = "dlkit Redis: 6379 from the API and worker tasks"
  vpc_id      = module.vpc.vpc_id

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_ingress_rule" "redis_from_tasks" {
  for_each = { api = aws_security_group.api.id, worker = aws_security_group.worker.id }

  security_group_id            = aws_security_group.redis.id
  description                  = "Redis from the ${each.key} tasks"
  referenced_security_group_id = each.value
  ip_protocol                  = "tcp"
  from_port                    = 6379
  to_port                      = 6379
}

resource "aws_elasticache_replication_group" "redis" {
  #checkov:skip=CKV_AWS_191: encrypted at rest with the AWS-managed key; a customer key adds cost and key policy without changing who can read it in staging
  replication_group_id = local.name
  description          = "dlkit jobs, queue and rate limits"
  engine               = "valkey"
  engine_version       = "8.0"
  node_type            = var.redis_node_type
  port                 = 6379

  num_cache_clusters         = 2
  automatic_failover_enabled = true
  multi_az_enabled           = true

  subnet_group_name  = aws_elasticache_subnet_group.redis.name
  security_group_ids = [aws_security_group.redis.id]

  at_rest_encryption_enabled = true
  transit_encryption_enabled = true
  auth_token                 = random_password.redis_auth.result
  # AWS provider v6 wants the strategy with every token. ROTATE keeps the old token valid next to
  # a new one, so running tasks stay connected until they restart with the new REDIS_URL.
  auth_token_update_strategy = "ROTATE"

  # Job records live a day (JOB_TTL_S); a daily snapshot is enough to survive losing both nodes.
  snapshot_retention_limit = 1
  apply_immediately        = true
}

resource "aws_secretsmanager_secret" "redis_url" {
  #checkov:skip=CKV_AWS_149: encrypted with the AWS-managed key; the execution role reads it, nothing else
  #checkov:skip=CKV2_AWS_57: the token is rotated by changing random_password and applying (rotation needs the replication group's token updated in step)
  name_prefix = "${local.name}-redis-url-"
  description = "REDIS_URL of dlkit ${var.environment}, with the ElastiCache auth token"
}

resource "aws_secretsmanager_secret_version" "redis_url" {
  secret_id     = aws_secretsmanager_secret.redis_url.id
  secret_string = "rediss://:${random_password.redis_auth.result}@${aws_elasticache_replication_group.redis.primary_endpoint_address}:6379/0"
}

# API keys: staging is public, so every caller needs one (app/auth.py); without API_KEYS every
# visitor would be the one anonymous tenant and could list and fetch every artifact. One random
# key per name in api_clients, in Secrets Manager as API_KEYS ("key:name,key:name"); read them
# with `terraform output -json api_keys`.
resource "random_password" "api_key" {
  for_each = toset(var.api_clients)

  length  = 40
  special = false
}

resource "aws_secretsmanager_secret" "api_keys" {
  #checkov:skip=CKV_AWS_149: encrypted with the AWS-managed key; the execution role reads it, nothing else
  #checkov:skip=CKV2_AWS_57: keys are rotated by tainting random_password.api_key and applying; clients must get the new key anyway
  name_prefix = "${local.name}-api-keys-"
  description = "API_KEYS of dlkit ${var.environment}: key:user pairs the API accepts as Bearer tokens"
}

resource "aws_secretsmanager_secret_version" "api_keys" {
  secret_id     = aws_secretsmanager_secret.api_keys.id
  secret_string = join(",", [for client in var.api_clients : "${random_password.api_key[client].result}:${client}"])
}

# Artifacts: zip files written by the workers under downloads/, read by clients through
# presigned URLs the API signs.
resource "aws_s3_bucket" "artifacts" {
  #checkov:skip=CKV_AWS_21: no versioning: an artifact is regenerated from its job, written once, and expires after a day; old versions would only outlive that expiry
  #checkov:skip=CKV_AWS_144: no cross-region replication: artifacts are short-lived and can be rebuilt
  #checkov:skip=CKV_AWS_145: SSE-S3 rather than KMS: presigned GETs of KMS objects also need kms:Decrypt for the signer and cost a KMS call per download
  #checkov:skip=CKV_AWS_18: no server access logs for staging; CloudTrail data events can be turned on where needed
  #checkov:skip=CKV2_AWS_62: nothing consumes object events; the job record already says when an artifact is ready
  bucket_prefix = "${local.name}-artifacts-"
  force_destroy = true # staging: `terraform destroy` removes leftovers
}

resource "aws_s3_bucket_public_access_block" "artifacts" {
  bucket                  = aws_s3_bucket.artifacts.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "artifacts" {
  bucket = aws_s3_bucket.artifacts.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "artifacts" {
  bucket = aws_s3_bucket.artifacts.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "AES256"
    }
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "artifacts" {
  bucket = aws_s3_bucket.artifacts.id

  # Job records expire after JOB_TTL_S (1 day); their artifacts go with them.
  rule {
    id     = "expire-downloads"
    status = "Enabled"
    filter {
      prefix = "downloads/"
    }
    expiration {
      days = 1
    }
  }

  # A worker that dies mid-upload leaves parts that are billed until aborted.
  rule {
    id     = "abort-incomplete-uploads"
    status = "Enabled"
    filter {}
    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }
  }
}

# Only TLS: presigned URLs are https, and so must every other request be.
resource "aws_s3_bucket_policy" "artifacts" {
  bucket = aws_s3_bucket.artifacts.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Sid       = "DenyInsecureTransport"
      Effect    = "Deny"
      Principal = "*"
      Action    = "s3:*"
      Resource  = [aws_s3_bucket.artifacts.arn, "${aws_s3_bucket.artifacts.arn}/*"]
      Condition = { Bool = { "aws:SecureTransport" = "false" } }
    }]
  })
  depends_on = [aws_s3_bucket_public_access_block.artifacts]
}
