"""Blobs in an S3 bucket, through django-storages' S3Storage, with a presence index in the database.

One S3 request costs a millisecond or more, so a store that asked S3 about every digest of a
FindMissingBlobs would take seconds for a build's worth (a known failure of caches on S3).
Instead every object this store puts is recorded in `reapi.models.Blob`, and presence is one
indexed query per batch (`stat_many`), beside the per-process presence cache of reapi.presence.

The index is kept honest in three ways:
- a row is written only after S3 accepted the object, and removed before the object is deleted;
- a read that finds the object gone (lost behind our back) removes the row and reports the
  blob missing: it is never served, and the next FindMissingBlobs asks the client for it again;
- `reconcile()` (run by the eviction job) drops rows whose objects are gone and adds objects
  the index does not know.

Writes are verified before they get here (reapi.cas checks SHA-256 and size) and S3 is asked
to check the bytes again on arrival (x-amz-checksum-sha256 for CAS blobs): verified, then put.
An object appears under its key whole or not at all (S3 PUT semantics), and two writers of one
digest leave one object with the same bytes.
"""

import base64
import io
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO, cast

from botocore.config import Config
from botocore.exceptions import ClientError
from django.conf import settings
from storages.backends.s3 import S3Storage

from reapi.s3_index import BlobIndex, is_cas

log = logging.getLogger(__name__)

# Requests in flight for one batch (BatchUpdateBlobs of ~100 small blobs).
PARALLEL_REQUESTS = 32
# S3 DeleteObjects takes at most 1,000 keys per request.
DELETE_BATCH = 1000
# Objects at least this large go up in parts, in parallel (s3transfer).
MULTIPART_FROM = 16 * 1024 * 1024
MISSING_CODES = ("NoSuchKey", "404", "NotFound")


