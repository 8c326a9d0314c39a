"""The content-addressable storage of one store: presence, batches, streams and trees.

No gRPC here: the servicers in reapi/*_service.py unpack requests and map the errors of
reapi.errors to status codes.
"""

import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol, TypeVar

from reapi import digests, faults, messages, metrics, page_tokens, uploads
from reapi.blobstore import BlobStore
from reapi.digests import Digest
from reapi.errors import InvalidArgument, NotFound, OutOfRange, ReapiError, ResourceExhausted
from reapi.gen.build.bazel.remote.execution.v2 import remote_execution_pb2 as re_pb2
from reapi.presence import Presence

log = logging.getLogger(__name__)

READ_CHUNK = 1024 * 1024
# Reads of blobs up to this size take the whole blob in one `get` (see read).
SMALL_READ_BYTES = 64 * 1024
DEFAULT_TREE_PAGE = 1000
MAX_TREE_PAGE = 10000
# reapi_storage_operation_seconds' backend label, by the store's class.
BACKENDS = {"FileBlobStore": "file", "S3BlobStore": "s3"}

F = TypeVar("F", bound=Callable[..., Any])


def _timed(op: str) -> Callable[[F], F]:
    """Observe a Cas method's duration as reapi_storage_operation_seconds{backend, op}."""

    def decorate(method: F) -> F:
        def timed(self: "Cas", *args: Any, **kwargs: Any) -> Any:
            if not metrics.ENABLED:
                return method(self, *args, **kwargs)
            start = time.perf_counter()
            try:
                return method(self, *args, **kwargs)
            finally:
                metrics.storage(self.backend, op, time.perf_counter() - start)

        timed.__name__, timed.__doc__ = method.__name__, method.__doc__
        return timed  # type: ignore[return-value]

    return decorate


@dataclass(frozen=True, slots=True)
class WriteState:
    committed: int
    complete: bool


class Admission(Protocol):
    """Decides whether a tenant may store `nbytes` more (reapi.quotas); raises ResourceExhausted."""

    def admit(self, tenant: str, nbytes: int) -> None: ...


class Unlimited:
    def admit(self, tenant: str, nbytes: int) -> None:
        pass


