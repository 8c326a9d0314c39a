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
import json
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
from django.db import close_old_connections, connection, transaction
from storages.backends.s3 import S3Storage

from reapi.models import Blob
from reapi.presence import TRUST_SECONDS

log = logging.getLogger(__name__)

# Requests in flight for one batch (BatchUpdateBlobs of ~100 small blobs).
PARALLEL_REQUESTS = 32
# S3 DeleteObjects takes at most 1,000 keys per request.
DELETE_BATCH = 1000
# Fallback chunk for databases without an array or JSON parameter.
IN_CHUNK = 500
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
        self._table = connection.ops.quote_name(Blob._meta.db_table)

    def __repr__(self) -> str:
        return f"S3BlobStore(s3://{self.store_id})"

    def _object(self, key: str) -> str:
        return f"{self.location}/{key}" if self.location else key

    # --- presence (the index) ------------------------------------------------------------

    def stat(self, key: str) -> tuple[int, float] | None:
        return self.stat_many([key]).get(key)

    def stat_many(self, keys: list[str], verify: bool = False) -> dict[str, tuple[int, float]]:
        """(size, last touched) of the keys the index holds, in one query.

        A row older than the presence trust window is touched here, in the same call, before
        it is reported present: the eviction job deletes only rows still untouched, under the
        database's row locks, so a blob this reports present cannot be evicted behind it.

        `verify` (completeness checks of action results, for blobs this process has not seen
        within the trust window) also asks S3, in parallel, about each blob the index lists:
        one lost behind our back is dropped from the index and reported missing.
        """
        if not keys:
            return {}
        _checked_connection()
        now = time.time()
        rows = self._select(keys)
        found = {key: (size, touched) for key, size, touched in rows}
        stale = [key for key, (_size, touched) in found.items() if now - touched > TRUST_SECONDS]
        if stale:
            kept = self._touch_returning(stale, now)
            for key in stale:
                if key in kept:
                    found[key] = (found[key][0], now)
                else:
                    del found[key]  # evicted between the two statements
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

    def _select(self, keys: list[str]) -> list[tuple[str, int, float]]:
        t = self._table
        with connection.cursor() as cur:
            if connection.vendor == "postgresql":
                # The keys go as one text parameter split by the server (adapting a
                # 10,000-element list costs the client more than the query; keys hold no
                # comma), and each is looked up through the unique index: LIMIT 1 in a
                # lateral subquery keeps the planner from the sequential scan it picks for
                # `key = ANY(...)`, which grows with the table (90 ms at 200,000 rows, 250 ms
                # at 1,000,000; this stays at ~25 ms for 10,000 keys).
                cur.execute(
                    "SELECT b.key, b.size, b.touched_at FROM unnest(string_to_array(%s, ',')) AS k(key) "
                    f"CROSS JOIN LATERAL (SELECT key, size, touched_at FROM {t} "
                    "WHERE store = %s AND key = k.key LIMIT 1) AS b",
                    [",".join(keys), self.store_id],
                )
                return cur.fetchall()
            if connection.vendor == "sqlite":
                # CROSS JOIN fixes the loop order in SQLite: for each key, one probe of the
                # unique index. A plain JOIN lets the planner, without statistics, scan the
                # table and the key list inside it (seconds for 10,000 keys).
                cur.execute(
                    f"SELECT b.key, b.size, b.touched_at FROM json_each(%s) AS j "
                    f"CROSS JOIN {t} AS b ON b.store = %s AND b.key = j.value",
                    [json.dumps(keys), self.store_id],
                )
                return cur.fetchall()
        rows: list[tuple[str, int, float]] = []
        for i in range(0, len(keys), IN_CHUNK):
            rows += Blob.objects.filter(store=self.store_id, key__in=keys[i : i + IN_CHUNK]).values_list(
                "key", "size", "touched_at"
            )
        return rows

    def _touch_returning(self, keys: list[str], now: float) -> set[str]:
        t = self._table
        with connection.cursor() as cur:
            if connection.vendor == "postgresql":
                cur.execute(
                    f"UPDATE {t} SET touched_at = %s FROM (SELECT b.id FROM unnest(string_to_array(%s, ',')) "
                    f"AS k(key) CROSS JOIN LATERAL (SELECT id FROM {t} WHERE store = %s AND key = k.key "
                    f"LIMIT 1) AS b) AS s WHERE {t}.id = s.id RETURNING {t}.key",
                    [now, ",".join(keys), self.store_id],
                )
                return {row[0] for row in cur.fetchall()}
            if connection.vendor == "sqlite":
                cur.execute(
                    f"UPDATE {t} SET touched_at = %s WHERE store = %s "
                    "AND key IN (SELECT value FROM json_each(%s)) RETURNING key",
                    [now, self.store_id, json.dumps(keys)],
                )
                return {row[0] for row in cur.fetchall()}
        self.touch(keys)
        return set(self._select_keys(keys))

    def _select_keys(self, keys: list[str]) -> list[str]:
        return [key for key, _size, _touched in self._select(keys)]

    def touch(self, keys: Iterable[str]) -> None:
        _checked_connection()
        now = time.time()
        keys = list(keys)
        for i in range(0, len(keys), IN_CHUNK):
            Blob.objects.filter(store=self.store_id, key__in=keys[i : i + IN_CHUNK]).update(touched_at=now)

    def _index(self, items: list[tuple[str, int]], now: float) -> None:
        # CAS blobs only: presence and eviction are about them. An action-cache entry is read
        # with one GET whether or not it exists, and a missing one is an ordinary miss.
        rows = [
            Blob(store=self.store_id, key=key, tenant=key.split("/", 1)[0], size=size, touched_at=now)
            for key, size in items
            if _is_cas(key)
        ]
        if not rows:
            return
        _checked_connection()
        Blob.objects.bulk_create(
            rows,
            update_conflicts=True,
            unique_fields=["store", "key"],
            update_fields=["size", "touched_at"],
        )

    def _unindex(self, key: str) -> int:
        if not _is_cas(key):
            return 0
        _checked_connection()
        deleted, _ = Blob.objects.filter(store=self.store_id, key=key).delete()
        return deleted

    def _lost(self, key: str) -> None:
        if self._unindex(key):
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
        if _is_cas(key):
            # S3 recomputes the SHA-256 on arrival and refuses a mismatch: the digest we
            # verified is the digest stored, whatever happened on the wire.
            extra["ChecksumSHA256"] = base64.b64encode(bytes.fromhex(key.rsplit("/", 1)[1])).decode()
        self.client.put_object(Bucket=self.bucket, Key=self._object(key), Body=data, **extra)

    def put(self, key: str, data: bytes) -> None:
        self._put_object(key, data)
        self._index([(key, len(data))], time.time())

    def put_many(self, items: list[tuple[str, bytes]]) -> None:
        if len(items) == 1:
            self.put(*items[0])
            return
        # All objects first, then one statement for the index: a row never precedes its object.
        list(self._pool.map(lambda item: self._put_object(*item), items))
        self._index([(key, len(data)) for key, data in items], time.time())

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
        self._index([(key, size)], time.time())

    def delete(self, key: str) -> None:
        self._unindex(key)
        self.client.delete_object(Bucket=self.bucket, Key=self._object(key))

    # --- eviction -------------------------------------------------------------------------

    def entries(self, prefix: str) -> Iterator[tuple[str, int, float]]:
        """(key, size, last touched) of every indexed object under `prefix`."""
        _checked_connection()
        tenant = prefix.split("/", 1)[0]
        rows = Blob.objects.filter(store=self.store_id, tenant=tenant, key__startswith=prefix)
        yield from rows.values_list("key", "size", "touched_at").iterator(chunk_size=5000)

    def evict(self, keys: list[str], untouched_since: float) -> int:
        """Delete those of `keys` still untouched since `untouched_since`; returns bytes freed.

        The condition is checked by the database as it deletes the rows, so a blob touched
        since the eviction job listed it (stat_many touches before it answers) stays.
        """
        _checked_connection()
        freed = 0
        gone: list[str] = []
        for i in range(0, len(keys), DELETE_BATCH):
            chunk = keys[i : i + DELETE_BATCH]
            with transaction.atomic():
                rows = list(
                    Blob.objects.select_for_update()
                    .filter(store=self.store_id, key__in=chunk, touched_at__lt=untouched_since)
                    .values_list("id", "key", "size")
                )
                Blob.objects.filter(id__in=[row[0] for row in rows]).delete()
            gone += [row[1] for row in rows]
            freed += sum(row[2] for row in rows)
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
        _checked_connection()
        started = time.time()
        listed: dict[str, tuple[int, float]] = {}
        prefix = f"{self.location}/" if self.location else ""
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                key = obj["Key"][len(prefix) :]
                if _is_cas(key):
                    listed[key] = (obj["Size"], obj["LastModified"].timestamp())
        indexed = dict(Blob.objects.filter(store=self.store_id).values_list("key", "touched_at"))
        stale = [key for key, touched in indexed.items() if key not in listed and touched < started]
        for i in range(0, len(stale), IN_CHUNK):
            Blob.objects.filter(
                store=self.store_id, key__in=stale[i : i + IN_CHUNK], touched_at__lt=started
            ).delete()
        new = [
            Blob(store=self.store_id, key=key, tenant=key.split("/", 1)[0], size=size, touched_at=modified)
            for key, (size, modified) in listed.items()
            if key not in indexed
        ]
        Blob.objects.bulk_create(new, ignore_conflicts=True, batch_size=IN_CHUNK)
        return len(new), len(stale)


def _checked_connection() -> None:
    """Drop this thread's database connection if it broke or aged out (gRPC handler threads
    live long and Django's request signals never run there), but never inside a transaction
    a caller opened."""
    if not connection.in_atomic_block:
        close_old_connections()


def _is_cas(key: str) -> bool:
    return "/cas/" in key


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
