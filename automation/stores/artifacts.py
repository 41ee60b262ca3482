"""Model directories in object storage (``mlrelease:model.path: s3://bucket/prefix/``), fetched into a local
content-addressed cache and digest-checked before anything serves them.

A cache entry is named by the digest of the prefix's listing (every key, size and ETag): a changed object in
the bucket is a new entry, never a stale one, and an unchanged prefix costs one LIST. The artifact's sha256 is
checked on every use (the entry is local, so anyone on the machine could edit it); a fetch lands in a partial
directory and is renamed into place only after its artifact matched, so a half-written or tampered fetch never
looks cached. The endpoint comes from the URL's ``?endpoint=`` (as in a backend URL) or ``AWS_ENDPOINT_URL_S3``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path, PurePosixPath

from automation.stores.s3 import STORE_ERRORS, Bucket
from serving.artifacts import ArtifactDigestError, ModelDirError, artifact_digest, verify_artifact

SCHEME = "s3://"
CACHE_ENV = "MLRELEASE_ARTIFACT_CACHE"


def is_remote(path: str) -> bool:
    return path.startswith(SCHEME)


def cache_root(project_dir: Path) -> Path:
    """``MLRELEASE_ARTIFACT_CACHE``, or the project's ``.mlrelease/artifacts``."""
    return Path(os.environ.get(CACHE_ENV) or Path(project_dir) / ".mlrelease" / "artifacts")


def location(url: str) -> str:
    """The URL as messages name it: without the endpoint query."""
    return url.split("?", 1)[0]


def _listing(url: str, bucket: Bucket) -> list[dict]:
    where = location(url)
    if not bucket.prefix:
        raise ModelDirError(f"model directory {where} names a bucket, not a directory: use s3://BUCKET/PREFIX/")
    try:
        entries = bucket.list("")
    except STORE_ERRORS as exc:
        raise ModelDirError(
            f"model directory {where} cannot be listed ({exc}): check the endpoint (?endpoint= or AWS_ENDPOINT_URL_S3)"
            " and the AWS credentials"
        ) from None
    if not entries:
        raise ModelDirError(
            f"model directory {where} holds no objects: upload the MLServer model directory (model-settings.json and"
            " its artifact) there, or fix the path"
        )
    return entries


def _relative(key: str, prefix: str, url: str) -> PurePosixPath:
    relative = PurePosixPath(key[len(prefix) + 1 :])
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        raise ModelDirError(f"model directory {location(url)} holds a key {key!r} that leaves the directory: remove it")
    return relative


@functools.cache
def fetch_model_dir(url: str, expected_sha256: str | None, cache: Path) -> Path:
    """The local copy of the model directory at ``url``, its artifact checked against ``expected_sha256``
    (when given; ``mlrelease promote --model s3://...`` computes it from the fetched copy).

    ModelDirError when the prefix cannot be listed or holds no model; ArtifactDigestError (the same sentence as
    for a local directory, naming the object) when the artifact's bytes are not the expected ones.
    """
    bucket = Bucket.from_backend_url(url)
    entries = _listing(url, bucket)
    manifest = sorted((e["Key"], e["Size"], e.get("ETag", "")) for e in entries)
    entry = cache / hashlib.sha256(json.dumps(manifest).encode()).hexdigest()[:32]
    if entry.is_dir():
        try:
            _check(entry, expected_sha256, url)
            return entry
        except (ArtifactDigestError, ModelDirError):
            shutil.rmtree(entry, ignore_errors=True)  # a damaged local copy: fetch it again, then judge the bucket
    partial = cache / f".partial-{uuid.uuid4().hex}"
    try:
        for key, _size, _etag in manifest:
            path = partial / _relative(key, bucket.prefix, url)
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                bucket.client().download_file(bucket.name, key, str(path))
            except STORE_ERRORS as exc:
                raise ModelDirError(
                    f"model directory {location(url)}: s3://{bucket.name}/{key} cannot be read ({exc})"
                ) from None
        _check(partial, expected_sha256, url)
        try:
            partial.rename(entry)
        except OSError:  # another process fetched the same listing first: its copy is the same bytes
            if not entry.is_dir():
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return entry


def _check(directory: Path, expected_sha256: str | None, url: str) -> None:
    """The artifact's digest, with messages naming the object in the bucket rather than the cache's path."""
    where = location(url).rstrip("/")

    def named(exc: Exception) -> str:
        return str(exc).replace(str(directory.resolve()), where).replace(str(directory), where)

    try:
        if expected_sha256:
            verify_artifact(directory, expected_sha256)
        else:
            artifact_digest(directory)
    except ArtifactDigestError as exc:
        raise ArtifactDigestError(named(exc)) from None
    except ModelDirError as exc:
        raise ModelDirError(named(exc)) from None