class S3BlobStore:
    def __init__(self, storage: S3Storage, alias: str) -> None:
        self.storage = storage
        self.alias = alias
        self.bucket = storage.bucket_name
        self.location = storage.location.strip("/")
        self.store_id = f"{self.bucket}/{self.location}"
        # More pooled connections than botocore's default 10, for the parallel batch puts;
        # set before the first connection is made, through the storage's own config.
        storage.client_config = storage.client_config.merge(
            Config(max_pool_connections=PARALLEL_REQUESTS * 2)
        )
        # boto3 clients are thread-safe (resources are not): one client for every thread.
        self.client = storage.connection.meta.client
        self.transfer_config = storage.transfer_config
        self.spool = Path(settings.REAPI_UPLOAD_DIR) / alias
        self.spool.mkdir(parents=True, exist_ok=True)
        self._pool = ThreadPoolExecutor(PARALLEL_REQUESTS, thread_name_prefix=f"s3-{alias}")
        self.index = BlobIndex(self.store_id)

    def __repr__(self) -> str:
        return f"S3BlobStore(s3://{self.store_id})"

    def _object(self, key: str) -> str:
        return f"{self.location}/{key}" if self.location else key

    # --- presence (the index, reapi/s3_index.py) --------------------------------------------

    def stat(self, key: str) -> tuple[int, float] | None:
        return self.stat_many([key]).get(key)

    def stat_many(self, keys: list[str], verify: bool = False) -> dict[str, tuple[int, float]]:
        """(size, last touched) of the keys the index holds, in one query (reapi/s3_index.py,
        which also touches rows older than the presence trust window before reporting them).

        `verify` (completeness checks of action results, for blobs this process has not seen
        within the trust window) also asks S3, in parallel, about each blob the index lists:
        one lost behind our back is dropped from the index and reported missing.
        """
        if not keys:
            return {}
        found = self.index.stat_many(keys)
        if verify and found:
            listed = list(found)
            for key, size in zip(listed, self._pool.map(self._head, listed), strict=True):
                if size != found[key][0]:
                    if size is None:
                        self._lost(key)
                    del found[key]
        return found

    def _head(self, key: str) -> int | None:
        try:
            reply = self.client.head_object(Bucket=self.bucket, Key=self._object(key))
        except ClientError as exc:
            if _is_missing(exc):
                return None
            raise
        return int(reply["ContentLength"])

    def touch(self, keys: Iterable[str]) -> None:
        self.index.touch(keys)

    def _lost(self, key: str) -> None:
        if self.index.remove(key):
            log.warning("%r: %s was in the index but not in the bucket; dropped from the index", self, key)

    # --- reads ----------------------------------------------------------------------------

    def get(self, key: str, size: int | None = None) -> bytes | None:
        """The object's bytes, or None; None too when `size` is given and the object is of
        another size, told by the reply's Content-Length before the body is read: no extra
        request, and no body of the wrong size is downloaded."""
        try:
            reply = self.client.get_object(Bucket=self.bucket, Key=self._object(key))
        except ClientError as exc:
            if _is_missing(exc):
                self._lost(key)
                return None
            raise
        if size is not None and int(reply["ContentLength"]) != size:
            reply["Body"].close()
            return None
        return cast(bytes, reply["Body"].read())

    def get_many(self, keys: list[str], sizes: list[int]) -> list[bytes | None]:
        """get() of each key with its size, in parallel (BatchReadBlobs)."""
        return list(self._pool.map(self.get, keys, sizes))

    def open(self, key: str, size: int | None = None) -> BinaryIO | None:
        try:
            reader = _ObjectReader(self.client, self.bucket, self._object(key))
        except ClientError as exc:
            if _is_missing(exc):
                self._lost(key)
                return None
            raise
        if size is not None and reader.size != size:
            reader.close()
            return None
        return cast(BinaryIO, reader)

    # --- writes ---------------------------------------------------------------------------

    def _put_object(self, key: str, data: bytes) -> None:
        extra: dict[str, Any] = {}
        if is_cas(key):
            # S3 recomputes the SHA-256 on arrival and refuses a mismatch: the digest we
            # verified is the digest stored, whatever happened on the wire.
            extra["ChecksumSHA256"] = base64.b64encode(bytes.fromhex(key.rsplit("/", 1)[1])).decode()
        self.client.put_object(Bucket=self.bucket, Key=self._object(key), Body=data, **extra)

    def put(self, key: str, data: bytes) -> None:
        self._put_object(key, data)
        self.index.add([(key, len(data))], time.time())

    def put_many(self, items: list[tuple[str, bytes]]) -> None:
        if len(items) == 1:
            self.put(*items[0])
            return
        # All objects first, then one statement for the index: a row never precedes its object.
        list(self._pool.map(lambda item: self._put_object(*item), items))
        self.index.add([(key, len(data)) for key, data in items], time.time())

    def spool_dir(self) -> Path:
        return self.spool

    def put_file(self, key: str, path: Path) -> None:
        """Upload a verified file from spool_dir() under `key`, then remove the file."""
        size = os.path.getsize(path)
        try:
            if size < MULTIPART_FROM:
                with open(path, "rb") as f:
                    self._put_object(key, f.read())
            else:
                self.client.upload_file(
                    str(path), self.bucket, self._object(key), Config=self.transfer_config
                )
        finally:
            path.unlink(missing_ok=True)
        self.index.add([(key, size)], time.time())

    def delete(self, key: str) -> None:
        self.index.remove(key)
        self.client.delete_object(Bucket=self.bucket, Key=self._object(key))

    # --- eviction -------------------------------------------------------------------------

    def entries(self, prefix: str) -> Iterator[tuple[str, int, float]]:
        """(key, size, last touched) of every indexed object under `prefix`."""
        return self.index.entries(prefix)

    def evict(self, keys: list[str], untouched_since: float) -> int:
        """Delete those of `keys` still untouched since `untouched_since`; returns bytes freed.

        The condition is checked by the database as it deletes the rows, so a blob touched
        since the eviction job listed it (stat_many touches before it answers) stays.
        """
        gone, freed = self.index.take_untouched(keys, untouched_since, DELETE_BATCH)
        self._delete_objects(gone)
        return freed

    def _delete_objects(self, keys: list[str]) -> None:
        for i in range(0, len(keys), DELETE_BATCH):
            reply = self.client.delete_objects(
                Bucket=self.bucket,
                Delete={
                    "Objects": [{"Key": self._object(k)} for k in keys[i : i + DELETE_BATCH]],
                    "Quiet": True,
                },
            )
            for error in reply.get("Errors", []):
                log.warning("%r: could not delete %s: %s", self, error.get("Key"), error.get("Message"))

    def abort_multipart_uploads(self, started_before: float) -> int:
        """Abort this store's unfinished multipart uploads begun before `started_before`
        (epoch seconds); returns how many. s3transfer aborts the ones it sees fail, but a
        process killed in the middle of one leaves it, and its parts, in the bucket."""
        aborted = 0
        prefix = f"{self.location}/" if self.location else ""
        paginator = self.client.get_paginator("list_multipart_uploads")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for upload in page.get("Uploads", []):
                if upload["Initiated"].timestamp() < started_before:
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                    aborted += 1
        return aborted

    def reconcile(self) -> tuple[int, int]:
        """Make the index match the bucket: (rows added, rows dropped).

        Rows touched after the listing began are left alone: their objects may be newer than
        the listing.
        """
        started = time.time()
        listed: dict[str, tuple[int, float]] = {}
        prefix = f"{self.location}/" if self.location else ""
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                key = obj["Key"][len(prefix) :]
                if is_cas(key):
                    listed[key] = (obj["Size"], obj["LastModified"].timestamp())
        return self.index.reconcile(listed, started)


def _is_missing(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") in MISSING_CODES


class _ObjectReader(io.RawIOBase):
    """A readable, seekable view of one object: a GET now (so absence shows at once), and a
    ranged GET if the caller seeks before reading (ByteStream read_offset)."""

    def __init__(self, client: Any, bucket: str, name: str) -> None:
        super().__init__()
        self._client = client
        self._bucket = bucket
        self._name = name
        self._lock = threading.Lock()
        reply = client.get_object(Bucket=bucket, Key=name)
        self._body = reply["Body"]
        self.size = int(reply["ContentLength"])
        self._pos = 0
        self._body_pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence != io.SEEK_SET:
            raise io.UnsupportedOperation("only absolute seeks")
        self._pos = offset
        return offset

    def tell(self) -> int:
        return self._pos

    def read(self, size: int = -1) -> bytes:
        if self._pos != self._body_pos:
            self._body.close()
            reply = self._client.get_object(Bucket=self._bucket, Key=self._name, Range=f"bytes={self._pos}-")
            self._body = reply["Body"]
            self._body_pos = self._pos
        data = cast(bytes, self._body.read(None if size is None or size < 0 else size))
        self._pos += len(data)
        self._body_pos = self._pos
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()
