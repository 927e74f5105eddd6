"""The artifact bucket's rules, as the embedded stack creates it (staging's Terraform is checked against
the same rules in tests/test_deploy.py), and the multipart upload the worker streams its zip into."""

from __future__ import annotations

import hashlib
import random
import threading
import uuid
from contextlib import closing

import pytest
from botocore.exceptions import ClientError

from dlkit.settings import S3_MIN_PART_SIZE
from dlkit.storage import LIFECYCLE_RULES, MultipartUpload, s3_client


def test_the_embedded_bucket_expires_artifacts_and_aborts_incomplete_uploads(stack, settings):
    with closing(s3_client(settings)) as client:
        rules = client.get_bucket_lifecycle_configuration(Bucket=settings.S3_BUCKET_NAME)["Rules"]
    assert sorted(rules, key=lambda rule: rule["ID"]) == sorted(LIFECYCLE_RULES, key=lambda rule: rule["ID"])


def _stream(upload: MultipartUpload, data: bytes, chunk: int = 1 << 20) -> None:
    for offset in range(0, len(data), chunk):
        upload.write(data[offset : offset + chunk])


def _open_uploads(client, bucket: str, key: str) -> list:
    return [u for u in client.list_multipart_uploads(Bucket=bucket, Prefix=key).get("Uploads", []) if u["Key"] == key]


def test_a_multipart_upload_sends_parts_while_the_next_is_written(stack, settings):
    bucket, key = settings.S3_BUCKET_NAME, f"test/{uuid.uuid4()}.bin"
    data = random.Random(7).randbytes(3 * S3_MIN_PART_SIZE + 1000)  # 3 full parts and a short last one
    second_started = threading.Event()
    overlapped = []
    with closing(s3_client(settings)) as client:
        upload_part = client.upload_part

        def part_one_waits_for_part_two(**kwargs):
            if kwargs["PartNumber"] == 1:
                # Returns only once part 2 is under way: parts are in flight together, or this times out.
                overlapped.append(second_started.wait(timeout=30))
            elif kwargs["PartNumber"] == 2:
                second_started.set()
            return upload_part(**kwargs)

        client.upload_part = part_one_waits_for_part_two
        upload = MultipartUpload(client, bucket, key, S3_MIN_PART_SIZE, concurrency=2)
        _stream(upload, data)
        upload.complete()
        assert overlapped == [True]
        stored = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert stored == data and upload.size == len(data)
        assert upload.sha256.hexdigest() == hashlib.sha256(data).hexdigest()
        client.delete_object(Bucket=bucket, Key=key)


def test_a_failed_part_raises_and_abort_leaves_nothing(stack, settings):
    bucket, key = settings.S3_BUCKET_NAME, f"test/{uuid.uuid4()}.bin"
    data = random.Random(8).randbytes(3 * S3_MIN_PART_SIZE)
    with closing(s3_client(settings, max_attempts=1)) as client:
        upload_part = client.upload_part

        def part_two_refused(**kwargs):
            if kwargs["PartNumber"] == 2:
                raise ClientError({"Error": {"Code": "SlowDown", "Message": "refused"}}, "UploadPart")
            return upload_part(**kwargs)

        client.upload_part = part_two_refused
        upload = MultipartUpload(client, bucket, key, S3_MIN_PART_SIZE, concurrency=2)
        with pytest.raises(ClientError):
            _stream(upload, data)
            upload.complete()
        assert _open_uploads(client, bucket, key)  # parts were stored: something to abort
        upload.abort()
        upload.abort()  # twice is harmless
        assert _open_uploads(client, bucket, key) == []
        with pytest.raises(ClientError):
            client.head_object(Bucket=bucket, Key=key)