class Cas:
    def __init__(self, store: BlobStore, max_batch_bytes: int, quota: Admission | None = None) -> None:
        self.store = store
        self.quota = quota or Unlimited()
        self.presence = Presence(store)
        self.max_batch_bytes = max_batch_bytes
        self.spool = store.spool_dir()
        self.backend = BACKENDS.get(type(store).__name__, type(store).__name__.lower())

    # --- presence -------------------------------------------------------------------------

    def contains(self, tenant: str, digest: Digest, now: float | None = None) -> bool:
        """Whether the CAS holds the blob `digest` names, hash and size (REAPI `Digest`: the
        size is an integral part of the digest), so a stored blob of another size is not it."""
        if digests.is_empty(digest):
            return True
        now = now or time.time()
        key = digests.cas_key(tenant, digest)
        if self.presence.known(key, digest.size, now):
            return True
        st = self.store.stat(key)
        if st is None or st[0] != digest.size:
            return False
        self.presence.confirm(key, digest.size, st[1], now)
        return True

    def find_missing(self, tenant: str, wanted: Iterable[Digest], verify: bool = False) -> list[Digest]:
        wanted = list(wanted)
        missing = self.find_missing_hashes(
            tenant, [d.hash for d in wanted], [d.size for d in wanted], verify=verify
        )
        return [wanted[i] for i in missing]

    def find_missing_hashes(
        self, tenant: str, hashes: Sequence[str], sizes: Sequence[int], verify: bool = False
    ) -> list[int]:
        """Indices of the blobs (validated hash and size) that are not in the CAS.

        FindMissingBlobs' hot path, 10,000 digests a call: no object per digest, one dict
        lookup per digest, and what this process does not already know is asked of the store
        in one call, so an indexed store (S3) answers with one query, not one request each.
        `verify` asks an indexed store to check with storage itself (BlobStore.stat_many).
        """
        now = time.time()
        # The layout of digests.cas_key, built inline: a call per digest costs 15% here.
        keys = [f"{tenant}/cas/{h[:2]}/{h}" for h in hashes]
        unknown = [
            i
            for i in self.presence.unknown(keys, sizes, now)
            if sizes[i] != 0 or hashes[i] != digests.EMPTY_HASH
        ]
        if not unknown:
            return []  # answered from memory: no storage operation to observe
        start = time.perf_counter()
        found = self.store.stat_many([keys[i] for i in unknown], verify=verify)
        if metrics.ENABLED:
            metrics.storage(self.backend, "find_missing", time.perf_counter() - start)
        missing = []
        for i in unknown:
            key = keys[i]
            st = found.get(key)
            if st is None or st[0] != sizes[i]:
                missing.append(i)
            else:
                self.presence.confirm(key, sizes[i], st[1], now)
        return missing

    # --- batches --------------------------------------------------------------------------

    def check_batch_size(self, total: int, verb: str) -> None:
        if total > self.max_batch_bytes:
            raise InvalidArgument(
                f"batch {verb} of {total} bytes exceeds max_batch_total_size_bytes "
                f"({self.max_batch_bytes}); use ByteStream for large blobs"
            )

    @_timed("batch_write")
    def batch_update(
        self, tenant: str, items: list[tuple[Digest | ReapiError, bytes]]
    ) -> list[ReapiError | None]:
        """Store each valid blob; the result says, per item, what went wrong (None: stored)."""
        self.check_batch_size(sum(len(data) for _, data in items), "update")
        now = time.time()
        results: list[ReapiError | None] = []
        to_write: dict[str, bytes] = {}
        writing: list[int] = []  # the items to_write stores
        for digest, data in items:
            if isinstance(digest, ReapiError):
                results.append(digest)
                continue
            try:
                digests.verify(digest, data)
            except InvalidArgument as exc:
                results.append(exc)
                continue
            results.append(None)
            if not digests.is_empty(digest) and not self.presence.known(
                key := digests.cas_key(tenant, digest), digest.size, now
            ):
                try:
                    self.quota.admit(tenant, len(data))
                except ResourceExhausted as exc:
                    results[-1] = exc
                    continue
                to_write[key] = data
                writing.append(len(results) - 1)
        if to_write:
            try:
                self.store.put_many(list(to_write.items()))
            except Exception as exc:
                # Storage failed (full, read-only, unreachable): every blob of this write is
                # refused with the one error, logged once; the batch's other answers stand.
                failed = faults.as_error(
                    exc, f"BatchUpdateBlobs of {len(to_write)} blobs for {tenant} into {self.store!r}"
                )
                for i in writing:
                    results[i] = failed
                return results
            self.presence.confirm_many(((key, len(data)) for key, data in to_write.items()), now)
        return results

    @_timed("read")
    def get(self, tenant: str, digest: Digest) -> bytes:
        return self._get(tenant, digest)

    def _get(self, tenant: str, digest: Digest) -> bytes:
        """`get`, untimed: a batch is observed once as a whole, not once a blob as well."""
        if digests.is_empty(digest):
            return b""
        key = digests.cas_key(tenant, digest)
        # The store answers None for an object of another size without reading it: no
        # digest gets another size's bytes, and an object larger than the digest says is
        # never read into memory.
        data = self.store.get(key, digest.size)
        if data is None or len(data) != digest.size:
            self.presence.forget(key, digest.size)
            raise NotFound(f"blob {digest} is not in the CAS")
        now = time.time()
        if not self.presence.known(key, digest.size, now):
            self.presence.confirm(key, digest.size, None, now)
        return data

    @_timed("batch_read")
    def batch_read(self, tenant: str, wanted: list[Digest | ReapiError]) -> list[bytes | ReapiError]:
        self.check_batch_size(sum(d.size for d in wanted if isinstance(d, Digest)), "read")
        get_many = getattr(self.store, "get_many", None)
        if get_many is not None:
            # A store with a round trip per object (S3) fetches the batch in parallel.
            return self._batch_read_many(tenant, wanted, get_many)
        out: list[bytes | ReapiError] = []
        for digest in wanted:
            if isinstance(digest, ReapiError):
                out.append(digest)
                continue
            try:
                out.append(self._get(tenant, digest))
            except ReapiError as exc:
                out.append(exc)
        return out

    def _batch_read_many(
        self,
        tenant: str,
        wanted: list[Digest | ReapiError],
        get_many: Callable[[list[str], list[int]], list[bytes | None]],
    ) -> list[bytes | ReapiError]:
        fetch = [d for d in wanted if isinstance(d, Digest) and not digests.is_empty(d)]
        # In the order of `wanted`: one hash may be asked for under two sizes.
        got = iter(get_many([digests.cas_key(tenant, d) for d in fetch], [d.size for d in fetch]))
        now = time.time()
        out: list[bytes | ReapiError] = []
        for d in wanted:
            if isinstance(d, ReapiError):
                out.append(d)
                continue
            if digests.is_empty(d):
                out.append(b"")
                continue
            key = digests.cas_key(tenant, d)
            data = next(got)
            if data is None or len(data) != d.size:
                self.presence.forget(key, d.size)
                out.append(NotFound(f"blob {d} is not in the CAS"))
                continue
            if not self.presence.known(key, d.size, now):
                self.presence.confirm(key, d.size, None, now)
            out.append(data)
        return out

    # --- streams --------------------------------------------------------------------------

    def read(self, tenant: str, digest: Digest, offset: int, limit: int) -> Iterator[bytes]:
        """Chunks of a blob from `offset`, at most `limit` bytes (0: to the end)."""
        if offset < 0:
            raise OutOfRange(f"read_offset {offset} is negative")
        if limit < 0:
            raise InvalidArgument(f"read_limit {limit} is negative")
        if offset > digest.size:
            raise OutOfRange(f"read_offset {offset} is beyond the blob's size {digest.size}")
        if digests.is_empty(digest):
            return iter(())
        if digest.size <= SMALL_READ_BYTES:
            # Most of what Bazel reads is small: the store's `get` serves a small file it read
            # before after one stat, where opening it costs an open, fstats, a seek and a read.
            data = self._get(tenant, digest)
            end = digest.size if limit == 0 else min(offset + limit, digest.size)
            return iter((data[offset:end],) if end > offset else ())
        key = digests.cas_key(tenant, digest)
        # None for an object of another size too: no byte of a blob is sent under a digest
        # that is not its own.
        f = self.store.open(key, digest.size)
        if f is None:
            self.presence.forget(key, digest.size)
            raise NotFound(f"blob {digest} is not in the CAS")
        now = time.time()
        if not self.presence.known(key, digest.size, now):
            self.presence.confirm(key, digest.size, None, now)
        return _chunks(f, offset, digest.size - offset if limit == 0 else min(limit, digest.size - offset))

    def upload_path(self, tenant: str, upload_id: str, digest: Digest) -> Path:
        """Where the partial of one ByteStream upload waits (reapi.uploads)."""
        name = hashlib.sha256(f"{tenant}\0{upload_id}\0{digest}".encode()).hexdigest()
        return uploads.partial_path(self.spool, tenant, name)

    def write_state(self, tenant: str, upload_id: str, digest: Digest) -> WriteState:
        if self.contains(tenant, digest):
            return WriteState(digest.size, True)
        try:
            size = os.path.getsize(self.upload_path(tenant, upload_id, digest))
        except FileNotFoundError:
            size = 0
        return WriteState(size, False)

    def open_upload(self, tenant: str, upload_id: str, digest: Digest, offset: int) -> "Upload":
        # A resume asks only for the bytes still to come: those already in the partial were
        # admitted when they were sent, and the eviction job counts them since (reapi.uploads).
        self.quota.admit(tenant, max(digest.size - offset, 0))
        return Upload(self, tenant, digest, self.upload_path(tenant, upload_id, digest), offset)

    def parked_bytes(self, tenant: str) -> int:
        """Bytes of the tenant's partial uploads: stored, not yet blobs, not evictable."""
        return uploads.parked_bytes(self.spool, tenant)

    @_timed("write")
    def write_whole(self, tenant: str, digest: Digest, data: bytes, upload_id: str) -> None:
        """A blob whose ByteStream Write brought all of it in its first message, as Bazel sends
        every blob up to its chunk size (16 KiB): verified and stored as one blob of a batch is,
        with no partial file. There is nothing to resume, and the partial's directory, name,
        lock and extra rename cost such a Write more than the blob itself."""
        actual = hashlib.sha256(data).hexdigest()
        if len(data) != digest.size or actual != digest.hash:
            # As Upload.finish says it, whichever way the blob came.
            raise InvalidArgument(f"uploaded data is {actual}/{len(data)}, not {digest}")
        key = digests.cas_key(tenant, digest)
        self.quota.admit(tenant, len(data))
        self.store.put(key, data)
        self.presence.confirm_many([(key, digest.size)], time.time())
        # A partial an earlier try of this upload left would be counted as parked until expiry.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.upload_path(tenant, upload_id, digest))

    @_timed("write")
    def commit_file(self, tenant: str, digest: Digest, path: Path) -> None:
        key = digests.cas_key(tenant, digest)
        self.store.put_file(key, path)
        self.presence.confirm_many([(key, digest.size)], time.time())

    # --- trees ----------------------------------------------------------------------------

    def get_tree(
        self, tenant: str, root: Digest, page_size: int, page_token: str
    ) -> tuple[list[re_pb2.Directory], str]:
        """One page of the directory tree under `root`, breadth first.

        The page token is the position in the traversal, which is deterministic for a given
        root, so a client can resume a broken stream (REAPI GetTree paging).
        """
        if page_size < 0:
            raise InvalidArgument(f"page_size {page_size} is negative")
        page_size = min(page_size or DEFAULT_TREE_PAGE, MAX_TREE_PAGE)
        start = page_tokens.decode("bfs", page_token) if page_token else 0
        root_dir = self.directory(tenant, root)
        if root_dir is None:
            raise NotFound(f"tree root {root} is not in the CAS")
        page: list[re_pb2.Directory] = []
        position = 0
        queue = [(root, root_dir)]
        seen = {root.hash}
        while queue:
            next_queue = []
            for digest, directory in queue:
                if position >= start:
                    if len(page) == page_size:
                        return page, page_tokens.encode("bfs", position)
                    page.append(directory)
                position += 1
                # Checked like a request (reapi.messages): a bad digest or name fails the read
                # with INVALID_ARGUMENT naming it, before any of it becomes a storage key.
                _files, children = messages.check_directory(directory, f"Directory {digest} ")
                for child_digest in children:
                    if child_digest.hash in seen:
                        continue
                    seen.add(child_digest.hash)
                    # REAPI: a part of the tree missing from the CAS is omitted, not an error.
                    sub = self.directory(tenant, child_digest)
                    if sub is not None:
                        next_queue.append((child_digest, sub))
            queue = next_queue
        return page, ""

    def directory(self, tenant: str, digest: Digest) -> re_pb2.Directory | None:
        try:
            data = self.get(tenant, digest)
        except NotFound:
            return None
        return messages.parse(re_pb2.Directory, data, f"blob {digest}")


