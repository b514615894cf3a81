"""The builder fetching ``s3://`` URL components from a real S3-compatible server (moto in server mode,
started by scripts/test-servers), with boto3 and the typed ``[builder.s3]`` settings."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from dlhub.builder.remote import FetchSettings, UrlFetcher
from dlhub.common.config import S3Config
from dlhub.common.errors import ChecksumMismatch, PayloadTooLarge, UrlFetchFailed
from dlhub.common.url_files import UrlFile
from tests.support.s3 import S3_ACCESS_KEY_ID, S3_REGION, S3_SECRET_ACCESS_KEY, new_bucket, s3_client

MiB = 1024 * 1024
DATA = bytes(range(256)) * 1000
DATA_SHA = hashlib.sha256(DATA).hexdigest()


@pytest.fixture(scope="module")
def bucket(s3_url: str) -> str:
    client = s3_client(s3_url)
    name = new_bucket(client)
    client.put_object(Bucket=name, Key="models/w.bin", Body=DATA)
    client.put_object(Bucket=name, Key="models/with space.bin", Body=DATA)
    client.put_object(Bucket=name, Key="models/big.bin", Body=b"\0" * (2 * MiB))
    client.put_object(Bucket=name, Key="public/w.bin", Body=DATA, ACL="public-read")
    return name


def fetcher(s3_url: str, **s3: Any) -> UrlFetcher:
    config = S3Config(
        endpoint_url=s3_url,
        region=S3_REGION,
        access_key_id=S3_ACCESS_KEY_ID,
        secret_access_key=SecretStr(S3_SECRET_ACCESS_KEY),
        addressing_style="path",
    )
    return UrlFetcher(FetchSettings(max_component_bytes=MiB, timeout_s=10.0, s3=config.model_copy(update=s3)))


def fetch(fetcher: UrlFetcher, tmp_path: Path, url: str, sha256: str = DATA_SHA) -> bytes:
    fetcher.fetch(UrlFile(path="w.bin", url=url, sha256=sha256), tmp_path / "w.bin", MiB)
    return (tmp_path / "w.bin").read_bytes()


def test_an_s3_component_is_fetched_and_checked(s3_url: str, bucket: str, tmp_path: Path) -> None:
    assert fetch(fetcher(s3_url), tmp_path, f"s3://{bucket}/models/w.bin") == DATA


def test_a_percent_encoded_key_names_the_literal_key(s3_url: str, bucket: str, tmp_path: Path) -> None:
    assert fetch(fetcher(s3_url), tmp_path, f"s3://{bucket}/models/with%20space.bin") == DATA


def test_anonymous_access_sends_no_credentials(s3_url: str, bucket: str, tmp_path: Path) -> None:
    """Unsigned requests read a public object, and are refused a private one that credentials can read."""
    anonymous = fetcher(s3_url, anonymous=True)
    assert fetch(anonymous, tmp_path, f"s3://{bucket}/public/w.bin") == DATA
    with pytest.raises(UrlFetchFailed, match="403"):
        fetch(anonymous, tmp_path, f"s3://{bucket}/models/w.bin")


def test_a_tampered_s3_component_is_refused(s3_url: str, bucket: str, tmp_path: Path) -> None:
    declared = hashlib.sha256(b"what the publisher meant").hexdigest()
    with pytest.raises(ChecksumMismatch) as caught:
        fetch(fetcher(s3_url), tmp_path, f"s3://{bucket}/models/w.bin", sha256=declared)
    assert declared in caught.value.message and DATA_SHA in caught.value.message
    assert list(tmp_path.iterdir()) == []


def test_an_oversize_s3_component_is_refused_from_its_size(s3_url: str, bucket: str, tmp_path: Path) -> None:
    with pytest.raises(PayloadTooLarge, match="announced at 2097152 bytes"):
        fetch(fetcher(s3_url), tmp_path, f"s3://{bucket}/models/big.bin")


def test_a_missing_key_or_bucket_is_a_fetch_failure(s3_url: str, bucket: str, tmp_path: Path) -> None:
    with pytest.raises(UrlFetchFailed, match="NoSuchKey"):
        fetch(fetcher(s3_url), tmp_path, f"s3://{bucket}/models/missing.bin")
    with pytest.raises(UrlFetchFailed, match="NoSuchBucket"):
        fetch(fetcher(s3_url), tmp_path, "s3://dlhub-no-such-bucket/w.bin")


def test_the_secret_key_is_never_shown(s3_url: str) -> None:
    settings = fetcher(s3_url).settings
    assert S3_SECRET_ACCESS_KEY not in repr(settings) and S3_SECRET_ACCESS_KEY not in str(settings.s3)
