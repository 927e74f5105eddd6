# Least privilege: each task role holds exactly the calls its code makes (dlkit/storage.py,
# app/routes/service.py), on the artifact prefix only.

data "aws_iam_policy_document" "ecs_tasks_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }
  }
}

# Execution role: what ECS itself needs to start a task (pull the image, write logs, read REDIS_URL
# and API_KEYS).
resource "aws_iam_role" "execution" {
  name_prefix        = "${local.name}-exec-"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
}

resource "aws_iam_role_policy_attachment" "execution" {
  role       = aws_iam_role.execution.name
  policy_arn = "arn:aws:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"
}

data "aws_iam_policy_document" "execution_secrets" {
  statement {
    actions   = ["secretsmanager:GetSecretValue"]
    resources = [aws_secretsmanager_secret.redis_url.arn, aws_secretsmanager_secret.api_keys.arn]
  }
}

resource "aws_iam_role_policy" "execution_secrets" {
  role   = aws_iam_role.execution.id
  policy = data.aws_iam_policy_document.execution_secrets.json
}

# API: presigns GETs of artifacts (a presigned URL carries the signer's rights, so GetObject is
# what the client gets), HEADs the bucket for its storage metric (HeadBucket is authorised by
# ListBucket), and overwrites one 2-byte object, .dlkit-health, for /health (a full store still
# answers HEAD: dlkit/storage.py probe_write).
resource "aws_iam_role" "api" {
  name_prefix        = "${local.name}-api-"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
}

data "aws_iam_policy_document" "api" {
  statement {
    sid       = "ReadArtifacts"
    actions   = ["s3:GetObject"]
    resources = ["${aws_s3_bucket.artifacts.arn}/downloads/*"]
  }
  statement {
    sid     = "HealthCheck"
    actions = ["s3:ListBucket"]
    # HeadBucket has no action of its own and no prefix to condition on, so this also lets the
    # API list keys. Narrower would be a health check that reads one known object instead.
    resources = [aws_s3_bucket.artifacts.arn]
  }
  statement {
    sid       = "HealthWrite"
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.artifacts.arn}/.dlkit-health"]
  }
}

resource "aws_iam_role_policy" "api" {
  role   = aws_iam_role.api.id
  policy = data.aws_iam_policy_document.api.json
}

# Workers: stream artifacts in (PutObject covers CreateMultipartUpload, UploadPart and
# CompleteMultipartUpload), abort a cancelled upload, and delete an artifact whose job was
# cancelled while its last part was stored (worker/tasks.py).
resource "aws_iam_role" "worker" {
  name_prefix        = "${local.name}-worker-"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
}

data "aws_iam_policy_document" "worker" {
  statement {
    sid       = "WriteArtifacts"
    actions   = ["s3:PutObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts", "s3:DeleteObject"]
    resources = ["${aws_s3_bucket.artifacts.arn}/downloads/*"]
  }
}

resource "aws_iam_role_policy" "worker" {
  role   = aws_iam_role.worker.id
  policy = data.aws_iam_policy_document.worker.json
}

# Queue-depth task: publishes one metric, in its own namespace.
resource "aws_iam_role" "queue_depth" {
  name_prefix        = "${local.name}-qdepth-"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
}

data "aws_iam_policy_document" "queue_depth" {
  statement {
    actions   = ["cloudwatch:PutMetricData"]
    resources = ["*"] # PutMetricData has no resource type; the condition scopes it
    condition {
      test     = "StringEquals"
      variable = "cloudwatch:namespace"
      values   = ["dlkit"]
    }
  }
}

resource "aws_iam_role_policy" "queue_depth" {
  role   = aws_iam_role.queue_depth.id
  policy = data.aws_iam_policy_document.queue_depth.json
}

# EventBridge Scheduler starts the queue-depth task and hands it its two roles.
data "aws_iam_policy_document" "scheduler_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["scheduler.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "scheduler" {
  name_prefix        = "${local.name}-sched-"
  assume_role_policy = data.aws_iam_policy_document.scheduler_assume.json
}

data "aws_iam_policy_document" "scheduler" {
  statement {
    actions = ["ecs:RunTask"]
    # IAM matches RunTask on a task definition ARN with its revision: `family:*` lets every
    # revision run (the schedule always starts the latest), a bare family ARN matches none.
    resources = ["${aws_ecs_task_definition.queue_depth.arn_without_revision}:*"]
    condition {
      test     = "ArnEquals"
      variable = "ecs:cluster"
      values   = [aws_ecs_cluster.this.arn]
    }
  }
  statement {
    actions   = ["iam:PassRole"]
    resources = [aws_iam_role.execution.arn, aws_iam_role.queue_depth.arn]
  }
}

resource "aws_iam_role_policy" "scheduler" {
  role   = aws_iam_role.scheduler.id
  policy = data.aws_iam_policy_document.scheduler.json
}
