"""The artifact bucket's rules, as the embedded stack creates it (staging's Terraform is checked against
the same rules in tests/test_deploy.py)."""

from __future__ import annotations

from contextlib import closing

from dlkit.storage import LIFECYCLE_RULES, s3_client


def test_the_embedded_bucket_expires_artifacts_and_aborts_incomplete_uploads(stack, settings):
    with closing(s3_client(settings)) as client:
        rules = client.get_bucket_lifecycle_configuration(Bucket=settings.S3_BUCKET_NAME)["Rules"]
    assert sorted(rules, key=lambda rule: rule["ID"]) == sorted(LIFECYCLE_RULES, key=lambda rule: rule["ID"])
