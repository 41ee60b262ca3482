"""An ``s3://`` backend: a bucket (AWS S3 or any store that speaks its API), addressed as Pulumi's gocloud driver
addresses it (``s3://BUCKET?endpoint=...&use_path_style=true&disable_https=true&region=...``)."""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import botocore.config
import botocore.exceptions

from automation.stores.base import StoreError

PAGE = 250  # keys per LIST request: audit reads a few pages around T, verify all of them
STORE_ERRORS = (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError)


def error_code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def missing(exc: botocore.exceptions.ClientError) -> bool:
    return error_code(exc) in ("NoSuchKey", "404", "NotFound")


@dataclass(frozen=True)
class Bucket:
    """Where an ``s3://`` URL points: bucket, key prefix, endpoint and addressing."""

    name: str
    endpoint: str | None
    region: str | None
    path_style: bool
    prefix: str = ""

    @classmethod
    def from_backend_url(cls, url: str) -> Bucket:
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise ValueError(f"{url} is not an s3://BUCKET URL")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        endpoint = query.get("endpoint") or os.environ.get("AWS_ENDPOINT_URL_S3") or None
        if endpoint and "://" not in endpoint:
            endpoint = ("http://" if query.get("disable_https") == "true" else "https://") + endpoint
        path_style = query.get("use_path_style") == "true"
        return cls(parts.netloc, endpoint, query.get("region"), path_style, parts.path.strip("/"))

    @functools.cache  # noqa: B019 - a few buckets per process; a client costs ~50 ms to build, a watcher asks every tick
    def client(self) -> Any:
        """A client that signs with the process's AWS credentials (the environment, a profile, a role)."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=self.region or os.environ.get("AWS_REGION") or "us-east-1",
            config=botocore.config.Config(
                s3={"addressing_style": "path" if self.path_style else "auto"},
                retries={"max_attempts": 2},
                connect_timeout=3,
                read_timeout=10,
            ),
        )

    def key(self, relative: str) -> str:
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def list(self, prefix: str) -> list[dict[str, Any]]:
        """Every object under ``prefix`` (relative to the bucket's prefix), a page of 1,000 keys per request."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.name, Prefix=self.key(prefix))
        return [entry for page in pages for entry in page.get("Contents", [])]


class S3Store:
    def __init__(self, url: str) -> None:
        self.url, self.bucket = url, Bucket.from_backend_url(url)

    def names(self, directory: str, start_after: str | None = None) -> Iterator[str]:
        prefix = self.bucket.key(directory.rstrip("/") + "/")
        query: dict[str, Any] = {"Bucket": self.bucket.name, "Prefix": prefix, "PaginationConfig": {"PageSize": PAGE}}
        if start_after is not None:
            query["StartAfter"] = prefix + start_after
        try:
            for page in self.bucket.client().get_paginator("list_objects_v2").paginate(**query):
                for entry in page.get("Contents", []):
                    if "/" not in entry["Key"][len(prefix) :]:
                        yield entry["Key"][len(prefix) :]
        except STORE_ERRORS as exc:
            raise StoreError(f"cannot list s3://{self.bucket.name}/{prefix}: {exc}") from None

    def read(self, key: str) -> bytes:
        try:
            return self.bucket.client().get_object(Bucket=self.bucket.name, Key=self.bucket.key(key))["Body"].read()
        except botocore.exceptions.ClientError as exc:
            if missing(exc):
                raise FileNotFoundError(f"{self.where(key)} does not exist") from None
            raise StoreError(f"cannot read {self.where(key)}: {exc}") from None
        except botocore.exceptions.BotoCoreError as exc:
            raise StoreError(f"cannot read {self.where(key)}: {exc}") from None

    def where(self, key: str) -> str:
        return f"s3://{self.bucket.name}/{self.bucket.key(key)}"
