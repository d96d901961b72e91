"""An S3 endpoint (moto) and credentials in the environment, for the DVC tests of this folder."""

from __future__ import annotations

import pytest

from tests.servers import moto_s3_endpoint

BUCKET = "miipher2-test"


@pytest.fixture(scope="session")
def s3_endpoint():
    with moto_s3_endpoint() as endpoint:
        yield endpoint


@pytest.fixture
def s3_credentials(monkeypatch, s3_endpoint):
    """Credentials only in the environment, exactly as a user would provide them."""
    import boto3

    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    if BUCKET not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
        client.create_bucket(Bucket=BUCKET)
    return client