def _chunks(f: BinaryIO, offset: int, remaining: int) -> Iterator[bytes]:
    with f:
        f.seek(offset)
        while remaining > 0:
            data = f.read(min(READ_CHUNK, remaining))
            if not data:
                raise NotFound("blob ended early in storage")
            remaining -= len(data)
            yield data


class Upload:
    """One ByteStream Write into a resumable partial file.

    Bytes are hashed as they arrive; at finish_write the size and SHA-256 must match the
    digest in the resource name (REAPI: mismatch is INVALID_ARGUMENT) before the file is
    fsynced and renamed into the store.
    """

    def __init__(self, cas: Cas, tenant: str, digest: Digest, path: Path, offset: int) -> None:
        self.cas = cas
        self.tenant = tenant
        self.digest = digest
        self.path = path
        self.hasher = hashlib.sha256()
        # Held open (and locked against expiry) across the stream's messages; closed by
        # finish, suspend or discard.
        if offset:
            found = uploads.resume(path)
            existing = 0 if found is None else os.fstat(found.fileno()).st_size
            if found is None or offset != existing:
                if found is not None:
                    found.close()
                raise InvalidArgument(
                    f"write_offset {offset} does not match the {existing} bytes committed so far"
                )
            self.file = found
            while block := self.file.read(READ_CHUNK):
                self.hasher.update(block)
        else:
            # A fresh start replaces any earlier partial of the same upload.
            self.file = uploads.start(path)
        self.committed = offset

    def append(self, offset: int, data: bytes) -> None:
        if offset != self.committed:
            raise InvalidArgument(f"write_offset {offset} is not the next byte ({self.committed})")
        if self.committed + len(data) > self.digest.size:
            self.discard()
            raise InvalidArgument(f"upload of {self.digest} sent more than its {self.digest.size} bytes")
        self.file.write(data)
        self.hasher.update(data)
        self.committed += len(data)

    def finish(self) -> int:
        self.file.flush()
        if self.committed != self.digest.size or self.hasher.hexdigest() != self.digest.hash:
            got = f"{self.hasher.hexdigest()}/{self.committed}"
            self.discard()
            raise InvalidArgument(f"uploaded data is {got}, not {self.digest}")
        os.fsync(self.file.fileno())
        # Committed while still open, so still locked: expiry cannot take the file between.
        self.cas.commit_file(self.tenant, self.digest, self.path)
        self.file.close()
        return self.committed

    def suspend(self) -> None:
        """Keep what was written so QueryWriteStatus can report it and the client resume."""
        try:
            self.file.flush()
        finally:
            self.file.close()

    def discard(self) -> None:
        """Drop what was written. Never raises: it cleans up after another error, which is the
        one the client must see (a file it cannot remove expires later: reapi.uploads)."""
        # Closing flushes, which on a full disk fails again; the file is closed all the same.
        with contextlib.suppress(OSError):
            self.file.close()
        try:
            self.path.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("could not remove the partial upload %s: %s", self.path, exc)
