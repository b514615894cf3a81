"""The S3 test server (moto, ``DLHUB_TEST_S3_URL``): a boto3 client for it and a fresh bucket per test."""

from __future__ import annotations

import uuid
from typing import Any

S3_REGION = "us-east-1"
S3_ACCESS_KEY_ID = "dlhub-test"
S3_SECRET_ACCESS_KEY = "dlhub-test-secret"


def s3_client(url: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3",
        endpoint_url=url,
        region_name=S3_REGION,
        aws_access_key_id=S3_ACCESS_KEY_ID,
        aws_secret_access_key=S3_SECRET_ACCESS_KEY,
        config=Config(s3={"addressing_style": "path"}),
    )


def new_bucket(client: Any) -> str:
    bucket = f"dlhub-test-{uuid.uuid4().hex[:16]}"
    client.create_bucket(Bucket=bucket)
    return bucket


def builder_s3_env(url: str) -> dict[str, str]:
    """The builder's ``[builder.s3]`` settings for the test server, as ``DLHUB_*`` environment variables."""
    return {
        "DLHUB_BUILDER__S3__ENDPOINT_URL": url,
        "DLHUB_BUILDER__S3__REGION": S3_REGION,
        "DLHUB_BUILDER__S3__ACCESS_KEY_ID": S3_ACCESS_KEY_ID,
        "DLHUB_BUILDER__S3__SECRET_ACCESS_KEY": S3_SECRET_ACCESS_KEY,
        "DLHUB_BUILDER__S3__ADDRESSING_STYLE": "path",
    }
