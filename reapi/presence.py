"""What this process knows to be present in one store, and the touches that keep it true.

FindMissingBlobs of 10,000 digests cannot afford a storage round-trip per digest, so a
process remembers the blobs it has seen. A remembered blob is trusted for TRUST_SECONDS
only, and every blob is touched in storage when it is confirmed while its last touch is
older than TRUST_SECONDS. The eviction job never removes a blob touched within
EVICTION_GRACE_SECONDS (three hours, Bazel's default assumption for remote-cache lifetimes),
which is more than twice TRUST_SECONDS: so whatever this cache claims present is still in
storage, even while another process evicts.

A blob is remembered by its key and its size together (REAPI `Digest`: "the size is
considered to be an integral part of the digest and cannot be separated"): having seen
`H/100` says nothing of `H/95`, which names no blob this store holds. Storage is touched by
key alone.
"""

import logging
import threading
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from reapi.blobstore import BlobStore

log = logging.getLogger(__name__)

TRUST_SECONDS = 3600.0
EVICTION_GRACE_SECONDS = 3 * 3600.0
MAX_ENTRIES = 2_000_000
FLUSH_SECONDS = 5.0


class Presence:
    def __init__(self, store: "BlobStore") -> None:
        self.store = store
        # Storage key -> (the size it was seen with, when this process last confirmed it). A
        # key holds one blob, so one size: a digest naming it with another size is not it.
        self._seen: dict[str, tuple[int, float]] = {}
        self._pending: set[str] = set()
        self._lock = threading.Lock()
        self._flusher: threading.Thread | None = None

    def known(self, key: str, size: int, now: float) -> bool:
        seen = self._seen.get(key)
        return seen is not None and seen[0] == size and now - seen[1] < TRUST_SECONDS

    def unknown(self, keys: Sequence[str], sizes: Sequence[int], now: float) -> list[int]:
        """Indices of the blobs (storage key and size) this process cannot vouch for, one dict
        lookup each: FindMissingBlobs asks about 10,000 a call."""
        get = self._seen.get
        horizon = now - TRUST_SECONDS
        return [
            i
            for i, key in enumerate(keys)
            if (seen := get(key)) is None or seen[0] != sizes[i] or seen[1] <= horizon
        ]

    def confirm(self, key: str, size: int, touched_at: float | None, now: float) -> None:
        """Record that `key` exists with `size` bytes; `touched_at` is its last touch in
        storage, if known."""
        seen = self._seen
        if len(seen) >= MAX_ENTRIES:
            self._shrink()
        seen.pop(key, None)
        seen[key] = (size, now)
        if touched_at is None or now - touched_at > TRUST_SECONDS:
            self._schedule_touch([key])

    def confirm_many(self, blobs: Iterable[tuple[str, int]], now: float) -> None:
        """Record blobs (key, size) just written: their touch time is now, so no touch is
        needed."""
        seen = self._seen
        if len(seen) >= MAX_ENTRIES:
            self._shrink()
        for key, size in blobs:
            seen[key] = (size, now)

    def forget(self, key: str, size: int) -> None:
        """`key` was not found with `size` bytes: what was remembered of it with that size goes."""
        seen = self._seen.get(key)
        if seen is not None and seen[0] == size:
            self._seen.pop(key, None)

    def clear(self) -> None:
        self._seen.clear()

    def _shrink(self) -> None:
        # Drop the oldest quarter (dicts keep insertion order and confirm() re-inserts).
        with self._lock:
            for key in list(self._seen)[: MAX_ENTRIES // 4]:
                self._seen.pop(key, None)

    def _schedule_touch(self, keys: list[str]) -> None:
        with self._lock:
            self._pending.update(keys)
            if self._flusher is None:
                self._flusher = threading.Thread(target=self._flush_loop, daemon=True, name="touch")
                self._flusher.start()

    def flush(self) -> None:
        with self._lock:
            keys, self._pending = self._pending, set()
        if keys:
            try:
                self.store.touch(keys)
            except Exception:
                log.exception("touching %d blobs failed; will retry", len(keys))
                with self._lock:
                    self._pending.update(keys)

    def _flush_loop(self) -> None:
        while True:
            time.sleep(FLUSH_SECONDS)
            self.flush()
