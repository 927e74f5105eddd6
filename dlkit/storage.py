"""S3 access shared by the API (presign, health) and the workers (artifact upload).

Works with any S3-compatible store: SeaweedFS in the embedded stack and in compose, MinIO, AWS S3.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from .settings import Settings


def s3_client(settings: Settings, *, public: bool = False, max_attempts: int | None = None):
    """A client for the internal endpoint, or (public=True) for the one clients can reach.

    Presigned URLs embed their host in the signature, so they must be signed for the public
    endpoint. boto3's "standard" retry mode gives backoff with jitter on throttling and
    connection errors; the timeouts keep a dead store from hanging a request or a job.
    """
    endpoint = (settings.S3_PUBLIC_ENDPOINT or settings.S3_ENDPOINT) if public else settings.S3_ENDPOINT
    config = Config(
        region_name=settings.S3_REGION,
        signature_version="s3v4",
        s3={"addressing_style": "path" if settings.S3_FORCE_PATH_STYLE else "auto"},
        retries={"mode": "standard", "max_attempts": max_attempts or settings.S3_MAX_ATTEMPTS},
        connect_timeout=2,
        read_timeout=15,
    )
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=settings.S3_ACCESS_KEY_ID,
        aws_secret_access_key=settings.S3_SECRET_ACCESS_KEY,
        config=config,
    )


ARTIFACT_PREFIX = "downloads/"

# Artifacts live as long as their job records (JOB_TTL_S, a day by default), and the parts of a
# multipart upload that a dead worker left behind are aborted after a day. The same rules as the
# staging bucket's (infra/terraform/storage.tf; tests/test_deploy.py checks they agree); the embedded
# stack and compose apply them through ensure_bucket.
LIFECYCLE_RULES = [
    {"ID": "expire-downloads", "Status": "Enabled", "Filter": {"Prefix": ARTIFACT_PREFIX}, "Expiration": {"Days": 1}},
    {
        "ID": "abort-incomplete-uploads",
        "Status": "Enabled",
        "Filter": {"Prefix": ""},
        "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
    },
]


def artifact_key(job_id: str) -> str:
    return f"{ARTIFACT_PREFIX}{job_id}.zip"


def abort_incomplete_uploads(client, bucket: str, key: str) -> int:
    """Abort every multipart upload still open for `key` (the parts a lost worker left); return how many."""
    aborted = 0
    paginator = client.get_paginator("list_multipart_uploads")
    for page in paginator.paginate(Bucket=bucket, Prefix=key):
        for upload in page.get("Uploads", []):
            if upload["Key"] == key:
                client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload["UploadId"])
                aborted += 1
    return aborted


def presign_download(client, bucket: str, key: str, ttl_s: int, filename: str) -> str:
    return client.generate_presigned_url(
        "get_object",
        Params={
            "Bucket": bucket,
            "Key": key,
            "ResponseContentDisposition": f'attachment; filename="{filename}"',
        },
        ExpiresIn=ttl_s,
    )


class PresignedUrls:
    """Presigned download URLs, reused while comfortably valid.

    A URL is signed for `ttl_s` and handed out again until less than half of its life remains, so
    polling a completed job does not sign on every poll, and every URL handed out is still valid for
    at least ttl_s / 2. Per process (no Redis command), thread-safe, at most `max_urls` kept.
    """

    def __init__(self, client, max_urls: int = 10_000, clock: Callable[[], float] = time.time):
        self.client = client
        self.max_urls = max_urls
        self.clock = clock
        self._urls: dict[tuple, tuple[str, float]] = {}  # (bucket, key, ttl, filename) -> (url, expires at)
        self._lock = threading.Lock()

    def get(self, bucket: str, key: str, ttl_s: int, filename: str) -> str:
        entry = (bucket, key, ttl_s, filename)
        now = self.clock()
        with self._lock:
            cached = self._urls.get(entry)
        if cached is not None and cached[1] - now > ttl_s / 2:
            return cached[0]
        url = presign_download(self.client, bucket, key, ttl_s, filename)
        with self._lock:
            if len(self._urls) >= self.max_urls:
                # Oldest first (dicts keep insertion order): drop the older half.
                for old in list(self._urls)[: self.max_urls // 2]:
                    del self._urls[old]
            self._urls.pop(entry, None)
            self._urls[entry] = (url, int(now) + ttl_s)  # SigV4 counts from the signing second
        return url


class MultipartUpload:
    """A write-only file object that streams into one S3 object.

    Bytes are buffered until a part is full, then sent as one part of a multipart upload on a small
    pool of threads, so the next part is generated and zipped while the previous ones upload. At most
    `concurrency` parts are in flight: a write that fills a part past that waits for the oldest, so
    memory stays at `concurrency` + 1 parts whatever the artifact's size. An artifact smaller than one
    part is sent with a single PUT at close. A part that failed raises at the next write or at
    complete(). `abort()` waits for the parts in flight, then discards every uploaded part: nothing is
    left in the bucket. zipfile writes into it directly (it only needs write() and tell()).
    """

    def __init__(
        self, client, bucket: str, key: str, part_size: int, content_type: str = "application/zip", concurrency: int = 1
    ):
        self.client = client
        self.bucket = bucket
        self.key = key
        self.part_size = part_size
        self.content_type = content_type
        self.concurrency = max(1, concurrency)
        self.upload_id: str | None = None
        self.parts: list[dict] = []
        self.size = 0
        self.sha256 = hashlib.sha256()
        self._buffer = bytearray()
        self._closed = False
        self._pool: ThreadPoolExecutor | None = None
        self._in_flight: deque[Future] = deque()

    # file-object protocol used by zipfile
    def write(self, data: bytes) -> int:
        self._buffer += data
        self.size += len(data)
        self.sha256.update(data)
        while len(self._buffer) >= self.part_size:
            chunk = bytes(self._buffer[: self.part_size])
            del self._buffer[: self.part_size]
            self._send_part(chunk)
        return len(data)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        pass

    def _send_part(self, chunk: bytes) -> None:
        if self.upload_id is None:
            created = self.client.create_multipart_upload(
                Bucket=self.bucket, Key=self.key, ContentType=self.content_type
            )
            self.upload_id = created["UploadId"]
            self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="s3-part")
        while len(self._in_flight) >= self.concurrency:
            self.parts.append(self._in_flight.popleft().result())  # memory bound; a failed part raises here
        number = len(self.parts) + len(self._in_flight) + 1
        self._in_flight.append(self._pool.submit(self._upload_part, number, chunk))

    def _upload_part(self, number: int, chunk: bytes) -> dict:
        part = self.client.upload_part(
            Bucket=self.bucket, Key=self.key, UploadId=self.upload_id, PartNumber=number, Body=chunk
        )
        return {"PartNumber": number, "ETag": part["ETag"]}

    def _wait(self) -> None:
        """Every part in flight stored (its entry in `parts`); the first failure raised, after all ended."""
        failure = None
        while self._in_flight:
            try:
                self.parts.append(self._in_flight.popleft().result())
            except Exception as error:  # re-raised below, once the others have ended
                failure = failure or error
        if failure is not None:
            raise failure

    def complete(self) -> None:
        """Store the object; after this it is visible in the bucket."""
        if self.upload_id is None:
            self.client.put_object(
                Bucket=self.bucket, Key=self.key, Body=bytes(self._buffer), ContentType=self.content_type
            )
        else:
            if self._buffer:
                self._send_part(bytes(self._buffer))
            self._wait()
            self._shutdown()
            self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=self.key,
                UploadId=self.upload_id,
                MultipartUpload={"Parts": sorted(self.parts, key=lambda part: part["PartNumber"])},
            )
        self._buffer.clear()
        self._closed = True

    def abort(self) -> None:
        """Drop whatever was uploaded so far. Safe to call more than once."""
        self._buffer.clear()
        for future in self._in_flight:
            future.cancel()  # not started yet: never sent
        try:
            self._wait()
        except Exception:  # a part that failed is discarded with the rest
            pass
        self._shutdown()
        if self.upload_id is not None and not self._closed:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id)
        self._closed = True

    def _shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


HEALTH_KEY = ".dlkit-health"


def probe_write(client, bucket: str) -> None:
    """Store a 2-byte object: proof the store accepts data. A full SeaweedFS still answers HEAD
    bucket, and even an empty PUT, but refuses the first byte (InternalError, in milliseconds); so
    does a store that is read-only, over quota or without the bucket. One request, as cheap as the
    HEAD it replaces: every probe overwrites the same key, so nothing accumulates. Raises botocore errors."""
    client.put_object(Bucket=bucket, Key=HEALTH_KEY, Body=b"ok")


def ensure_bucket(env: Mapping[str, str], attempts: int = 3, round_trip: bool = False) -> None:
    """Create the bucket named in `env` (the S3_* settings), with LIFECYCLE_RULES, unless it exists;
    with `round_trip`, also write, read back and delete a tiny object to prove the store accepts data.
    Raises botocore errors."""
    client = s3_client(Settings.from_env(env), max_attempts=attempts)
    bucket = env["S3_BUCKET_NAME"]
    # Closed explicitly: this runs in readiness loops, and each client holds a connection pool.
    with closing(client):
        try:
            client.head_bucket(Bucket=bucket)
        except ClientError as error:
            if error.response["Error"]["Code"] not in ("404", "NoSuchBucket", "NotFound"):
                raise
            try:
                client.create_bucket(Bucket=bucket)
            except ClientError as race:
                if race.response["Error"]["Code"] != "BucketAlreadyOwnedByYou":
                    raise
            # Created here, so ours to configure (an existing bucket keeps its owner's rules).
            client.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": LIFECYCLE_RULES})
        if round_trip:
            key = ".dlkit-ready"
            client.put_object(Bucket=bucket, Key=key, Body=b"ok")
            client.get_object(Bucket=bucket, Key=key)["Body"].read()
            client.delete_object(Bucket=bucket, Key=key)
