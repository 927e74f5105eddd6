# Where the two images of infra/Dockerfile live: `dlkit` (API and workers) and `dlkit-nginx` (the
# production nginx config). Create these first, push, then pass the pushed digests as app_image and
# nginx_image (README.md, "Plan and apply"). Tags are immutable, so a digest always means one build.
resource "aws_ecr_repository" "this" {
  for_each = toset(["dlkit", "dlkit-nginx"])

  name                 = "${local.name}/${each.key}"
  image_tag_mutability = "IMMUTABLE"
  force_delete         = true # staging: `terraform destroy` removes pushed images too

  image_scanning_configuration {
    scan_on_push = true
  }

  # KMS with the AWS-managed key (aws/ecr).
  encryption_configuration {
    encryption_type = "KMS"
  }
}

# Keep the last 20 images of each repository: enough to roll back, without paying for every push.
resource "aws_ecr_lifecycle_policy" "this" {
  for_each = aws_ecr_repository.this

  repository = each.value.name
  policy = jsonencode({
    rules = [{
      rulePriority = 1
      description  = "keep the last 20 images"
      selection    = { tagStatus = "any", countType = "imageCountMoreThan", countNumber = 20 }
      action       = { type = "expire" }
    }]
  })
}
